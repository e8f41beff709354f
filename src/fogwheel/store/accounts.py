"""Settings and secrets: customers, owners, join tokens, node credentials, the operator key.

Only a secret's SHA-256 is kept. Revoking deletes a key's principal rows (the coordinator's
authenticator cache forgets it at once in this process, within 10 s in others); a join token
is revoked by a flag on its row, so that its owner still sees it listed.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import Connection, func, select, text, update

from fogwheel.core import owners as owning
from fogwheel.core.ledger import node_account
from fogwheel.errors import NameTaken
from fogwheel.store.base import (
    Principal,
    StoreBase,
    hash_secret,
    new_secret,
)
from fogwheel.store.schema import (
    join_tokens,
    ledger,
    nodes,
    principals,
    settings,
    tasks,
)
from fogwheel.store.schema import (
    owners as owners_table,
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
        """A new customer and its API key (shown once; only the hash is kept). NameTaken when
        a customer with a live key has `name` already: two of one name cannot be told apart in
        the operator's books."""
        customer_id = "c-" + secrets.token_hex(4)
        key = new_secret("fwc")
        with self.tx() as c:
            if c.dialect.name == "postgresql":  # coordinator processes check one at a time
                c.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                    {"key": f"customer name {name}"},
                )
            taken = c.execute(
                select(principals.c.id).where(
                    principals.c.kind == "customer", principals.c.name == name
                )
            ).first()
            if taken is not None:
                raise NameTaken(
                    f"a customer named {name!r} exists already ({taken.id}): pick another name"
                )
            c.execute(
                principals.insert().values(
                    secret_hash=hash_secret(key),
                    kind="customer",
                    id=customer_id,
                    name=name,
                    created_at=now,
                )
            )
        return customer_id, key

    def revoke_customer(self, customer_id: str) -> bool:
        """Revoke every API key of a customer; False when it has none."""
        with self.tx() as c:
            res = c.execute(
                principals.delete().where(
                    principals.c.kind == "customer", principals.c.id == customer_id
                )
            )
            return bool(res.rowcount)

    # -- owners -----------------------------------------------------------------------------

    def ensure_operator(self, now: float) -> None:
        """The default owner, `operator`, whose devices are the operator's own."""
        with self.tx() as c:
            self._ensure_owner(c, owning.OPERATOR, "operator", now)

    def _ensure_owner(self, c: Connection, owner_id: str, name: str, now: float) -> None:
        if c.execute(select(owners_table.c.id).where(owners_table.c.id == owner_id)).first():
            return
        c.execute(owners_table.insert().values(id=owner_id, name=name, created_at=now))

    def create_owner(self, name: str, now: float) -> tuple[str, str]:
        """A new owner and its owner key (shown once; only the hash is kept)."""
        owner_id = "o-" + secrets.token_hex(4)
        key = new_secret("fwo")
        with self.tx() as c:
            self._ensure_owner(c, owner_id, name, now)
            c.execute(
                principals.insert().values(
                    secret_hash=hash_secret(key),
                    kind="owner",
                    id=owner_id,
                    name=name,
                    created_at=now,
                )
            )
        return owner_id, key

    def get_owner(self, owner_id: str) -> dict[str, Any] | None:
        with self.read() as c:
            row = c.execute(select(owners_table).where(owners_table.c.id == owner_id)).first()
        return None if row is None else dict(row._mapping)

    def list_owners(self) -> list[dict[str, Any]]:
        """Every owner with its device count and earnings (micro-credits)."""
        with self.read() as c:
            rows = c.execute(select(owners_table).order_by(owners_table.c.created_at)).all()
            devices: dict[str, int] = dict(
                c.execute(select(nodes.c.owner_id, func.count()).group_by(nodes.c.owner_id)).all()
            )
            earned = self._earnings_by_owner(c)
        return [
            {
                **r._mapping,
                "devices": int(devices.get(r.id, 0)),
                "earned": int(earned.get(r.id, 0)),
            }
            for r in rows
        ]

    def _earnings_by_owner(self, c: Connection) -> dict[str, int]:
        by_node = dict(
            c.execute(
                select(ledger.c.account, func.sum(ledger.c.amount))
                .where(ledger.c.account.like("node:%"))
                .group_by(ledger.c.account)
            ).all()
        )
        out: dict[str, int] = {}
        for node_id, owner_id in c.execute(select(nodes.c.id, nodes.c.owner_id)).all():
            amount = int(by_node.get(node_account(node_id), 0) or 0)
            key = owner_id or owning.OPERATOR
            out[key] = out.get(key, 0) + amount
        return out

    def owner_devices(self, owner_id: str) -> list[dict[str, Any]]:
        """The owner's devices, revoked ones included (their earnings stay theirs)."""
        with self.read() as c:
            rows = c.execute(
                select(
                    nodes.c.id,
                    nodes.c.name,
                    nodes.c.cores,
                    nodes.c.memory_mb,
                    nodes.c.token_id,
                    nodes.c.network,
                    nodes.c.quota,
                    nodes.c.revoked,
                    nodes.c.quarantined,
                    nodes.c.joined_at,
                    nodes.c.last_seen,
                    nodes.c.agreed,
                    nodes.c.disputed,
                )
                .where(self._owned_by(owner_id))
                .order_by(nodes.c.joined_at)
            ).all()
        return [dict(r._mapping) for r in rows]

    def owner_earnings(self, owner_id: str) -> dict[str, Any]:
        """What an owner's devices earned: each device's balance and their total."""
        devices = self.owner_devices(owner_id)
        accounts = [node_account(d["id"]) for d in devices]
        with self.read() as c:
            sums = (
                dict(
                    c.execute(
                        select(ledger.c.account, func.sum(ledger.c.amount))
                        .where(ledger.c.account.in_(accounts))
                        .group_by(ledger.c.account)
                    ).all()
                )
                if accounts
                else {}
            )
        rows = [
            {
                "node_id": d["id"],
                "name": d["name"],
                "revoked": bool(d["revoked"]),
                "balance": int(sums.get(node_account(d["id"]), 0) or 0),
            }
            for d in devices
        ]
        return {"owner_id": owner_id, "devices": rows, "total": sum(r["balance"] for r in rows)}

    def _owned_by(self, owner_id: str) -> Any:
        if owner_id == owning.OPERATOR:  # devices that joined before owners existed too
            return nodes.c.owner_id.is_(None) | (nodes.c.owner_id == owner_id)
        return nodes.c.owner_id == owner_id

    # -- join tokens ------------------------------------------------------------------------

    def create_token(
        self,
        owner_id: str,
        now: float,
        *,
        max_devices: int = owning.TOKEN_MAX_DEVICES,
        rate_per_hour: float = owning.TOKEN_RATE_PER_HOUR,
        expires_at: float | None = None,
        secret: str | None = None,
        origin: str = "created",
    ) -> tuple[str, str]:
        """A join token for `owner_id`: (token id, secret). The secret is shown once."""
        token_id = "t-" + secrets.token_hex(4)
        secret = secret or new_secret("fwj")
        with self.tx() as c:
            c.execute(
                join_tokens.insert().values(
                    id=token_id,
                    secret_hash=hash_secret(secret),
                    owner_id=owner_id,
                    origin=origin,
                    max_devices=max_devices,
                    rate_per_hour=rate_per_hour,
                    joined=0,
                    bucket=owning.burst(rate_per_hour),
                    bucket_at=now,
                    expires_at=expires_at,
                    revoked=False,
                    created_at=now,
                )
            )
        return token_id, secret

    def set_flag_token(self, secret: str, now: float) -> str:
        """Make `secret` the operator's default token (the coordinator's --join-token): the
        previous flag token, and any join secret of before owners existed, stop working.
        A flag token that was revoked stays revoked. Returns its id."""
        h = hash_secret(secret)
        with self.tx() as c:
            self._ensure_owner(c, owning.OPERATOR, "operator", now)
            c.execute(principals.delete().where(principals.c.kind == "join"))
            c.execute(
                update(join_tokens)
                .where(join_tokens.c.origin == "flag", join_tokens.c.secret_hash != h)
                .values(revoked=True)
            )
            row = c.execute(select(join_tokens.c.id).where(join_tokens.c.secret_hash == h)).first()
        if row is not None:
            return str(row.id)
        token_id, _ = self.create_token(
            owning.OPERATOR,
            now,
            max_devices=owning.FLAG_MAX_DEVICES,
            rate_per_hour=owning.FLAG_RATE_PER_HOUR,
            secret=secret,
            origin="flag",
        )
        return token_id

    def has_join_tokens(self) -> bool:
        """Whether any join token still admits devices (not revoked)."""
        with self.read() as c:
            q = select(func.count()).select_from(join_tokens).where(~join_tokens.c.revoked)
            return bool(c.execute(q).scalar())

    def list_tokens(self, owner_id: str | None = None) -> list[dict[str, Any]]:
        """Join tokens (of one owner, or all), newest first; never their secrets."""
        q = select(
            join_tokens.c.id,
            join_tokens.c.owner_id,
            join_tokens.c.origin,
            join_tokens.c.max_devices,
            join_tokens.c.rate_per_hour,
            join_tokens.c.joined,
            join_tokens.c.expires_at,
            join_tokens.c.revoked,
            join_tokens.c.created_at,
        ).order_by(join_tokens.c.created_at.desc(), join_tokens.c.id)
        if owner_id is not None:
            q = q.where(join_tokens.c.owner_id == owner_id)
        with self.read() as c:
            return [{**r._mapping, "revoked": bool(r.revoked)} for r in c.execute(q).all()]

    def get_token(self, token_id: str) -> dict[str, Any] | None:
        return next((t for t in self.list_tokens() if t["id"] == token_id), None)

    def revoke_token(self, token_id: str, owner_id: str | None = None) -> bool:
        """Revoke a join token (only `owner_id`'s, when given); its devices stay joined."""
        q = update(join_tokens).where(join_tokens.c.id == token_id)
        if owner_id is not None:
            q = q.where(join_tokens.c.owner_id == owner_id)
        with self.tx() as c:
            return bool(c.execute(q.values(revoked=True)).rowcount)

    def _admit_join(
        self, c: Connection, secret: str, now: float
    ) -> tuple[str, str] | owning.Refuse:
        """Take one join from the token `secret`: (token id, owner id), or why not."""
        q = select(join_tokens).where(join_tokens.c.secret_hash == hash_secret(secret))
        if not self.is_sqlite:
            q = q.with_for_update()
        row = c.execute(q).first()
        if row is None:
            return owning.Refuse(
                401, "unknown join token: ask the operator for the fog's join token"
            )
        tok = owning.Token(
            row.owner_id,
            row.max_devices,
            row.rate_per_hour,
            row.joined,
            row.bucket,
            row.bucket_at,
            row.expires_at,
            bool(row.revoked),
        )
        decision = owning.admit(tok, now)
        if isinstance(decision, owning.Refuse):
            return decision
        after = decision.token
        c.execute(
            update(join_tokens)
            .where(join_tokens.c.id == row.id)
            .values(joined=after.joined, bucket=after.bucket, bucket_at=after.bucket_at)
        )
        return str(row.id), str(row.owner_id)

    # -- revoking a device ------------------------------------------------------------------

    def revoke_node(self, node_id: str, owner_id: str | None = None) -> bool:
        """Revoke a device's credential (only `owner_id`'s device, when given): it gets 401
        from now on, its leases end now (the tasks go back to the queue), and what it
        earned stays in its account. False when there is no such device."""
        q = update(nodes).where(nodes.c.id == node_id)
        if owner_id is not None:
            q = q.where(self._owned_by(owner_id))
        with self.tx() as c:
            if not c.execute(q.values(revoked=True, state="revoked")).rowcount:
                return False
            c.execute(
                principals.delete().where(principals.c.kind == "node", principals.c.id == node_id)
            )
            c.execute(
                update(tasks)
                .where(tasks.c.node_id == node_id, tasks.c.state == "leased")
                .values(lease_expires=0.0)
            )
        self._fleet = (-1e18, [])
        return True
