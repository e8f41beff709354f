"""Signed URLs of CDN content (cdn/signed_urls.py): good until they expire, for that object and
that customer only, under that coordinator key; every refusal a sentence."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fogwheel.cdn.receipts import receipt_secret
from fogwheel.cdn.signed_urls import refusal, sign_query, signature, url_secret

KEY = Ed25519PrivateKey.generate()
SECRET = url_secret(KEY)
CID, WHO, NOW = "c0123456789abcdef01234567", "cust-1", 1_800_000_000


def signed(expires: int = NOW + 60, cid: str = CID, who: str = WHO) -> tuple[str, str]:
    query = dict(p.split("=") for p in sign_query(SECRET, cid, expires, who).split("&"))
    return query["expires"], query["signature"]


def test_a_fresh_url_is_accepted() -> None:
    assert refusal(SECRET, CID, WHO, *signed(), now=NOW) is None


def test_the_secret_is_the_signing_keys_own_and_not_the_receipts() -> None:
    assert url_secret(KEY) == SECRET  # every coordinator sharing the key accepts the URL
    assert receipt_secret(KEY) != SECRET
    assert url_secret(Ed25519PrivateKey.generate()) != SECRET


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("expired", "expired"),
        ("later expiry", "does not match"),
        ("other object", "does not match"),
        ("other customer", "does not match"),
        ("other key", "does not match"),
        ("no signature", "both expires= and signature="),
        ("junk", "malformed"),
    ],
)
def test_each_bad_url_is_refused_with_a_sentence(case: str, words: str) -> None:
    expires, sig = signed()
    secret, cid, who, now = SECRET, CID, WHO, NOW
    if case == "expired":
        now = NOW + 61
    elif case == "later expiry":
        expires = str(int(expires) + 3600)
    elif case == "other object":
        cid = "c" + "f" * 24
    elif case == "other customer":
        who = "cust-2"
    elif case == "other key":
        secret = url_secret(Ed25519PrivateKey.generate())
    elif case == "no signature":
        sig = ""
    elif case == "junk":
        sig = "zz" * 32
    why = refusal(secret, cid, who, expires, sig, now)
    assert why is not None and words in why


def test_the_signature_covers_object_expiry_and_customer() -> None:
    variants = {
        signature(SECRET, CID, NOW, WHO),
        signature(SECRET, "c" + "0" * 24, NOW, WHO),
        signature(SECRET, CID, NOW + 1, WHO),
        signature(SECRET, CID, NOW, "x"),
    }
    assert len(variants) == 4
