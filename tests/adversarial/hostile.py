"""A hostile node: speaks the real node protocol over HTTP, and lies wherever it can.

Honest agents (`fogwheel node`) run as processes through `LocalFog`; a `HostileNode` is the
attacker's client, written against `/v1/nodes/*` the way anyone could write one: it joins with
a token, leases signed work, and reports whatever bytes, names, numbers and claims it likes.
Every adversarial test drives one of these against a real coordinator and asserts that the
harm it tries does not happen.

Payload makers (`evil_pickle`, `exec_pickle`, `shared_reference_bomb`) build the bytes a
hostile node would send; `marker` files prove whether code ran.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

INLINE_MAX = 64 * 1024


def value_of(data: bytes) -> dict[str, Any]:
    """An inline protocol Value for `data` (small payloads only)."""
    return {
        "sha": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "data": base64.b64encode(data).decode(),
    }


class HostileNode:
    """One device under the attacker's control. Nothing here is checked on our side."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        name: str = "hostile",
        cores: int = 1,
        memory_mb: int = 1024,
        disk_mb: int = 1024,
        platform: str = "Linux-hostile",
        capabilities: Iterable[str] = (),
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.join_body = {
            "token": token,
            "name": name,
            "cores": cores,
            "memory_mb": memory_mb,
            "disk_mb": disk_mb,
            "platform": platform,
            "capabilities": sorted(capabilities),
        }
        self.node_id = ""
        self.credential = ""
        self.joined: dict[str, Any] = {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout)
        self.held: dict[int, dict[str, Any]] = {}  # task id -> lease

    # -- lifecycle --------------------------------------------------------------------------

    def join(self, **overrides: Any) -> httpx.Response:
        """POST /v1/nodes/join; on 201 the credential is kept for every later call."""
        r = self.http.post("/v1/nodes/join", json={**self.join_body, **overrides})
        if r.status_code == 201:
            self.joined = r.json()
            self.node_id = self.joined["node_id"]
            self.credential = self.joined["credential"]
            self.http.headers["authorization"] = f"Bearer {self.credential}"
        return r

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HostileNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the protocol -----------------------------------------------------------------------

    def sync(self, **body: Any) -> httpx.Response:
        """One raw POST /v1/nodes/me/sync with exactly `body` (results, want, served, bad…)."""
        r = self.http.post("/v1/nodes/me/sync", json=body)
        if r.status_code == 200:
            for t in r.json().get("tasks", []):
                self.held[t["task_id"]] = t
        return r

    def lease(self, want: int = 1, *, timeout: float = 30.0, at_least: int = 1) -> list[dict]:
        """Sync until the coordinator hands over at least `at_least` leases (or time runs out);
        keeps renewing what it already holds meanwhile."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < at_least and time.monotonic() < deadline:
            r = self.sync(want=want, slots_free=want, renew=list(self.held))
            if r.status_code != 200:
                raise AssertionError(f"sync refused: {r.status_code} {r.text[:300]}")
            got += r.json()["tasks"]
            if len(got) < at_least:
                time.sleep(0.1)
        return got

    def value(self, data: bytes) -> dict[str, Any]:
        """A Value for `data`: inline when small, else uploaded to /v1/blobs first."""
        if len(data) <= INLINE_MAX:
            return value_of(data)
        sha = hashlib.sha256(data).hexdigest()
        r = self.http.put(f"/v1/blobs/{sha}", content=data)
        r.raise_for_status()
        return {"sha": sha, "size": len(data)}

    def result(
        self,
        lease: Mapping[str, Any],
        *,
        ok: bool = True,
        value: bytes | None = None,
        outputs: Mapping[str, bytes] | None = None,
        error: Mapping[str, Any] | None = None,
        cpu_s: float = 0.01,
        wall_s: float = 0.01,
        **extra: Any,
    ) -> dict[str, Any]:
        """A TaskReport for `lease` with whatever the attacker claims."""
        rep: dict[str, Any] = {
            "task_id": lease["task_id"],
            "attempt": lease["attempt"],
            "ok": ok,
            "cpu_s": cpu_s,
            "wall_s": wall_s,
            **extra,
        }
        if value is not None:
            rep["value"] = self.value(value)
        if outputs:
            rep["outputs"] = {name: self.value(data) for name, data in outputs.items()}
        if error is not None:
            rep["error"] = dict(error)
        return rep

    def report(self, *reports: dict[str, Any], **body: Any) -> httpx.Response:
        """Send these reports in one sync; the reported tasks are no longer held."""
        r = self.sync(results=list(reports), **body)
        for rep in reports:
            self.held.pop(rep["task_id"], None)
        return r

    def get_blob(self, sha: str) -> httpx.Response:
        return self.http.get(f"/v1/blobs/{sha}")


# -- payloads ---------------------------------------------------------------------------------


class _Shell:
    """Unpickling this runs a shell command (os.system)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class _Exec:
    """Unpickling this runs Python source (builtins.exec)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.source,))


def evil_pickle(marker: os.PathLike[str] | str) -> bytes:
    """A pickle whose loading creates `marker` through a shell command."""
    return pickle.dumps(_Shell(f"touch {os.fspath(marker)}"))


def exec_pickle(marker: os.PathLike[str] | str) -> bytes:
    """A pickle whose loading creates `marker` through builtins.exec."""
    return pickle.dumps(_Exec(f"open({os.fspath(marker)!r}, 'w').close()"))


def evil_exception(marker: os.PathLike[str] | str) -> dict[str, Any]:
    """An ErrorInfo of kind 'exception' whose `exc` pickle creates `marker` when loaded."""
    return {
        "kind": "exception",
        "type": "ValueError",
        "message": "nothing to see here",
        "traceback": "Traceback (most recent call last):\nValueError: nothing to see here\n",
        "exc": value_of(evil_pickle(marker)),
    }


def shared_reference_bomb(depth: int = 40) -> bytes:
    """A tiny pickle (≈ 150 bytes at depth 40) of nested lists that share references: walked
    naively it is 2**depth leaves."""
    x: list[Any] = [1.0]
    for _ in range(depth):
        x = [x, x]
    return pickle.dumps(x)
