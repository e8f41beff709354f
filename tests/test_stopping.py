"""A job can be stopped: Ctrl-C on the CLI and in the SDK cancels it on the fog (a second
Ctrl-C leaves it running), `fogwheel cancel`, `attach` and `logs`, `TaskFuture.cancel()`; and
once a task is cancelled nobody is charged or paid for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import httpx
import pytest

from fogwheel import Client
from fogwheel.core.ledger import customer_account, node_account
from fogwheel.errors import CommandFailed, TaskCancelled
from fogwheel.localfog import LocalFog
from fogwheel.protocol import JobIn, Limits, SyncIn, TaskIn, TaskReport
from fogwheel.store import Store
from tests.test_store import FN, job, join, ok, value

T0 = 1_000_000.0

# -- the store: cancelling one task, and what a late result earns ---------------------------


def test_cancelling_one_task_cancels_it_and_its_replicas_and_nothing_else(store: Store) -> None:
    a, b = join(store, "a"), join(store, "b")
    job_id = store.create_job("c1", job(3, replicas=2), T0)
    store.sync(a, SyncIn(want=3, slots_free=3), T0)
    store.sync(b, SyncIn(want=3, slots_free=3), T0)
    out = store.cancel_task("c1", job_id, 1, T0 + 1)
    assert out == {"job_id": job_id, "index": 1, "state": "cancelled", "cancelled": True}
    tasks = {t["index"]: t for t in store.list_tasks("c1", job_id, None, 10, 0)}
    assert [tasks[i]["state"] for i in range(3)] == ["leased", "cancelled", "leased"]
    # both copies of task 1 ended as cancelled; nobody will lease it again
    assert {h["outcome"] for h in tasks[1]["history"]} == {"cancelled"}
    assert store.get_job("c1", job_id)["state"] == "running"
    assert store.cancel_task("c1", job_id, 1, T0 + 2)["cancelled"] is False  # twice: no-op
    assert store.cancel_task("c1", job_id, 3, T0 + 2) is None  # no such task
    assert store.cancel_task("bob", job_id, 0, T0 + 2) is None  # not bob's job
    assert store.task_logs("bob", job_id, 0) is None


def test_a_finished_task_keeps_its_result_when_cancelled(store: Store) -> None:
    node = join(store)
    job_id = store.create_job("c1", job(1), T0)
    [lease] = store.sync(node, SyncIn(want=1, slots_free=1), T0).tasks
    store.sync(node, SyncIn(results=[ok(lease["task_id"], 1, b"R")]), T0 + 1)
    assert store.cancel_task("c1", job_id, 0, T0 + 2) == {
        "job_id": job_id,
        "index": 0,
        "state": "done",
        "cancelled": False,
    }


def busy(task_id: int) -> TaskReport:
    """A first attempt's result that took half a CPU-second: enough to be charged and paid."""
    return ok(task_id, 1).model_copy(update={"cpu_s": 0.5, "wall_s": 0.5})


def test_a_cancelled_tasks_late_result_is_charged_to_nobody_and_paid_to_nobody(
    store: Store,
) -> None:
    node = join(store)
    job_id = store.create_job("c1", job(3), T0)
    leases = store.sync(node, SyncIn(want=3, slots_free=3), T0).tasks
    first, second, third = sorted(leases, key=lambda t: t["task_id"])
    store.sync(node, SyncIn(results=[busy(first["task_id"])]), T0 + 1)  # finished before
    charged_before = store.history(customer_account("c1"), 100, None)
    assert {e["task_id"] for e in charged_before} == {first["task_id"]}
    store.cancel_task("c1", job_id, 1, T0 + 2)
    store.cancel_job("c1", job_id, T0 + 3)
    # The node had not heard yet: it reports both results, then learns it lost the leases.
    late = [busy(second["task_id"]), busy(third["task_id"])]
    store.sync(node, SyncIn(results=late), T0 + 4)
    out = store.sync(node, SyncIn(renew=[second["task_id"]]), T0 + 5)
    assert out.lost == [second["task_id"]]  # the agent stops a task it is told it lost
    assert store.history(customer_account("c1"), 100, None) == charged_before
    paid = {e["task_id"] for e in store.history(node_account(node), 100, None)}
    assert paid == {first["task_id"]}
    states = {r["index"]: r["state"] for r in store.results_since("c1", job_id, 0)["results"]}
    assert sorted(states.values()) == ["cancelled", "cancelled", "done"]
    assert store.check()[0] == 0  # the books balance


