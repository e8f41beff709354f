"""Signed work: the coordinator signs every task spec it leases, and nodes run only what verifies.

Ed25519 (RFC 8032): 32-byte keys, 64-byte deterministic signatures, no nonce to get wrong. The
signature covers the canonical JSON of the lease's signed fields (`SIGNED_FIELDS`), so a spec
changed anywhere between the coordinator and the node (a proxy, a compromised link, a forged
coordinator) is refused by the node before it runs. Used by the coordinator and by the node
agent, so this module imports neither pydantic nor fastapi.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger("fogwheel.signing")

SIGNED_FIELDS = (
    "task_id",
    "job_id",
    "attempt",
    "kind",
    "fn",
    "args",
    "command",
    "inputs",
    "outputs",
    "limits",
    "lease_expires",
    "keep_in",
    "keep_out",
    "tenant",
    "env",
    "image",
)
# Signed when present, left out when absent or null: a lease without one signs as before.
OPTIONAL_SIGNED_FIELDS = ("app",)  # an app's version: its manifest and signature (docs/apps.md)


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The private key in `path` (PKCS#8 PEM), created with mode 0600 if there is none yet.

    Creation is race-free: the key is written to a private temporary file and hard-linked into
    place, so two coordinators starting at once on one data dir end up with the same key.
    """
    path = Path(path)
    if not path.exists():
        pem = key_to_pem(Ed25519PrivateKey.generate())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process won: use its key
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return read_key_file(path)


def read_key_file(path: Path) -> Ed25519PrivateKey:
    """The private key in `path` (PKCS#8 PEM); warns when other users may read the file."""
    path = Path(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "%s is readable by other users (mode %o): anyone who reads it can sign work for "
            "every node; chmod 600 it",
            path,
            mode,
        )
    return key_from_pem(path.read_bytes(), str(path))


