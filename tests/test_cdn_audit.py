"""The coordinator's own checks (cdn/audit.py), without a fog: which serve addresses may be
probed, that the probe's proof is the chunk server's, and that accusations are bounded."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fogwheel.cdn.audit import ShareAuditor, address_refusal, probe_proof
from fogwheel.node.chunks import probe_answer


@pytest.mark.parametrize(
    ("url", "peer", "private", "refused"),
    [
        ("http://203.0.113.9:8471", "203.0.113.9", False, "reserved"),  # documentation range
        ("http://8.8.8.8:8471", "8.8.8.8", False, None),
        ("http://8.8.8.8:8471", "8.8.4.4", False, "not the address"),
        ("http://8.8.8.8:8471", "::ffff:8.8.8.8", False, None),  # a v4-mapped peer
        ("http://127.0.0.1:8471", "127.0.0.1", False, "loopback"),
        ("http://127.0.0.1:8471", "127.0.0.1", True, None),
        ("http://10.1.2.3:8471", "10.1.2.3", False, "private"),
        ("http://10.1.2.3:8471", "10.1.2.3", True, None),
        ("http://127.0.0.1:9999", "10.1.2.3", True, "not the address"),
        ("http://node.example.com:8471", "8.8.8.8", False, "give the IP address"),
        ("http://8.8.8.8", "8.8.8.8", False, "a port"),
        ("ftp://8.8.8.8:21", "8.8.8.8", False, "a scheme"),
        ("http://[::1]:8471", "::1", True, None),
        ("http://8.8.8.8:8471", "testclient", False, "cannot tell"),
        ("http://8.8.8.8:8471", None, False, "cannot tell"),
    ],
)
def test_which_serve_addresses_may_be_probed(
    url: str, peer: str | None, private: bool, refused: str | None
) -> None:
    why = address_refusal(url, peer, allow_private=private)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why


def test_the_probe_proof_is_what_the_chunk_server_answers() -> None:
    secret_hash = hashlib.sha256(b"fwn-credential").hexdigest()
    answer = probe_answer(("n-1", secret_hash), "/health?challenge=abc123")
    assert answer is not None
    body = json.loads(answer)
    assert body == {"node_id": "n-1", "proof": probe_proof(secret_hash, "n-1", "abc123")}
    assert body["proof"] != probe_proof(secret_hash, "n-2", "abc123")
    assert body["proof"] != probe_proof(hashlib.sha256(b"other").hexdigest(), "n-1", "abc123")
    assert probe_answer(None, "/health?challenge=abc") is None  # not joined yet
    assert probe_answer(("n-1", secret_hash), "/health") is None  # a plain health check
    assert probe_answer(("n-1", secret_hash), "/health?challenge=" + "a" * 65) is None


class NobodyHolds:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def cdn_audit_target(self, node_id: str, sha: str) -> dict[str, Any] | None:
        self.asked.append((node_id, sha))
        return None

    def cdn_share_failed(self, *a: Any) -> None:
        raise AssertionError("no evidence, no penalty")

    def cdn_clear_doubt(self, *a: Any) -> None:
        pass


def test_one_customer_cannot_make_unbounded_checks() -> None:
    store = NobodyHolds()
    auditor = ShareAuditor(store, Ed25519PrivateKey.generate(), per_minute=5, queue_max=8)
    auditor._start = lambda: None  # type: ignore[method-assign]  # hold the checks back
    many = [(f"n-{i}", f"{i:064x}") for i in range(1000)]
    assert auditor.accuse("greedy", many) == 5
    assert auditor.accuse("greedy", many) == 0  # still within the minute
    assert auditor.accuse("other", many[500:]) == 3  # the queue's bound, shared by everyone
    assert auditor.figures()["queued"] == 8
    ShareAuditor._start(auditor)  # now let them run
    auditor._wake.set()
    deadline = time.monotonic() + 30
    while auditor.figures()["unverifiable"] < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    f = auditor.figures()
    assert f["taken"] == 8 and f["unverifiable"] == 8 and f["bad"] == 0
    assert f["accused"] == 2500 and f["refused"] == 2500 - 8 - 5  # 5 asked twice: once
    assert len(store.asked) == 8
