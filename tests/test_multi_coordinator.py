"""Several coordinators on one PostgreSQL database are one fog: kill one mid-job, lose nothing.

Issue 12's test: two coordinator processes share a fresh database; the agents are split
between them (each is given both URLs, its own first); a job of 60 short tasks is submitted
through the SDK given both URLs; one coordinator is SIGKILLed mid-job. The job completes and
every task's result arrives exactly once — once to the SDK, once in the results stream, one
`finish_seq` each in the database. Then the same behind nginx: `fogwheel up --coordinators 2`
serves one URL that outlives one of its coordinators.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from fogwheel import Client
from fogwheel.localfog import LocalFog
from tests.test_api_errors import scratch_database

pytestmark = pytest.mark.postgres

TASKS = 60


def _square_slowly(i: int) -> int:
    import time

    time.sleep(0.2)
    return i * i


def _every_result(url: str, api_key: str, job_id: int) -> list[int]:
    """The task indexes of a job's results, read from the start of its results stream."""
    seen: list[int] = []
    cursor = 0
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {api_key}"}) as http:
        while True:
            r = http.post("/v1/results/poll", json={"jobs": {str(job_id): cursor}, "wait": 0})
            assert r.status_code == 200, r.text
            (answer,) = r.json()["jobs"]
            if not answer["results"]:
                return seen
            seen += [res["index"] for res in answer["results"]]
            cursor = answer["cursor"]


def _tasks_in_database(db: str, job_id: int) -> list[tuple[int, str, int | None]]:
    engine = sa.create_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT idx, state, finish_seq FROM tasks "
                    "WHERE job_id = :job AND replica_of IS NULL ORDER BY idx"
                ),
                {"job": job_id},
            )
            return [(r.idx, r.state, r.finish_seq) for r in rows]
    finally:
        engine.dispose()


def test_a_coordinator_killed_mid_job_loses_no_result_and_repeats_none(tmp_path: Path) -> None:
    with (
        scratch_database() as db,
        LocalFog(nodes=4, coordinators=2, db=db, workdir=tmp_path, lease_seconds=5) as fog,
    ):
        lines: list[str] = []
        with Client(fog.urls, fog.api_key, replicas=1, on_retry=lines.append) as client:
            calls = [((i,), {}) for i in range(TASKS)]
            futures = client.submit_many(_square_slowly, calls, name="kill-one")
            deadline = time.monotonic() + 90
            while sum(f.done() for f in futures) < 10:
                assert time.monotonic() < deadline, "no results within 90 s"
                time.sleep(0.05)
            fog.kill_coordinator(0)  # the SDK's first URL, and half the agents'
            assert sum(f.done() for f in futures) < TASKS, "the job ended before the kill"
            values = [f.result(timeout=120) for f in futures]
            job = client.job(futures[0].job_id)
        job_id = futures[0].job_id
        assert values == [i * i for i in range(TASKS)]
        assert (job["state"], job["finished"], job["failed"]) == ("done", TASKS, 0)
        assert any(fog.urls[0] in line for line in lines)  # the SDK did move on
        # exactly once in the results stream the survivor serves …
        assert sorted(_every_result(fog.urls[1], fog.api_key, job_id)) == list(range(TASKS))
        # … and in the database: every task done once, each with a finish_seq of its own
        rows = _tasks_in_database(db, job_id)
        assert [idx for idx, _, _ in rows] == list(range(TASKS))
        assert {state for _, state, _ in rows} == {"done"}
        seqs = [seq for _, _, seq in rows]
        assert None not in seqs and len(set(seqs)) == TASKS
        log = (tmp_path / "coordinator-1.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]


# -- fogwheel up --coordinators 2, behind nginx ------------------------------------------------


def _nginx_or_skip() -> None:
    if not (shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK)):
        pytest.skip("nginx is not installed (apt-get install -y nginx; .ci/run installs it)")


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert got and got[0], f"`fogwheel up` printed nothing in {timeout:g} s"
    return got[0]


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_fogwheel_up_serves_one_url_that_outlives_a_coordinator(tmp_path: Path) -> None:
    _nginx_or_skip()
    with scratch_database() as db:
        up = ["up", "--coordinators", "2", "--nodes", "2", "--data-dir", str(tmp_path), "--json"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "fogwheel", *up],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "FOGWHEEL_DB": db},  # the URL off the command line
        )
        try:
            info = json.loads(_read_line(proc, timeout=120))
            assert len(info["coordinators"]) == 2 and info["url"] not in info["coordinators"]
            with Client(info["url"], info["api_key"], replicas=1) as client:
                assert list(client.map(abs, range(-10, 0), timeout=120)) == list(range(10, 0, -1))
                os.kill(info["coordinator_pids"][0], signal.SIGKILL)
                # the same URL, one coordinator fewer: nginx passes requests to the other
                assert list(client.map(abs, range(-10, 0), timeout=120)) == list(range(10, 0, -1))
            conf = (tmp_path / "nginx" / "nginx.conf").read_text()
            assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in conf
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        # SIGTERM stopped everything it started
        assert _gone(info["nginx_pid"]) and _gone(info["coordinator_pids"][1])


def test_fogwheel_up_says_what_several_coordinators_need(tmp_path: Path) -> None:
    def up(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "fogwheel", "up", "--nodes", "0", "--coordinators", "2"]
        env = {k: v for k, v in os.environ.items() if k != "FOGWHEEL_DB"}
        return subprocess.run(
            [*cmd, "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    no_db = up()
    assert no_db.returncode == 2 and "give a PostgreSQL URL" in no_db.stderr
    no_nginx = up("--db", "postgresql+psycopg://x@127.0.0.1/x", "--nginx", "/nonexistent")
    assert no_nginx.returncode == 2 and "apt-get install -y nginx" in no_nginx.stderr


def test_the_balancer_config_is_valid_nginx_and_passes_on_only_what_no_coordinator_took(
    tmp_path: Path,
) -> None:
    _nginx_or_skip()
    from fogwheel.cli_up import Balancer, find_nginx, nginx_conf
    from fogwheel.coordinator.server import CoordinatorConfig

    limits = CoordinatorConfig()
    b = Balancer(
        port=8470,
        upstreams=("127.0.0.1:1", "127.0.0.1:2"),
        prefix=tmp_path,
        max_body_mb=limits.max_body_mb,
        max_blob_mb=limits.max_blob_mb,
    )
    conf = nginx_conf(b)
    (tmp_path / "nginx.conf").write_text(conf)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "tmp" / sub).mkdir(parents=True)
    paths = ["-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    checked = subprocess.run(
        [find_nginx(), "-t", *paths, "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    directives = [line.strip() for line in conf.splitlines() if not line.strip().startswith("#")]
    # a POST already sent is never sent to another (nginx would with `non_idempotent`)
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in directives
    assert not any("non_idempotent" in line for line in directives)
    assert f"client_max_body_size {limits.max_body_mb}m;" in conf
    blobs = conf[conf.index("location /v1/blobs/") :]
    assert f"client_max_body_size {limits.max_blob_mb}m;" in blobs
    assert "proxy_request_buffering off;" in blobs
    assert "server 127.0.0.1:1 " in conf and "server 127.0.0.1:2 " in conf