def key_to_pem(key: Ed25519PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM: the coordinator's key file, or its row."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(pem: bytes, where: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in `pem`; ValueError naming `where` when it holds another."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where} does not hold a PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{where} does not hold an Ed25519 private key")
    return key


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key, base64: what nodes store and verify against."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def fingerprint(pubkey_b64: str) -> str:
    """A short name for a public key to compare by eye in logs: `SHA256:` and 16 hex digits."""
    try:
        raw = base64.b64decode(pubkey_b64, validate=True)
    except (ValueError, TypeError):
        return "(not a base64 key)"
    return "SHA256:" + hashlib.sha256(raw).hexdigest()[:16]


PIN_PREFIX = "sha256:"
_PIN = re.compile(r"^sha256:[0-9a-f]{64}$")
_JOIN_SEPARATOR = "#"


def key_pin(pubkey_b64: str) -> str:
    """The pin of a coordinator key: `sha256:` and the 64 hex digits of the raw key's SHA-256."""
    return PIN_PREFIX + hashlib.sha256(base64.b64decode(pubkey_b64, validate=True)).hexdigest()


def pin_matches(pubkey_b64: str, pin: str) -> bool:
    """True when `pubkey_b64` is the key `pin` names; never raises."""
    try:
        return key_pin(pubkey_b64) == pin
    except (ValueError, binascii.Error, TypeError):
        return False


def join_string(secret: str, pubkey_b64: str) -> str:
    """What an operator hands a device owner: `<join token>#sha256:<pin>`.

    The node sends only the token and checks the coordinator's answer against the pin before
    it trusts anything signed with that key (Kubernetes' bootstrap tokens with
    `--discovery-token-ca-cert-hash` do the same), so a proxy or a look-alike coordinator
    cannot hand it another key.
    """
    if _JOIN_SEPARATOR in secret:
        raise ValueError("a join token cannot contain '#'")
    return f"{secret}{_JOIN_SEPARATOR}{key_pin(pubkey_b64)}"


def parse_join_string(text: str) -> tuple[str, str | None]:
    """(token, pin) of a join string; (token, None) for a bare token (trust on first use).

    Raises ValueError with a sentence when the part after '#' is not a well-formed pin, so a
    mistyped pin is never silently dropped.
    """
    secret, sep, pin = text.strip().partition(_JOIN_SEPARATOR)
    if not sep:
        return secret, None
    if not secret:
        raise ValueError("the join string has no token before '#'")
    pin = pin.lower()
    if not _PIN.match(pin):
        raise ValueError(
            f"the join string's key pin {pin[:80]!r} is not 'sha256:' and 64 hex digits: "
            "copy the join string exactly as the coordinator printed it"
        )
    return secret, pin


def canonical(lease: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: the signed fields as compact JSON with sorted keys.

    A missing field counts as null, and fields outside `SIGNED_FIELDS` (the signature itself,
    the agent's own bookkeeping) are left out, so the form does not depend on key order.
    """
    signed = {k: lease.get(k) for k in SIGNED_FIELDS}
    signed.update({k: lease[k] for k in OPTIONAL_SIGNED_FIELDS if lease.get(k) is not None})
    return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()


def sign_lease(key: Ed25519PrivateKey, lease: Mapping[str, Any]) -> str:
    """The base64 Ed25519 signature of `canonical(lease)`."""
    return base64.b64encode(key.sign(canonical(lease))).decode()


def verify_lease(pubkey_b64: str, lease: Mapping[str, Any], signature: str | None) -> bool:
    """True when `signature` is the coordinator's signature of this very lease; never raises."""
    if not signature or not isinstance(signature, str):
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
        _public_key(pubkey_b64).verify(raw, canonical(lease))
    except (InvalidSignature, ValueError, binascii.Error, TypeError):
        return False
    return True


_APP_DOMAIN = b"fogwheel-app-version-v1\n"  # an app version's signature is no lease or token


def sign_app_version(key: Ed25519PrivateKey, manifest: bytes) -> str:
    """The base64 signature of an app version's canonical manifest (core/apps.py)."""
    return base64.b64encode(key.sign(_APP_DOMAIN + manifest)).decode()


def verify_app_version(pubkey_b64: str, manifest: bytes, signature: str | None) -> bool:
    """True when `signature` is the coordinator's of this very manifest; never raises."""
    if not signature or not isinstance(signature, str):
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
        _public_key(pubkey_b64).verify(raw, _APP_DOMAIN + manifest)
    except (InvalidSignature, ValueError, binascii.Error, TypeError):
        return False
    return True


TOKEN_MAX_CHARS = 2048
_TOKEN_DOMAIN = b"fogwheel-token-v1\n"  # signed before the payload: a lease is never a token
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def sign_token(key: Ed25519PrivateKey, payload: Mapping[str, Any]) -> str:
    """A short-lived access token: base64url(compact JSON of `payload`) "." base64url(signature).

    Payload in use: `{"c": content_id, "exp": unix seconds, "sub": who (optional)}`. The
    signature covers a domain prefix and the JSON, so no lease signature can pass for a token.
    """
    body = json.dumps(dict(payload), sort_keys=True, separators=(",", ":"), allow_nan=False)
    raw = body.encode()
    return f"{_b64url(raw)}.{_b64url(key.sign(_TOKEN_DOMAIN + raw))}"


def verify_token(pubkey_b64: str, token: str, now: float) -> dict[str, Any] | None:
    """The payload of a token signed by `pubkey_b64` that has not expired at `now`, else None.

    None for anything over `TOKEN_MAX_CHARS`, not two base64url parts, badly signed, not a JSON
    object, or without a finite number `exp` later than `now`; never raises.
    """
    if not isinstance(token, str) or len(token) > TOKEN_MAX_CHARS:
        return None
    body_b64, dot, sig_b64 = token.partition(".")
    if not dot or not _B64URL.match(body_b64) or not _B64URL.match(sig_b64):
        return None
    try:
        body = _unb64url(body_b64)
        _public_key(pubkey_b64).verify(_unb64url(sig_b64), _TOKEN_DOMAIN + body)
        payload = json.loads(body)
    except (InvalidSignature, ValueError, binascii.Error, TypeError):
        return None
    if not isinstance(payload, dict):
        return None
    exp = payload.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return payload if exp > now else None


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    """Strict: only the one spelling `_b64url` gives, so a token has exactly one form."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64url(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


@functools.lru_cache(maxsize=8)
def _public_key(pubkey_b64: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(pubkey_b64, validate=True))
