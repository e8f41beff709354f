"""Receipts: what a fetching client signs for every share it received and verified, and the
only thing CDN bytes are paid against.

Each fetch plan carries a plan id and a receipt key. The key is an HMAC of the plan id, the
customer and the content under a secret only the coordinator holds (derived from its signing
key), so the coordinator needs no table of plans to check a receipt, and the nodes — which never
see a plan — cannot make one: a node's own count of bytes served is advisory. A receipt names
the plan, the node and the share; the coordinator pays it once, at most the share's size.

What this does not prove: that a customer who withholds receipts did not get the bytes. The
node's advisory count sits beside the receipted bytes in the stats (`claimed_by_node` against
`served_by_node`), so an operator sees a customer who keeps denying what nodes say they sent.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

RECEIPT_SECONDS = 3600.0  # how long after its plan was made a receipt is still paid
MAC_HEX = 32  # hex digits of a receipt's HMAC-SHA256 kept (128 bits)


def receipt_secret(signing_key: Ed25519PrivateKey) -> bytes:
    """The coordinator's receipt secret: stable across restarts, never sent anywhere."""
    raw = signing_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return hashlib.sha256(b"fogwheel cdn receipts\0" + raw).digest()


def new_plan(secret: bytes, customer_id: str, content_id: str, now: float) -> tuple[str, str]:
    """A fresh plan id (its expiry and a nonce) and its receipt key (hex), for one fetch plan."""
    plan_id = f"{int(now + RECEIPT_SECONDS)}.{secrets.token_hex(8)}"
    return plan_id, plan_key(secret, plan_id, customer_id, content_id).hex()


def plan_key(secret: bytes, plan_id: str, customer_id: str, content_id: str) -> bytes:
    msg = f"plan|{plan_id}|{customer_id}|{content_id}".encode()
    return hmac.new(secret, msg, hashlib.sha256).digest()


def sign(key_hex: str, plan_id: str, node_id: str, sha: str) -> str:
    """The client's receipt for share `sha` received from `node_id` under `plan_id`."""
    msg = f"receipt|{plan_id}|{node_id}|{sha}".encode()
    return hmac.new(bytes.fromhex(key_hex), msg, hashlib.sha256).hexdigest()[:MAC_HEX]


def plan_expired(plan_id: str, now: float) -> bool | None:
    """Whether the plan's receipts are past paying; None when `plan_id` is malformed."""
    head, _, nonce = plan_id.partition(".")
    if not (head.isdigit() and len(head) <= 12 and len(nonce) == 16):
        return None
    return int(head) < now


def valid(
    secret: bytes,
    plan_id: str,
    customer_id: str,
    content_id: str,
    node_id: str,
    sha: str,
    mac: str,
    now: float,
) -> bool:
    """Whether `mac` is the receipt this customer's plan makes for (node, share), still paid."""
    if plan_expired(plan_id, now) is not False:
        return False
    key = plan_key(secret, plan_id, customer_id, content_id).hex()
    return hmac.compare_digest(sign(key, plan_id, node_id, sha), mac)
