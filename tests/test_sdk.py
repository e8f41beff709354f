"""The SDK against a real local fog: a coordinator and two node agents as processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import as_completed

import pytest

from fogwheel import Client, CommandResult
from fogwheel.errors import CommandFailed, ConfigError, RemoteTraceback, TaskFailed
from fogwheel.localfog import LocalFog


@pytest.fixture(scope="module")
def fog() -> Iterator[LocalFog]:
    with LocalFog(2, lease_seconds=5.0) as f:
        yield f


@pytest.fixture
def client(fog: LocalFog) -> Iterator[Client]:
    with Client(fog.url, fog.api_key) as c:
        yield c


def square(x: int) -> int:
    return x * x


def divide(a: float, b: float) -> float:
    return a / b


def test_submit_returns_a_concurrent_futures_future(client: Client) -> None:
    fut = client.submit(square, 12)
    assert fut.result(timeout=30) == 144
    assert fut.done() and fut.exception() is None


def test_map_yields_results_in_input_order(client: Client) -> None:
    assert list(client.map(square, range(50), timeout=60)) == [x * x for x in range(50)]


def test_lambdas_and_closures_travel(client: Client) -> None:
    offset = 7
    assert client.submit(lambda x: x + offset, 1).result(timeout=30) == 8


def test_a_remote_exception_is_raised_here_with_the_node_traceback(client: Client) -> None:
    fut = client.submit(divide, 1, 0)
    with pytest.raises(ZeroDivisionError) as info:
        fut.result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in divide" in cause.tb and "ZeroDivisionError: division by zero" in cause.tb


def test_as_completed_yields_every_future_once(client: Client) -> None:
    futures = [client.submit(square, i) for i in range(5)]
    done = list(as_completed(futures, timeout=60))
    assert sorted(f.result() for f in done) == [0, 1, 4, 9, 16]


def test_large_arguments_and_results_travel_as_blobs(client: Client) -> None:
    big = bytes(range(256)) * 2048  # 512 KiB, over the inline limit
    assert client.submit(lambda b: b[::-1], big).result(timeout=60) == big[::-1]


def test_a_command_task_gets_its_inputs_and_returns_its_outputs(client: Client, tmp_path) -> None:
    src = tmp_path / "words.txt"
    src.write_text("pear\napple\nfig\n")
    fut = client.run(
        ["sort", "-o", "sorted.txt", "words.txt"], inputs={"words.txt": src}, outputs=["sorted.txt"]
    )
    res = fut.result(timeout=60)
    assert isinstance(res, CommandResult) and res.returncode == 0
    assert res.outputs["sorted.txt"] == b"apple\nfig\npear\n"


def test_a_failing_command_raises_command_failed_with_its_stderr(client: Client) -> None:
    fut = client.run(["sh", "-c", "echo oops >&2; exit 3"])
    with pytest.raises(CommandFailed) as info:
        fut.result(timeout=60)
    assert info.value.result.returncode == 3
    assert "oops" in info.value.result.stderr


def test_a_task_over_its_wall_time_is_killed_and_fails_with_the_reason(client: Client) -> None:
    [fut] = client.submit_many(time.sleep, [((30,), {})], wall_s=1.0)
    with pytest.raises(TaskFailed, match="wall-time limit of 1 s exceeded"):
        fut.result(timeout=60)
    assert client.submit(square, 3).result(timeout=30) == 9  # the node carries on


def test_a_task_over_its_memory_limit_fails_and_the_node_carries_on(client: Client) -> None:
    [fut] = client.submit_many(lambda: bytearray(400 * 1024 * 1024), [((), {})], memory_mb=64)
    with pytest.raises(TaskFailed, match="memory limit of 64 MB exceeded"):
        fut.result(timeout=60)
    assert client.submit(square, 4).result(timeout=30) == 16


def test_placement_reasons_are_readable_through_the_api(client: Client) -> None:
    fut = client.submit(square, 2)
    fut.result(timeout=30)
    [task] = client.tasks(fut.job_id)
    assert task["history"][0]["reason"].startswith(task["history"][0]["node_id"])
    assert "reliability" in task["history"][0]["reason"]


def test_a_client_without_url_or_key_says_how_to_give_them(monkeypatch) -> None:
    monkeypatch.delenv("FOGWHEEL_COORDINATOR", raising=False)
    monkeypatch.delenv("FOGWHEEL_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="FOGWHEEL_COORDINATOR"):
        Client()
    with pytest.raises(ConfigError, match="FOGWHEEL_API_KEY"):
        Client("http://127.0.0.1:1")


def spin() -> None:
    while True:
        pass


def test_a_task_over_its_cpu_limit_is_stopped_and_fails_with_the_reason(client: Client) -> None:
    [fut] = client.submit_many(spin, [((), {})], cpu_s=1.0, wall_s=60.0)
    with pytest.raises(TaskFailed, match=r"CPU limit of 1\.0 s exceeded"):
        fut.result(timeout=60)
    assert client.submit(square, 5).result(timeout=30) == 25


def test_metrics_are_served_in_prometheus_format_to_the_operator_only(
    client: Client, fog: LocalFog
) -> None:
    import httpx

    client.submit(square, 1).result(timeout=30)
    assert httpx.get(f"{fog.url}/metrics").status_code == 401
    assert httpx.get(f"{fog.url}/metrics", headers=fog.headers).status_code == 403
    admin = {"authorization": f"Bearer {fog.admin_key}"}
    text = httpx.get(f"{fog.url}/metrics", headers=admin).text
    assert 'fogwheel_tasks{state="done"}' in text
    assert 'fogwheel_nodes{state="up"} 2.0' in text
