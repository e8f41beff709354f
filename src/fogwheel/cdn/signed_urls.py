"""Signed, expiring URLs of CDN content: a link that needs no header, for `<video src=…>`,
players, curl and wget.

`/v1/cdn/objects/ID/content?expires=UNIX&signature=HEX` where the signature is an HMAC-SHA256
(RFC 2104) of the content id, the expiry and the publishing customer under a secret derived
from the coordinator's signing key. That key is shared by every coordinator on one PostgreSQL
database (the `coordinator_keys` row), so a URL one coordinator signs, any other accepts; and
a rotated key ends every URL signed under the old one. The customer is not in the URL: the
coordinator reads the object's owner and checks the signature against it, so a URL grants
that one object and stops working if the object were ever owned by someone else. Compared in
constant time (`hmac.compare_digest`). Like S3's presigned URLs, a URL lives at most
`MAX_SECONDS` (7 days) and cannot be revoked alone, so keep them short; revoking its publisher
ends all of theirs (the content route checks the owner still holds a key).
"""

from __future__ import annotations

import hashlib
import hmac
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAX_SECONDS = 7 * 24 * 3600  # the longest a signed URL may live
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_EXPIRES = re.compile(r"^\d{1,12}$")


def url_secret(signing_key: Ed25519PrivateKey) -> bytes:
    """The secret signed URLs are made with: the signing key's, under a domain of its own (so
    it is no receipt secret and signs nothing else)."""
    raw = signing_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return hashlib.sha256(b"fogwheel cdn signed urls\0" + raw).digest()


def signature(secret: bytes, content_id: str, expires: int, customer_id: str) -> str:
    """HMAC-SHA256 of `url|content id|expiry|customer`, hex."""
    msg = f"url|{content_id}|{expires}|{customer_id}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def sign_query(secret: bytes, content_id: str, expires: int, customer_id: str) -> str:
    """The query string of the signed URL: `expires=…&signature=…`."""
    return f"expires={expires}&signature={signature(secret, content_id, expires, customer_id)}"


def refusal(
    secret: bytes,
    content_id: str,
    customer_id: str,
    expires: str | None,
    given: str | None,
    now: float,
) -> str | None:
    """None when the URL's `expires` and `signature` are this object's and still good, else the
    sentence a 403 says. The signature is checked before the expiry is believed."""
    if not expires or not given:
        return "a signed URL carries both expires= and signature=: ask for a new one"
    if not _EXPIRES.match(expires) or not _SIGNATURE.match(given):
        return "this signed URL is malformed (expires= a number, signature= 64 hex digits)"
    want = signature(secret, content_id, int(expires), customer_id)
    if not hmac.compare_digest(want, given):
        return (
            "this URL's signature does not match: it was altered, or signed for another "
            "object or by another coordinator key; ask its publisher for a new one "
            "(fogwheel cdn url ID)"
        )
    if int(expires) <= now:
        return (
            f"this signed URL expired {int(now) - int(expires)} s ago: ask its publisher for a "
            "new one (fogwheel cdn url ID --expires 1h)"
        )
    return None
