"""The `fogwheel` command as a user runs it: real processes, real output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

FOGWHEEL = [sys.executable, "-m", "fogwheel"]


def run(*args: str, timeout: float = 180, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FOGWHEEL, *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.mark.parametrize(
    "command",
    ["coordinator", "node", "up", "demo", "run", "render", "jobs", "nodes", "usage", "earnings"],
)
def test_every_command_documents_itself(command: str) -> None:
    res = run(command, "--help")
    assert res.returncode == 0
    assert "Usage:" in res.stdout and "--help" in res.stdout


def test_version_prints_the_package_version() -> None:
    from fogwheel import __version__

    assert run("--version").stdout.strip() == f"fogwheel {__version__}"


def test_demo_finishes_with_a_node_killed_and_a_json_summary() -> None:
    res = run("demo", "--nodes", "3", "--tasks", "60", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["result_correct"] is True
    assert summary["tasks_lost"] == 0 and summary["tasks"] == 60
    assert summary["node_killed"]
    assert {"nodes", "seconds"} <= summary.keys()


def test_run_local_runs_a_program_and_brings_back_its_output(tmp_path) -> None:
    (tmp_path / "in.txt").write_text("b\na\n")
    res = run(
        "run",
        "--local",
        "1",
        "-i",
        "in.txt",
        "-o",
        "out.txt",
        "--out-dir",
        "got",
        "--",
        "sort",
        "-o",
        "out.txt",
        "in.txt",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "got" / "out.txt").read_text() == "a\nb\n"


def test_run_without_a_coordinator_says_how_to_name_one(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOGWHEEL_")}
    res = run("run", "--", "true", env=env, cwd=tmp_path)
    assert res.returncode != 0
    assert "FOGWHEEL_COORDINATOR" in res.stderr and "--local" in res.stderr


def test_up_prints_one_json_line_when_ready_and_serves_customers(tmp_path) -> None:
    proc = subprocess.Popen(
        [*FOGWHEEL, "up", "--nodes", "2", "--json"], stdout=subprocess.PIPE, text=True
    )
    try:
        info = json.loads(proc.stdout.readline())
        env = {
            **os.environ,
            "FOGWHEEL_COORDINATOR": info["url"],
            "FOGWHEEL_API_KEY": info["api_key"],
        }
        res = run("run", "--", "echo", "hello fog", env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert res.stdout == "hello fog\n"
        nodes = run("nodes", env=env)
        assert "local-0" in nodes.stdout and "up" in nodes.stdout
        jobs = run("jobs", env=env)
        assert "echo" in jobs.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
