"""Schemathesis fuzzes a real coordinator from its own OpenAPI spec: no 5xx, no schema breach."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import pytest

from fogwheel.localfog import LocalFog


def schemathesis() -> list[str]:
    exe = shutil.which("schemathesis") or shutil.which("st")
    if exe is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'")
    return [exe]


def node_credential(fog: LocalFog) -> str:
    body = {"token": fog.join_token, "name": "fuzz", "cores": 1, "memory_mb": 512, "disk_mb": 1}
    return httpx.post(f"{fog.url}/v1/nodes/join", json=body, timeout=10).json()["credential"]


@pytest.mark.parametrize("who", ["customer", "admin", "node"])
def test_the_api_survives_fuzzing_from_its_own_spec(who: str, tmp_path) -> None:
    with LocalFog(0, workdir=tmp_path) as fog:
        key = {"customer": fog.api_key, "admin": fog.admin_key}.get(who) or node_credential(fog)
        res = subprocess.run(
            [
                *schemathesis(),
                "run",
                f"{fog.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {key}",
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--phases",
                "coverage,fuzzing",
                "--max-examples",
                "10",
                "--request-timeout",
                "20",
                "--generation-deterministic",
                # Generating examples is slow when other tests load the machine: that says
                # nothing of the API, and Hypothesis's health check failed the run for it.
                "--suppress-health-check",
                "too_slow",
                # The NAT rendezvous' long poll waits as long as it is asked (up to 25 s, by
                # its spec) when no call comes: fuzzing it is waiting, not testing.
                # test_the_rendezvous_long_poll_refuses_bad_input_and_answers_at_its_wait
                # sends it the same kinds of input below.
                *(["--exclude-path", "/v1/nodes/me/calls"] if who == "node" else []),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        log = (fog.dir / "coordinator.log").read_text()
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert "Traceback" not in log, log[-4000:]
    print(res.stdout[-800:], file=sys.stderr)


def test_the_rendezvous_long_poll_refuses_bad_input_and_answers_at_its_wait(tmp_path) -> None:
    """GET /v1/nodes/me/calls, as schemathesis would send it, without its waits."""
    import time

    with LocalFog(0, workdir=tmp_path) as fog:
        auth = {"authorization": f"Bearer {node_credential(fog)}"}
        url = f"{fog.url}/v1/nodes/me/calls"
        for wait in ("-1", "25.5", "1e309", "nan", "abc", ""):
            r = httpx.get(url, params={"wait": wait}, headers=auth, timeout=10)
            assert r.status_code == 422, (wait, r.status_code, r.text)
            assert "wait" in r.text
        assert httpx.get(url, params={"wait": "0"}, timeout=10).status_code == 401
        t0 = time.monotonic()
        r = httpx.get(url, params={"wait": "0.5"}, headers=auth, timeout=10)
        assert r.status_code == 200 and r.json() == {"calls": []}
        assert 0.4 <= time.monotonic() - t0 < 8
        log = (fog.dir / "coordinator.log").read_text()
    assert "Traceback" not in log, log[-4000:]