def test_a_result_waiting_for_its_check_is_not_charged_or_paid_after_a_cancel(
    store: Store,
) -> None:
    a, b = join(store, "a"), join(store, "b")
    job_id = store.create_job("c1", job(1, replicas=2), T0)
    [mine] = store.sync(a, SyncIn(want=1, slots_free=1), T0).tasks
    [theirs] = store.sync(b, SyncIn(want=1, slots_free=1), T0).tasks
    store.sync(a, SyncIn(results=[busy(mine["task_id"])]), T0 + 1)
    assert store.list_tasks("c1", job_id, None, 10, 0)[0]["state"] == "verifying"
    store.cancel_job("c1", job_id, T0 + 2)
    store.sync(b, SyncIn(results=[busy(theirs["task_id"])]), T0 + 3)  # the check, too late
    assert store.list_tasks("c1", job_id, None, 10, 0)[0]["state"] == "cancelled"
    for account in (customer_account("c1"), node_account(a), node_account(b)):
        assert store.history(account, 100, None) == []


def test_task_logs_show_the_stored_result_and_every_attempt(store: Store) -> None:
    node = join(store)
    command = JobIn(
        name="c",
        kind="command",
        tasks=[TaskIn(command=["true"])],
        limits=Limits(),
        replicas=1,
    )
    job_id = store.create_job("c1", command, T0)
    before = store.task_logs("c1", job_id, 0)
    assert before["state"] == "pending" and before["history"] == [] and before["result"] is None
    [lease] = store.sync(node, SyncIn(want=1, slots_free=1), T0).tasks
    rec = value(b'{"returncode": 0, "stdout": "hi\\n", "stderr": ""}')
    report = ok(lease["task_id"], 1).model_copy(update={"value": rec})
    store.sync(node, SyncIn(results=[report]), T0 + 1)
    logs = store.task_logs("c1", job_id, 0)
    assert logs["kind"] == "command" and logs["state"] == "done"
    assert logs["result"]["value"]["sha"] == rec.sha
    assert [(h["n"], h["node_id"], h["outcome"]) for h in logs["history"]] == [
        (1, node, "accepted")
    ]
    assert FN  # the python job fixture's function is what the other tests submit


# -- real processes -------------------------------------------------------------------------

SLEEP_S = 347  # a sleep nobody else runs: its process is findable with ps


def napper(i: int) -> int:
    """Tasks 0 and 1 finish at once; the others sleep until they are stopped."""
    if i >= 2:
        time.sleep(SLEEP_S)
    return i * 10


def boom(x: int) -> int:
    raise ValueError(f"no good: {x}")


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    with LocalFog(0, cores_per_node=3, workdir=tmp_path_factory.mktemp("fog")) as f:
        f.add_node()
        f.add_node()
        f.wait_for_nodes(2)
        yield f


def env_of(fog: LocalFog) -> dict[str, str]:
    return {
        **os.environ,
        "FOGWHEEL_COORDINATOR": fog.url,
        "FOGWHEEL_API_KEY": fog.api_key,
        "FOGWHEEL_REPLICAS": "1",
        "COLUMNS": "200",
    }


def api(fog: LocalFog, method: str, path: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key or fog.api_key}"}
    return httpx.request(method, f"{fog.url}{path}", headers=headers, timeout=30)


