"""Settings and secrets: customers, node credentials, join tokens, the operator key."""

from __future__ import annotations

import secrets

from sqlalchemy import func, select

from fogwheel.store.base import (
    Principal,
    StoreBase,
    hash_secret,
    new_secret,
)
from fogwheel.store.schema import (
    principals,
    settings,
)


class AccountsStore(StoreBase):
    # -- settings and secrets ---------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        with self.read() as c:
            return c.execute(select(settings.c.value).where(settings.c.key == key)).scalar()

    def set_setting(self, key: str, value: str) -> None:
        with self.tx() as c:
            c.execute(settings.delete().where(settings.c.key == key))
            c.execute(settings.insert().values(key=key, value=value))

    def add_secret(self, kind: str, id_: str, name: str, secret: str, now: float) -> None:
        """Register `secret` for a principal; registering the same secret again is a no-op."""
        h = hash_secret(secret)
        with self.tx() as c:
            row = c.execute(select(principals.c.kind).where(principals.c.secret_hash == h)).first()
            if row is None:
                c.execute(
                    principals.insert().values(
                        secret_hash=h, kind=kind, id=id_, name=name, created_at=now
                    )
                )

    def authenticate(self, secret: str) -> Principal | None:
        h = hash_secret(secret)
        with self.read() as c:
            row = c.execute(
                select(principals.c.kind, principals.c.id, principals.c.name).where(
                    principals.c.secret_hash == h
                )
            ).first()
        return None if row is None else Principal(row.kind, row.id, row.name)

    def has_secrets(self, kind: str) -> bool:
        with self.read() as c:
            q = select(func.count()).select_from(principals).where(principals.c.kind == kind)
            return bool(c.execute(q).scalar())

    def create_customer(self, name: str, now: float) -> tuple[str, str]:
        """A new customer and its API key (shown once; only the hash is kept)."""
        customer_id = "c-" + secrets.token_hex(4)
        key = new_secret("fwc")
        self.add_secret("customer", customer_id, name, key, now)
        return customer_id, key
