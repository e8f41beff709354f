"""A node agent release: the signed statement "version V is the wheel with SHA-256 S, N bytes".

An operator publishes a wheel of fogwheel (`fogwheel agent publish`); the coordinator signs this
statement with the Ed25519 key that signs every task spec, and a node offered the release checks
the signature against the key it pinned at join, then the wheel's bytes against S, before it
unpacks a byte of it (node/selfupdate.py). A separate domain prefix keeps a release signature
from ever passing as a lease's or a token's. Imports neither pydantic nor fastapi: the node and
the coordinator share it.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_DOMAIN = b"fogwheel-agent-release-v1\n"
# A version as the node's package says it (PEP 440 and local labels), safe as a directory name.
VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,62}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def statement(version: str, sha: str, size: int) -> bytes:
    """The bytes signed for a release; ValueError when a field is not of its form."""
    if not VERSION.match(version):
        raise ValueError(f"{version!r} is not an agent version (letters, digits, . + _ -)")
    if not SHA256.match(sha):
        raise ValueError(f"{sha!r} is not a SHA-256 in hex")
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size {size!r} is not a positive byte count")
    return _DOMAIN + f"{version}\n{sha}\n{size}".encode()


def sign_release(key: Ed25519PrivateKey, version: str, sha: str, size: int) -> str:
    """The base64 signature of the release statement."""
    return base64.b64encode(key.sign(statement(version, sha, size))).decode()


def verify_release(pubkey_b64: str, version: str, sha: str, size: int, signature: str) -> bool:
    """True when `signature` is the pinned key's over exactly this release; never raises."""
    try:
        raw = base64.b64decode(signature, validate=True)
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(pubkey_b64, validate=True))
        key.verify(raw, statement(version, sha, size))
    except (InvalidSignature, ValueError, binascii.Error, TypeError):
        return False
    return True