def wait_for(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def newest_job(fog: LocalFog, after: int) -> dict[str, Any] | None:
    jobs = api(fog, "GET", "/v1/jobs?limit=1").json()["jobs"]
    return jobs[0] if jobs and jobs[0]["id"] > after else None


def last_job_id(fog: LocalFog) -> int:
    jobs = api(fog, "GET", "/v1/jobs?limit=1").json()["jobs"]
    return jobs[0]["id"] if jobs else 0


def tasks_of(fog: LocalFog, job_id: int) -> list[dict[str, Any]]:
    return api(fog, "GET", f"/v1/jobs/{job_id}/tasks?limit=1000").json()["tasks"]


def leased(fog: LocalFog, job_id: int, n: int = 1) -> bool:
    return sum(t["state"] == "leased" for t in tasks_of(fog, job_id)) >= n


def sleepers(seconds: int) -> int:
    """How many processes on this machine run `sleep <seconds>` (a command task's)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return sum(line.split() == ["sleep", str(seconds)] for line in ps.stdout.splitlines())


def charged_tasks(fog: LocalFog) -> set[int]:
    page = api(fog, "GET", "/v1/usage?limit=1000").json()
    return {e["task_id"] for e in page["history"] if e["task_id"] is not None}


def read_until(stream: Any, needle: str, seen: list[str]) -> None:
    """Read lines from a child's stream until one contains `needle` (all kept in `seen`)."""
    while True:
        line = stream.readline()
        if not line:
            raise AssertionError(f"{needle!r} never came; the child said:\n{''.join(seen)}")
        seen.append(line)
        if needle in line:
            return


def fogwheel(*args: str, fog: LocalFog) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fogwheel", *args],
        env=env_of(fog),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_on_fogwheel_run_cancels_the_job_and_the_node_stops_it(fog: LocalFog) -> None:
    before = last_job_id(fog)
    proc = fogwheel("run", "--", "sleep", str(SLEEP_S), fog=fog)
    job = wait_for("the job", lambda: newest_job(fog, before))
    wait_for("the task to run", lambda: leased(fog, job["id"]))
    wait_for("the sleep to start", lambda: sleepers(SLEEP_S) >= 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"cancelling job {job['id']} on the fog" in stderr
    assert "press Ctrl-C again to leave it running" in stderr
    assert f"cancelled job {job['id']} on the fog" in stderr
    assert "Traceback" not in stderr
    assert api(fog, "GET", f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"
    [task] = tasks_of(fog, job["id"])
    assert task["state"] == "cancelled"
    assert task["history"][-1]["outcome"] == "cancelled"
    # the node learns at its next sync and kills the program; nobody is charged for it
    wait_for("the node to stop the task", lambda: sleepers(SLEEP_S) == 0, timeout=60)
    assert task["id"] not in charged_tasks(fog)


def test_a_second_ctrl_c_leaves_the_job_running_and_fogwheel_cancel_stops_it(
    fog: LocalFog,
) -> None:
    before = last_job_id(fog)
    proc = fogwheel("run", "--", "sleep", str(SLEEP_S + 1), fog=fog)
    job = wait_for("the job", lambda: newest_job(fog, before))
    wait_for("the task to run", lambda: leased(fog, job["id"]))
    proc.send_signal(signal.SIGINT)
    seen: list[str] = []
    assert proc.stderr is not None
    read_until(proc.stderr, "press Ctrl-C again", seen)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    assert f"job {job['id']} left running on the fog" in stderr
    assert f"fogwheel attach {job['id']}" in stderr and f"fogwheel cancel {job['id']}" in stderr
    time.sleep(1.0)
    assert api(fog, "GET", f"/v1/jobs/{job['id']}").json()["state"] == "running"
    assert leased(fog, job["id"])

    done = subprocess.run(
        [sys.executable, "-m", "fogwheel", "cancel", str(job["id"]), "999999"],
        env=env_of(fog),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # job 999999 does not exist
    assert f"cancelled job {job['id']} (sleep): 0 of 1 tasks had finished" in done.stderr
    assert "no job 999999" in done.stderr
    assert api(fog, "GET", f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"
    wait_for("the node to stop the task", lambda: sleepers(SLEEP_S + 1) == 0, timeout=60)
    again = subprocess.run(
        [sys.executable, "-m", "fogwheel", "cancel", str(job["id"])],
        env=env_of(fog),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "already cancelled" in again.stderr


def test_ctrl_c_in_an_sdk_map_cancels_the_rest_and_charges_stop(
    fog: LocalFog, tmp_path: Path
) -> None:
    script = tmp_path / "mapper.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
            from fogwheel import Client
            from tests.test_stopping import napper

            with Client({fog.url!r}, {fog.api_key!r}, replicas=1) as fog:
                for value in fog.map(napper, range(6)):
                    print("got", value, flush=True)
            """
        )
    )
    before = last_job_id(fog)
    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert child.stdout is not None
    seen: list[str] = []
    read_until(child.stdout, "got 10", seen)  # tasks 0 and 1 are done; 2… sleep
    job = wait_for("the job", lambda: newest_job(fog, before))
    wait_for("sleeping tasks to run", lambda: leased(fog, job["id"], 2))
    finished = {t["id"] for t in tasks_of(fog, job["id"]) if t["state"] == "done"}
    wait_for("tasks 0 and 1 to be charged", lambda: finished <= charged_tasks(fog))
    assert {t["index"] for t in tasks_of(fog, job["id"]) if t["id"] in finished} == {0, 1}
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode != 0 and "KeyboardInterrupt" in stderr
    assert f"cancelled job {job['id']} on the fog" in stderr
    assert api(fog, "GET", f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"
    states = {t["index"]: t["state"] for t in tasks_of(fog, job["id"])}
    assert states == {
        0: "done",
        1: "done",
        2: "cancelled",
        3: "cancelled",
        4: "cancelled",
        5: "cancelled",
    }
    # Once the nodes have heard (their renewals are refused) the sleepers are gone, and the
    # only charges of this job are the two tasks that finished before the Ctrl-C.
    job_tasks = {t["id"] for t in tasks_of(fog, job["id"])}
    time.sleep(2 * fog.lease_seconds)
    assert charged_tasks(fog) & job_tasks == finished


def test_future_cancel_cancels_that_task_on_the_fog_and_no_other(fog: LocalFog) -> None:
    with Client(fog.url, fog.api_key, replicas=1) as client:
        futures = client.submit_many(napper, [((i,), {}) for i in range(4)], name="napper")
        job_id = futures[0].job_id
        assert futures[0].result(timeout=120) == 0
        assert futures[0].cancel() is False  # finished: its result stands
        wait_for("task 2 to run", lambda: tasks_of(fog, job_id)[2]["state"] == "leased")
        assert futures[2].cancel() is True
        assert futures[2].cancelled()
        assert futures[2] in wait(futures, timeout=5).done  # wait() and as_completed() see it
        states = [t["state"] for t in tasks_of(fog, job_id)]
        assert states[2] == "cancelled" and states[3] in ("pending", "leased")
        assert api(fog, "GET", f"/v1/jobs/{job_id}").json()["state"] == "running"
        assert futures[1].result(timeout=120) == 10
        # another client cancelling the job: this one's futures raise TaskCancelled
        other = api(fog, "POST", f"/v1/jobs/{job_id}/cancel")
        assert other.status_code == 200
        with pytest.raises(TaskCancelled, match=f"task 3 of job {job_id} was cancelled"):
            futures[3].result(timeout=60)


def test_leaving_a_with_client_block_on_an_exception_cancels_its_pending_jobs(
    fog: LocalFog,
) -> None:
    with (
        pytest.raises(RuntimeError, match="give up"),
        Client(fog.url, fog.api_key, replicas=1) as c,
    ):
        fut = c.submit(napper, 5)
        raise RuntimeError("give up")
    assert api(fog, "GET", f"/v1/jobs/{fut.job_id}").json()["state"] == "cancelled"
    with Client(fog.url, fog.api_key, replicas=1, cancel_on_exit=False) as client:
        kept = client.submit(napper, 6)
    assert api(fog, "GET", f"/v1/jobs/{kept.job_id}").json()["state"] == "running"
    api(fog, "POST", f"/v1/jobs/{kept.job_id}/cancel")


def test_attach_shows_results_as_run_would_and_ctrl_c_cancels(
    fog: LocalFog, tmp_path: Path
) -> None:
    with Client(fog.url, fog.api_key, replicas=1) as client:
        futures = client.run_many(
            [
                ["sh", "-c", f"echo hello {i}; echo note {i} >&2; echo {i} > out.txt"]
                for i in range(2)
            ],
            outputs=["out.txt"],
            name="greet",
        )
        job_id = futures[0].job_id
    got = subprocess.run(
        [sys.executable, "-m", "fogwheel", "attach", str(job_id), "--out-dir", str(tmp_path)],
        env=env_of(fog),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == ["hello 0", "hello 1"]
    assert "note 0" in got.stderr and "note 1" in got.stderr
    assert (tmp_path / "0" / "out.txt").read_text() == "0\n"
    assert (tmp_path / "1" / "out.txt").read_text() == "1\n"

    with Client(fog.url, fog.api_key, replicas=1) as client:
        values = client.submit_many(napper, [((0,), {}), ((1,), {})], name="values")
        assert [f.result(timeout=120) for f in values] == [0, 10]
    py = subprocess.run(
        [sys.executable, "-m", "fogwheel", "attach", str(values[0].job_id)],
        env=env_of(fog),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert py.returncode == 0, py.stderr
    assert py.stdout.splitlines() == ["0", "10"] and "is done" in py.stderr

    with Client(fog.url, fog.api_key, replicas=1) as client:
        [sleeper] = client.run_many([["sleep", str(SLEEP_S + 2)]], name="sleeper")
    proc = fogwheel("attach", str(sleeper.job_id), fog=fog)
    assert proc.stderr is not None
    seen: list[str] = []
    read_until(proc.stderr, f"watching job {sleeper.job_id} (sleeper)", seen)
    wait_for("the task to run", lambda: leased(fog, sleeper.job_id))
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    assert f"cancelled job {sleeper.job_id} on the fog" in stderr
    assert api(fog, "GET", f"/v1/jobs/{sleeper.job_id}").json()["state"] == "cancelled"


def test_logs_show_output_tails_tracebacks_and_attempts_to_their_owner_only(
    fog: LocalFog,
) -> None:
    with Client(fog.url, fog.api_key, replicas=1) as client:
        [cmd] = client.run_many(
            [["sh", "-c", "echo out-line; echo err-line >&2; exit 3"]], name="failing"
        )
        with pytest.raises(CommandFailed):
            cmd.result(timeout=120)
        bad = client.submit(boom, 7)
        with pytest.raises(ValueError):
            bad.result(timeout=120)

    logs = subprocess.run(
        [sys.executable, "-m", "fogwheel", "logs", str(cmd.job_id), "0"],
        env=env_of(fog),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "out-line\n"
    assert "err-line" in logs.stderr
    assert f"task 0 of job {cmd.job_id}: failed, exit status 3" in logs.stderr
    assert "attempt 1 on " in logs.stderr

    py = subprocess.run(
        [sys.executable, "-m", "fogwheel", "logs", str(bad.job_id)],
        env=env_of(fog),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert py.returncode == 0, py.stderr
    assert "ValueError: no good: 7" in py.stderr and "boom" in py.stderr  # the traceback

    # The API: the same, documented, and another customer sees nothing of it.
    body = api(fog, "GET", f"/v1/jobs/{cmd.job_id}/tasks/0/logs").json()
    assert body["returncode"] == 3 and body["stdout"] == "out-line\n"
    assert body["attempts"][0]["outcome"] is not None
    assert api(fog, "GET", f"/v1/jobs/{cmd.job_id}/tasks/1/logs").status_code == 404
    bob = api(fog, "POST", "/v1/customers?name=bob-stopping", key=fog.admin_key).json()["api_key"]
    for method, path in [
        ("GET", f"/v1/jobs/{cmd.job_id}/tasks/0/logs"),
        ("POST", f"/v1/jobs/{cmd.job_id}/tasks/0/cancel"),
        ("POST", f"/v1/jobs/{cmd.job_id}/cancel"),
    ]:
        r = api(fog, method, path, key=bob)
        assert r.status_code == 404 and "no " in r.json()["error"]
    assert api(fog, "GET", f"/v1/jobs/{cmd.job_id}/tasks/0/logs", key="fwc_nope").status_code == 401
    # --follow waits for a task still running, then shows it
    with Client(fog.url, fog.api_key, replicas=1) as client:
        [slow] = client.run_many([["sh", "-c", "sleep 3; echo late"]], name="slow")
    followed = subprocess.run(
        [sys.executable, "-m", "fogwheel", "logs", str(slow.job_id), "--follow"],
        env=env_of(fog),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "late\n" and "done, exit status 0" in followed.stderr

    paths = httpx.get(f"{fog.url}/openapi.json", timeout=30).json()["paths"]
    assert "/v1/jobs/{job_id}/tasks/{index}/logs" in paths
    assert "/v1/jobs/{job_id}/tasks/{index}/cancel" in paths


def test_ctrl_c_on_fogwheel_mapreduce_cancels_its_map_job(fog: LocalFog, tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(
        textwrap.dedent(
            """
            import time
            from fogwheel.mapreduce import MapReduce

            def mapper(line):
                time.sleep(600)
                yield line, 1

            def reducer(key, values):
                return sum(values)

            job = MapReduce(mapper, reducer, name="slow")
            """
        )
    )
    (tmp_path / "in.txt").write_text("a\nb\n")
    before = last_job_id(fog)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fogwheel", "mapreduce", "run", "slow.py:job", "in.txt"],
        cwd=tmp_path,
        env=env_of(fog),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job = wait_for("the map job", lambda: newest_job(fog, before))
    wait_for("a map task to run", lambda: leased(fog, job["id"]))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"cancelled job {job['id']} on the fog" in stderr
    assert api(fog, "GET", f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"
    assert last_job_id(fog) == job["id"]  # no reduce job was started
