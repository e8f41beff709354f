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
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        log = (fog.dir / "coordinator.log").read_text()
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert "Traceback" not in log, log[-4000:]
    print(res.stdout[-800:], file=sys.stderr)
