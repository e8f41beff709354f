"""`fogwheel.Executor` is a real `concurrent.futures.Executor` on real nodes: submits close
together are one job, `map` has `chunksize` and fails fast, `cancel()` stops a running task on
the fog unbilled, `running()` says a node holds it, `shutdown(cancel_futures=True)` stops the
rest; Dask, joblib and tqdm run on it unchanged; a job whose tasks failed reads `failed`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import Executor as StdExecutor

import dask
import dask.array as da
import dask.bag as db
import joblib
import numpy as np
import pytest
from tqdm import tqdm

import fogwheel.joblib_backend  # noqa: F401  (registers the "fogwheel" backend)
from fogwheel import Client, Executor, gather
from fogwheel.executor import fog_map, in_order
from fogwheel.localfog import LocalFog
from fogwheel.protocol import SyncIn
from fogwheel.store import Store
from tests.test_stopping import api, charged_tasks, tasks_of, wait_for
from tests.test_store import T0, job, join, ok


def inc(x: int) -> int:
    return x + 1


def is_even(x: int) -> bool:
    return x % 2 == 0


def nap(seconds: float, value: int = 0) -> int:
    time.sleep(seconds)
    return value


def fails_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    time.sleep(0.05 if x < bad else 20.0)  # those after the bad one would take long
    return x * 10


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    with LocalFog(0, cores_per_node=2, workdir=tmp_path_factory.mktemp("fog")) as f:
        f.add_node()
        f.add_node()
        f.wait_for_nodes(2)
        yield f


@pytest.fixture
def ex(fog: LocalFog) -> Iterator[Executor]:
    with Executor(fog.url, fog.api_key, replicas=1) as executor:
        yield executor


def job_count(fog: LocalFog) -> int:
    jobs = api(fog, "GET", "/v1/jobs?limit=1").json()["jobs"]
    return jobs[0]["id"] if jobs else 0


# -- concurrent.futures ---------------------------------------------------------------------


def test_it_is_an_executor_and_a_thousand_submits_close_together_are_one_job(
    fog: LocalFog,
) -> None:
    # 1,000 submits take some 40 ms on an idle machine, each well within the default 20 ms
    # of the one before; on a loaded CI machine a thread may sleep far longer than that
    # between two of them (a run once split them at a 0.25 s window), so this test gives them
    # a window of a second (and so at most 10 s in all, the executor's cap of ten windows).
    with Executor(fog.url, fog.api_key, replicas=1, batch_window=1.0) as ex:
        assert isinstance(ex, StdExecutor)
        futures = [ex.submit(pow, 2, i % 20) for i in range(1000)]
        assert gather(futures, timeout=180) == [2 ** (i % 20) for i in range(1000)]
    jobs = sorted({f.job_id for f in futures})
    assert len(jobs) == 1, f"1,000 submits became {len(jobs)} jobs: " + ", ".join(
        f"{j} ({sum(f.job_id == j for f in futures)} tasks)" for j in jobs
    )
    [job_id] = jobs
    assert [f.index for f in futures] == list(range(1000))
    job = api(fog, "GET", f"/v1/jobs/{job_id}").json()
    assert (job["total"], job["state"], job["name"]) == (1000, "done", "pow")


def test_submits_apart_by_more_than_the_window_are_jobs_of_their_own(fog: LocalFog) -> None:
    with Executor(fog.url, fog.api_key, replicas=1, batch_window=0.01) as ex:
        first = ex.submit(inc, 1)
        time.sleep(0.3)
        second = ex.submit(inc, 2)
        assert (first.result(timeout=120), second.result(timeout=120)) == (2, 3)
    assert first.job_id != second.job_id


def test_map_runs_chunksize_items_as_one_task_and_keeps_their_order(
    fog: LocalFog, ex: Executor
) -> None:
    before = job_count(fog)
    assert list(ex.map(inc, range(10), chunksize=4, timeout=180)) == list(range(1, 11))
    newest = api(fog, "GET", "/v1/jobs?limit=1").json()["jobs"][0]
    assert newest["id"] > before and newest["total"] == 3  # [0..3], [4..7], [8, 9]
    assert list(ex.map(pow, [2, 3], [5, 2])) == [32, 9]  # several iterables, as zip
    with pytest.raises(ValueError, match="chunksize must be 1 or more"):
        ex.map(inc, [1], chunksize=0)


def test_map_fails_fast_and_cancels_the_rest_on_the_fog(fog: LocalFog, ex: Executor) -> None:
    # item 0 naps 20 s; item 3 fails at once: the failure comes first, long before item 0
    items = [10, 1, 2, 3, 4, 5, 6, 7]
    started = time.monotonic()
    results = ex.map(fails_on, items)
    with pytest.raises(ValueError, match="item 3 is bad"):
        next(results)
    assert time.monotonic() - started < 15.0
    job_id = ex.client.jobs(limit=1)[0]["id"]
    states = wait_for(
        "the rest to be cancelled",
        lambda: (
            (s := [t["state"] for t in tasks_of(fog, job_id)])
            and all(x in ("done", "failed", "cancelled") for x in s)
            and s
        ),
        timeout=30,
    )
    assert states[3] == "failed" and states[0] == "cancelled"  # item 0 was still napping
    assert states.count("cancelled") >= 4


def test_client_map_takes_chunksize_too_and_fails_fast(fog: LocalFog) -> None:
    with Client(fog.url, fog.api_key, replicas=1) as client:
        assert list(client.map(inc, range(7), chunksize=3)) == list(range(1, 8))
        with pytest.raises(ValueError, match="item 3 is bad"):
            list(client.map(fails_on, [10, 3, 1], timeout=15))


def test_running_is_true_while_a_node_holds_the_task(fog: LocalFog, ex: Executor) -> None:
    fut = ex.submit(nap, 4.0, 7)
    wait_for("the task to run", fut.running, timeout=60)
    assert not fut.done()
    assert fut.result(timeout=120) == 7
    assert not fut.running() and fut.done()


def test_cancel_stops_a_running_task_on_the_fog_and_nobody_is_billed(
    fog: LocalFog, ex: Executor
) -> None:
    fut = ex.submit(nap, 30.0, 1)
    wait_for("the task to run", fut.running, timeout=60)
    assert fut.cancel() is True  # a fog can stop a running task: it does
    assert fut.cancelled() and fut.done()
    with pytest.raises(CancelledError):
        fut.result(timeout=1)
    [task] = tasks_of(fog, fut.job_id)
    assert task["state"] == "cancelled"
    assert task["history"][-1]["outcome"] == "cancelled"
    time.sleep(2 * fog.lease_seconds)  # the node hears at its next sync that the lease is gone
    assert task["id"] not in charged_tasks(fog)


def test_cancel_before_the_batch_is_sent_sends_nothing(fog: LocalFog) -> None:
    before = job_count(fog)
    with Executor(fog.url, fog.api_key, replicas=1, batch_window=30.0) as ex:
        fut = ex.submit(inc, 1)
        assert fut.cancel() is True and fut.job_id is None
    assert job_count(fog) == before


def test_shutdown_with_cancel_futures_stops_them_all_and_takes_no_more(fog: LocalFog) -> None:
    ex = Executor(fog.url, fog.api_key, replicas=1)
    futures = [ex.submit(nap, 30.0, i) for i in range(6)]
    wait_for("a task to run", lambda: any(f.running() for f in futures), timeout=60)
    started = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 20.0
    assert all(f.cancelled() for f in futures)
    assert {t["state"] for t in tasks_of(fog, futures[0].job_id)} == {"cancelled"}
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(inc, 1)


def test_leaving_the_block_on_an_exception_cancels_its_futures(fog: LocalFog) -> None:
    with (
        pytest.raises(KeyError),
        Executor(fog.url, fog.api_key, replicas=1) as ex,
    ):
        fut = ex.submit(nap, 30.0)
        wait_for("the task to be sent", lambda: fut.job_id is not None, timeout=30)
        raise KeyError("give up")
    assert fut.cancelled()
    assert tasks_of(fog, fut.job_id)[0]["state"] == "cancelled"


def test_gather_raises_skips_or_returns_errors(fog: LocalFog, ex: Executor) -> None:
    futures = [ex.submit(fails_on, 0), ex.submit(fails_on, 3), ex.submit(fails_on, 1)]
    with pytest.raises(ValueError, match="item 3 is bad"):
        gather(futures, timeout=120)
    assert gather(futures, errors="skip", timeout=120) == [0, 10]
    got = gather(futures, errors="return", timeout=120)
    assert got[0] == 0 and got[2] == 10 and isinstance(got[1], ValueError)
    with pytest.raises(ValueError, match='errors must be "raise"'):
        gather(futures, errors="ignore")  # type: ignore[arg-type]


def test_a_job_whose_task_failed_reads_failed(fog: LocalFog, ex: Executor) -> None:
    fut = ex.submit(fails_on, 3)
    with pytest.raises(ValueError):
        fut.result(timeout=120)
    job = wait_for(
        "the job to finish",
        lambda: (j := api(fog, "GET", f"/v1/jobs/{fut.job_id}").json())["finished"] and j,
    )
    assert (job["state"], job["failed"]) == ("failed", 1)
    listed = subprocess.run(
        [sys.executable, "-m", "fogwheel", "jobs", "--limit", "50"],
        env={
            **os.environ,
            "FOGWHEEL_COORDINATOR": fog.url,
            "FOGWHEEL_API_KEY": fog.api_key,
            "COLUMNS": "200",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if f" {fut.job_id} " in line]
    assert "failed" in row and "done" not in row


# -- Dask, joblib, tqdm ---------------------------------------------------------------------


def test_dask_bag_computations_equal_dasks_own(ex: Executor) -> None:
    bag = db.from_sequence(range(300), npartitions=12)
    total = bag.map(inc).filter(is_even).sum()
    counts = bag.map(lambda x: x % 7).frequencies()
    mean = bag.map(float).mean()
    ours = dask.compute(total, counts, mean, scheduler=ex)
    theirs = dask.compute(total, counts, mean, scheduler="sync")
    assert ours[0] == theirs[0] and ours[2] == theirs[2]
    assert sorted(ours[1]) == sorted(theirs[1])


def test_dask_array_computations_equal_dasks_own(ex: Executor) -> None:
    x = da.from_array(np.random.default_rng(7).standard_normal((400, 300)), chunks=(100, 100))
    ours = dask.compute(x.mean(axis=0), (x @ x.T).trace(), x.std(), scheduler=ex)
    theirs = dask.compute(x.mean(axis=0), (x @ x.T).trace(), x.std(), scheduler="sync")
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_dask_sees_a_task_failure_as_its_own_error(ex: Executor) -> None:
    bag = db.from_sequence([1, 2, 3, 4], npartitions=4).map(fails_on)
    with pytest.raises(ValueError, match="item 3 is bad"):
        dask.compute(bag.sum(), scheduler=ex)


def test_joblib_parallel_runs_on_the_fogwheel_backend(fog: LocalFog, ex: Executor) -> None:
    before = job_count(fog)
    with joblib.parallel_config(backend="fogwheel", executor=ex):
        squares = joblib.Parallel(n_jobs=-1)(joblib.delayed(pow)(i, 2) for i in range(200))
        assert squares == [i * i for i in range(200)]
        with pytest.raises(ValueError, match="item 3 is bad"):
            joblib.Parallel()(joblib.delayed(fails_on)(i) for i in range(8))
    jobs = api(fog, "GET", "/v1/jobs?limit=20").json()["jobs"]
    mine = [j for j in jobs if j["id"] > before]
    assert len(mine) <= 4  # the batches of a burst are one job, not 200


def test_joblib_backend_makes_its_own_executor_from_url_and_key(fog: LocalFog) -> None:
    with joblib.parallel_config(backend="fogwheel", url=fog.url, api_key=fog.api_key, replicas=1):
        assert joblib.Parallel()(joblib.delayed(inc)(i) for i in range(5)) == [1, 2, 3, 4, 5]


def test_tqdm_shows_progress_of_a_map_on_the_fog(ex: Executor) -> None:
    out = io.StringIO()
    assert fog_map(inc, range(12), executor=ex, file=out, ascii=True) == list(range(1, 13))
    assert "12/12" in out.getvalue()
    # and tqdm around the executor's own map, the idiom that needs nothing else
    bar = tqdm(ex.map(inc, range(5)), total=5, file=out)
    assert list(bar) == [1, 2, 3, 4, 5]


# -- the store: cancelling several tasks at once --------------------------------------------


def test_cancelling_several_tasks_cancels_only_those_still_open(store: Store) -> None:
    node = join(store)
    job_id = store.create_job("c1", job(4), T0)
    leases = store.sync(node, SyncIn(want=4, slots_free=4), T0).tasks
    first = min(leases, key=lambda t: t["task_id"])  # task 0
    store.sync(node, SyncIn(results=[ok(first["task_id"], 1)]), T0 + 1)
    assert store.cancel_tasks("c1", job_id, [0, 1, 2, 9], T0 + 2) == [1, 2]
    states = [t["state"] for t in store.list_tasks("c1", job_id, None, 10, 0)]
    assert states == ["done", "cancelled", "cancelled", "leased"]
    assert store.cancel_tasks("c1", job_id, [1, 2], T0 + 3) == []  # twice: nothing new
    assert store.cancel_tasks("bob", job_id, [3], T0 + 3) is None  # not bob's job


# -- the ordering rules, on plain futures ---------------------------------------------------


def futures_of(n: int) -> list[Future[int]]:
    return [Future() for _ in range(n)]


def test_in_order_raises_a_known_failure_before_earlier_results_and_cancels_the_rest() -> None:
    fs = futures_of(4)
    cancelled: list[Future[int]] = []
    results = in_order(fs, None, cancel=cancelled.extend)
    fs[2].set_exception(ValueError("third"))
    fs[0].set_result(0)  # ready, but a failure is known already
    with pytest.raises(ValueError, match="third"):
        next(results)
    assert cancelled == [fs[1], fs[3]]


def test_in_order_yields_in_input_order_and_flattens_chunks() -> None:
    fs = futures_of(2)
    fs[1].set_result([3, 4])
    fs[0].set_result([1, 2])
    assert list(in_order(fs, None, flat=True, cancel=list)) == [1, 2, 3, 4]


def test_in_order_raises_timeout_when_the_deadline_passes() -> None:
    fs = futures_of(1)
    with pytest.raises(TimeoutError):
        next(in_order(fs, time.monotonic() + 0.1, cancel=list))


def test_gather_of_plain_futures_with_a_cancelled_one() -> None:
    fs = futures_of(3)
    fs[0].set_result(1)
    fs[1].cancel()
    fs[2].set_result(3)
    assert gather(fs, errors="skip") == [1, 3]
    got = gather(fs, errors="return")
    assert got[0] == 1 and isinstance(got[1], CancelledError) and got[2] == 3
