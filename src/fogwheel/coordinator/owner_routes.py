"""Routes for owners, join tokens and revocation (docs/owners.md).

The operator (admin key) creates owners, gives them join tokens, and revokes tokens, customer
keys and device credentials. An owner (owner key) sees its own devices, tokens and earnings,
and may revoke its own tokens and devices; it never sees another owner's. Every answer names
ids, never secrets, except the one answer that creates a secret.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Path
from pydantic import Field

from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.identity import caller
from fogwheel.core import owners
from fogwheel.core.ledger import format_credits
from fogwheel.protocol import Model, Name, Problem
from fogwheel.store import Principal, Store

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {
        "model": Problem,
        "description": "No such owner, token, customer or device (or not yours)",
    },
    422: {"model": Problem, "description": "Body or parameters of the wrong shape"},
}

IdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="an id")]
TEN_YEARS_S = 10 * 365 * 86400.0


class OwnerIn(Model):
    name: Name


class OwnerCreated(Model):
    """A new owner and its owner key, shown once: only the key's hash is kept."""

    owner_id: str
    name: str
    owner_key: str


class OwnerOut(Model):
    id: str
    name: str
    created_at: float
    devices: int = Field(description="devices joined with its tokens (revoked ones included)")
    earned: int = Field(description="micro-credits its devices earned")


class OwnerList(Model):
    owners: list[OwnerOut]


class DeviceOut(Model):
    id: str
    name: str
    cores: int
    memory_mb: int
    token_id: str | None
    network: str | None = Field(description="the /24 it connects from; null when unknown")
    quota: int = Field(description="the in-flight quota it has earned (core/quota.py)")
    revoked: bool
    quarantined: bool
    joined_at: float
    last_seen: float
    agreed: int
    disputed: int


class DeviceList(Model):
    devices: list[DeviceOut]


class DeviceEarnings(Model):
    node_id: str
    name: str
    revoked: bool
    balance: int = Field(description="micro-credits in the device's node:<id> account")


class OwnerEarnings(Model):
    """What an owner's devices earned: each device's balance and the sum."""

    owner_id: str
    devices: list[DeviceEarnings]
    total: int
    total_text: str


class TokenIn(Model):
    owner_id: str = Field(
        default=owners.OPERATOR,
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="whose devices join with it (default: the operator's own)",
    )
    max_devices: int = Field(
        default=owners.TOKEN_MAX_DEVICES, ge=1, le=1_000_000, description="devices it admits"
    )
    rate_per_hour: float = Field(
        default=owners.TOKEN_RATE_PER_HOUR,
        gt=0,
        le=1_000_000,
        description="joins an hour it admits (a token bucket of a tenth of that)",
    )
    expires_in_s: float | None = Field(
        default=None, ge=1, le=TEN_YEARS_S, description="seconds until it expires; null: never"
    )


class TokenOut(Model):
    id: str
    owner_id: str
    origin: str = Field(description="flag: the coordinator's --join-token; created: made here")
    max_devices: int
    rate_per_hour: float
    joined: int
    expires_at: float | None
    revoked: bool
    created_at: float


class TokenCreated(TokenOut):
    """A new join token, shown once. `join_string` is what a device owner passes to
    `fogwheel node --token`: the token and the pin of this coordinator's key."""

    token: str
    join_string: str


class TokenList(Model):
    tokens: list[TokenOut]


class Revoked(Model):
    id: str
    revoked: bool


