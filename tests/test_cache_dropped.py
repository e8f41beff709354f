"""A node that evicts a cached input tells the coordinator on its next sync
(protocol.SyncIn.dropped), so that placement stops preferring it for that input and stops
explaining a choice with "input already here" (real coordinator and node processes)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

MB = 1 << 20


def size_of(data: bytes) -> int:
    return len(data)


def holders(fog) -> set[str]:
    db = sqlite3.connect(Path(fog.dir) / "coordinator" / "fogwheel.db")
    try:
        return {sha for (sha,) in db.execute("SELECT sha FROM blob_holders")}
    finally:
        db.close()


def wait_for(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.mark.timeout(240)
def test_an_evicted_input_is_told_and_its_holder_forgotten(tmp_path: Path) -> None:
    from fogwheel.client import Client
    from fogwheel.localfog import LocalFog

    with LocalFog(1, workdir=tmp_path / "fog", node_args=["--cache-mb", "16"]) as fog:
        cache = Path(fog.dir) / "node-0" / "cache"
        with Client(fog.url, fog.api_key, replicas=1) as client:
            first = [os.urandom(6 * MB) for _ in range(2)]
            assert list(client.map(size_of, first)) == [6 * MB, 6 * MB]
            old = wait_for(
                "the node holds both inputs", lambda: len(holders(fog)) >= 2 and holders(fog)
            )
            cached = {p.name for p in cache.iterdir() if not p.name.startswith(".")}
            assert old <= cached
            # An hour later, as far as the cache can tell: nothing is in use any more.
            for p in cache.iterdir():
                os.utime(p, (time.time() - 3600, time.time() - 3600))
            # A new 6 MB input takes the cache over 16 MB: the oldest go, and the node says so.
            assert client.submit(size_of, os.urandom(6 * MB)).result(timeout=120) == 6 * MB
        gone = {sha for sha in old if not (cache / sha).exists()}
        assert gone, "the cache evicted nothing: the test did not exercise eviction"
        wait_for("the coordinator forgets the evicted inputs", lambda: not (gone & holders(fog)))
        assert old - gone <= holders(fog)  # what is still cached is still known
