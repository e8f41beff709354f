"""Customers as the attacker's tests need them: raw HTTP, one API key each.

The SDK would hide what these tests look at (who may read which blob, what each job was
charged), so jobs are submitted and watched over the wire, the way any client could.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from fogwheel.client import pickle_function
from tests.adversarial.hostile import value_of


class Customer:
    def __init__(self, url: str, api_key: str) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"), headers={"authorization": f"Bearer {api_key}"}, timeout=60
        )

    @classmethod
    def create(cls, url: str, admin_key: str, name: str) -> Customer:
        """A new customer, made by the operator (POST /v1/customers)."""
        r = httpx.post(
            f"{url}/v1/customers",
            params={"name": name},
            headers={"authorization": f"Bearer {admin_key}"},
            timeout=30,
        )
        r.raise_for_status()
        return cls(url, r.json()["api_key"])

    def close(self) -> None:
        self.http.close()

    def submit(
        self,
        fn: Callable[..., Any],
        args: Iterable[tuple[Any, ...]],
        *,
        replicas: int | str = 1,
        **job: Any,
    ) -> dict[str, Any]:
        """POST /v1/jobs: one python task per argument tuple; the answer (id, total, …)."""
        body = {
            "kind": "python",
            "fn": value_of(pickle_function(fn)),
            "tasks": [{"args": value_of(pickle.dumps((tuple(a), {})))} for a in args],
            "replicas": replicas,
            **job,
        }
        r = self.http.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def results(self, job_id: int, *, timeout: float = 180.0) -> list[dict[str, Any]]:
        """Every task's result, once all are finished (in task order)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.http.get(f"/v1/jobs/{job_id}/results", params={"after": 0})
            r.raise_for_status()
            body = r.json()
            if body["finished"] >= body["total"]:
                return sorted(body["results"], key=lambda x: x["index"])
            assert time.monotonic() < deadline, f"job {job_id} did not finish: {body}"
            time.sleep(0.2)

    def task_ids(self, job_id: int) -> list[int]:
        r = self.http.get(f"/v1/jobs/{job_id}/tasks", params={"limit": 1000})
        r.raise_for_status()
        return [t["id"] for t in sorted(r.json()["tasks"], key=lambda t: t["index"])]

    def charged(self, job_id: int) -> int:
        """Micro-credits this customer was charged for the job's tasks (from its history)."""
        ids = set(self.task_ids(job_id))
        total, before = 0, None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if before is not None:
                params["before"] = before
            r = self.http.get("/v1/usage", params=params)
            r.raise_for_status()
            body = r.json()
            total += sum(-e["amount"] for e in body["history"] if e["task_id"] in ids)
            before = body.get("next_before")
            if not before or not body["history"]:
                return total

    def blob(self, sha: str) -> httpx.Response:
        return self.http.get(f"/v1/blobs/{sha}")

    def put_blob(self, data: bytes) -> str:
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        r = self.http.put(f"/v1/blobs/{sha}", content=data)
        assert r.status_code == 201, r.text
        return sha


def books(url: str, admin_key: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/v1/ledger", headers={"authorization": f"Bearer {admin_key}"}, timeout=30)
    r.raise_for_status()
    return r.json()