def build_owner_routes(
    app: FastAPI | APIRouter, store: Store, auth: Authenticator, public_key: str
) -> None:
    """Add /v1/owners, /v1/tokens and the revoke routes to `app`."""
    v1 = APIRouter(prefix="/v1", responses=ERRORS, tags=["owners"])
    admin, owner = caller(auth, "admin"), caller(auth, "owner")
    admin_or_owner = caller(auth, "admin", "owner")

    def scope(who: Principal) -> str | None:
        """The owner an owner key is confined to; None for the operator."""
        return who.id if who.kind == "owner" else None

    # -- owners -----------------------------------------------------------------------------

    @v1.post("/owners", status_code=201, dependencies=[admin])
    def create_owner(body: OwnerIn) -> OwnerCreated:
        """Operator: a new owner and its owner key (shown once)."""
        owner_id, key = store.create_owner(body.name, time.time())
        return OwnerCreated(owner_id=owner_id, name=body.name, owner_key=key)

    @v1.get("/owners", dependencies=[admin])
    def list_owners() -> OwnerList:
        """Operator: every owner, its device count and earnings."""
        return OwnerList(owners=[OwnerOut(**o) for o in store.list_owners()])

    @v1.get("/owners/me")
    def me(who: Principal = owner) -> OwnerOut:
        """Owner: this owner's record."""
        found = next((o for o in store.list_owners() if o["id"] == who.id), None)
        if found is None:
            raise HTTPException(404, f"no owner {who.id}")
        return OwnerOut(**found)

    @v1.get("/owners/me/devices")
    def my_devices(who: Principal = owner) -> DeviceList:
        """Owner: this owner's devices, revoked ones included."""
        return DeviceList(devices=[_device(d) for d in store.owner_devices(who.id)])

    @v1.get("/owners/me/earnings")
    def my_earnings(who: Principal = owner) -> OwnerEarnings:
        """Owner: what this owner's devices earned."""
        return _earnings(store.owner_earnings(who.id))

    @v1.get("/owners/{owner_id}/earnings", dependencies=[admin])
    def owner_earnings(owner_id: IdPath) -> OwnerEarnings:
        """Operator: what one owner's devices earned."""
        if store.get_owner(owner_id) is None:
            raise HTTPException(404, f"no owner {owner_id}: `fogwheel owners list` shows them")
        return _earnings(store.owner_earnings(owner_id))

    @v1.get("/owners/{owner_id}/devices", dependencies=[admin])
    def owner_devices(owner_id: IdPath) -> DeviceList:
        """Operator: one owner's devices."""
        if store.get_owner(owner_id) is None:
            raise HTTPException(404, f"no owner {owner_id}: `fogwheel owners list` shows them")
        return DeviceList(devices=[_device(d) for d in store.owner_devices(owner_id)])

    # -- join tokens ------------------------------------------------------------------------

    @v1.post("/tokens", status_code=201, dependencies=[admin])
    def create_token(body: TokenIn) -> TokenCreated:
        """Operator: a join token for an owner, with a device cap, a join rate and an expiry."""
        if store.get_owner(body.owner_id) is None:
            raise HTTPException(
                404, f"no owner {body.owner_id}: create it first with `fogwheel owners create`"
            )
        now = time.time()
        expires = now + body.expires_in_s if body.expires_in_s else None
        token_id, secret = store.create_token(
            body.owner_id,
            now,
            max_devices=body.max_devices,
            rate_per_hour=body.rate_per_hour,
            expires_at=expires,
        )
        made = store.get_token(token_id)
        assert made is not None
        return TokenCreated(**made, token=secret, join_string=_join_string(secret, public_key))

    @v1.get("/tokens")
    def list_tokens(who: Principal = admin_or_owner) -> TokenList:
        """Operator: every join token; owner: its own. Never their secrets."""
        return TokenList(tokens=[TokenOut(**t) for t in store.list_tokens(scope(who))])

    @v1.post("/tokens/{token_id}/revoke")
    def revoke_token(token_id: IdPath, who: Principal = admin_or_owner) -> TokenOut:
        """Operator, or the token's owner: no device joins with it any more (those that
        joined stay; revoke them with /v1/nodes/{id}/revoke)."""
        if not store.revoke_token(token_id, scope(who)):
            raise HTTPException(404, f"no join token {token_id}: `fogwheel tokens list` shows them")
        found = store.get_token(token_id)
        assert found is not None
        return TokenOut(**found)

    # -- revoking keys and devices ----------------------------------------------------------

    @v1.post("/customers/{customer_id}/revoke", dependencies=[admin])
    def revoke_customer(customer_id: IdPath) -> Revoked:
        """Operator: every API key of a customer stops working now (401)."""
        if not store.revoke_customer(customer_id):
            raise HTTPException(404, f"no customer {customer_id} with a key to revoke")
        auth.forget()
        return Revoked(id=customer_id, revoked=True)

    @v1.post("/nodes/{node_id}/revoke")
    def revoke_node(node_id: IdPath, who: Principal = admin_or_owner) -> Revoked:
        """Operator, or the device's owner: its credential stops working now (401), its
        leases end and their tasks go to other devices; what it earned stays its own."""
        if not store.revoke_node(node_id, scope(who)):
            raise HTTPException(404, f"no device {node_id}: `fogwheel nodes` lists them")
        auth.forget()
        return Revoked(id=node_id, revoked=True)

    app.include_router(v1)


def _device(d: dict[str, Any]) -> DeviceOut:
    return DeviceOut(**{**d, "revoked": bool(d["revoked"]), "quarantined": bool(d["quarantined"])})


def _earnings(e: dict[str, Any]) -> OwnerEarnings:
    return OwnerEarnings(
        owner_id=e["owner_id"],
        devices=[DeviceEarnings(**d) for d in e["devices"]],
        total=e["total"],
        total_text=format_credits(e["total"]),
    )


def _join_string(secret: str, public_key: str) -> str:
    """The token with the pin of the coordinator's key (fogwheel.signing.join_string)."""
    from fogwheel.signing import join_string

    return join_string(secret, public_key)
