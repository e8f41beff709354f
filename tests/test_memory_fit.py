"""A device never takes more memory than it has (issue 16 item 4): placement refuses a task
bigger than the node, with the sentence that says why; a node with several slots starts tasks
only while their limits fit the device together; an agent under a cgroup offers the cgroup's
limit, not the machine's MemTotal.

The pure rules (core/memfit.py) are tried on tables; the rest on real processes: a coordinator
and node agents (LocalFog) on loopback, and a real memory cgroup where this machine lets root
make one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel.client import Client
from fogwheel.core import memfit
from fogwheel.core.waiting import NO_MEMORY
from fogwheel.errors import NoCapableNode
from fogwheel.localfog import LocalFog

MB = 1 << 20

# -- the pure rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("536870912\n", 512 * MB),
        ("max\n", None),  # v2: no limit
        ("9223372036854771712\n", None),  # v1: no limit
        ("", None),
        ("-1", None),
        ("12abc", None),
    ],
)
def test_a_limit_file_reads_as_bytes_or_no_limit(text: str, limit: int | None) -> None:
    assert memfit.parse_limit(text) == limit


V1_MOUNTS = (
    "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
    "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
    "cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n"
    "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
)
V2_MOUNTS = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n"


@pytest.mark.parametrize(
    ("own", "mounts", "files"),
    [
        (  # v2: the agent's service, its slice, the root
            "0::/owner.slice/fogwheel.service\n",
            V2_MOUNTS,
            [
                "/sys/fs/cgroup/owner.slice/fogwheel.service/memory.max",
                "/sys/fs/cgroup/owner.slice/memory.max",
                "/sys/fs/cgroup/memory.max",
            ],
        ),
        (  # hybrid: memory is on v1, and the unified tree holds no memory limit
            "4:memory:/box\n2:pids:/box\n0::/box\n",
            V1_MOUNTS,
            [
                "/sys/fs/cgroup/memory/box/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            ],
        ),
        ("0::/\n", V2_MOUNTS, ["/sys/fs/cgroup/memory.max"]),  # the root group (a container)
        ("0::/../other\n", V2_MOUNTS, []),  # a group outside this mount: nothing to read
        ("", V2_MOUNTS, []),  # no /proc/self/cgroup: no limits
    ],
)
def test_the_limit_files_are_the_group_and_every_ancestor(
    own: str, mounts: str, files: list[str]
) -> None:
    assert memfit.limit_files(own, mounts) == files


@pytest.mark.parametrize(
    ("total_kb", "limits", "mb"),
    [
        (24 << 20, [512 * MB, None, None], 512),  # the 512 MB box on a big host
        (24 << 20, [None, 2048 * MB, 768 * MB], 768),  # the least limit on the path wins
        (480 << 10, [1024 * MB], 480),  # a limit above the RAM the device has
        (None, [], memfit.FALLBACK_MB),
        (None, [300 * MB], 300),
    ],
)
def test_the_device_has_the_least_of_its_ram_and_its_limits(
    total_kb: int | None, limits: list[int | None], mb: int
) -> None:
    assert memfit.device_memory_mb(total_kb, limits) == mb


@pytest.mark.parametrize(
    ("task", "running", "starts"),
    [
        (400, [], True),  # alone, always
        (2048, [], True),  # even bigger than the device: it runs (and meets its own limit)
        (256, [256], True),  # 512 of 512
        (257, [256], False),
        (400, [400], False),
        (100, [200, 200], True),
        (100, [200, 250], False),
        (0, [500], True),  # no limit asked: nothing to count
        (300, [0, 0], True),  # tasks that asked for none count for none
    ],
)
def test_a_task_starts_only_while_the_running_limits_fit_the_device(
    task: int, running: list[int], starts: bool
) -> None:
    why = memfit.wait_reason(task, running, 512)
    assert (why is None) is starts
    if why is not None:
        assert f"it needs {task} MB" in why and "of the device's 512 MB" in why


@given(
    device=st.integers(1, 4096),
    tasks=st.lists(st.integers(0, 2048), min_size=1, max_size=12),
)
def test_tasks_started_in_any_order_never_exceed_the_device_unless_alone(
    device: int, tasks: list[int]
) -> None:
    """Slots that start what wait_reason lets them, finishing the oldest when none may start,
    never hold more than the device between them, except for one task running alone; and
    every task starts in the end."""
    running: list[int] = []
    waiting = list(tasks)
    started = 0
    while waiting:
        if memfit.wait_reason(waiting[0], running, device) is None:
            running.append(waiting.pop(0))
            started += 1
            assert sum(running) <= device or len([m for m in running if m > 0]) == 1
        else:
            assert running, "a task waits while nothing runs"
            running.pop(0)
    assert started == len(tasks)


# -- placement on real nodes --------------------------------------------------------------------


def _span(seconds: float) -> tuple[float, float]:
    """When this task ran, by the wall clock: two tasks overlapped when their spans do."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@pytest.fixture(scope="module")
def small_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    """One node of two slots that offers 512 MB: the seed's device, as placement sees it."""
    with LocalFog(
        1, cores_per_node=2, node_args=["--memory", "512"], workdir=tmp_path_factory.mktemp("m")
    ) as fog:
        yield fog


def test_the_node_offers_the_memory_it_was_given(small_node: LocalFog) -> None:
    r = httpx.get(f"{small_node.url}/v1/nodes", headers=small_node.headers, timeout=10)
    assert [n["memory_mb"] for n in r.json()["nodes"]] == [512]


def test_a_task_bigger_than_every_node_is_refused_with_the_reason(small_node: LocalFog) -> None:
    with Client(small_node.url, small_node.api_key, replicas=1, on_wait=lambda *_: None) as c:
        (big,) = c.submit_many(pow, [((2, 10), {})], memory_mb=1536)
        with pytest.raises(NoCapableNode) as caught:
            big.result(timeout=8)
        job = httpx.get(
            f"{small_node.url}/v1/jobs/{big.job_id}", headers=small_node.headers, timeout=10
        ).json()
        c.cancel(big.job_id)
        # ... while a task that fits runs on the same node at once
        (fits,) = c.submit_many(pow, [((2, 10), {})], memory_mb=512)
        assert fits.result(timeout=30) == 1024
    assert caught.value.reason == NO_MEMORY
    assert "it needs 1536 MB and the largest live node offers 512 MB" in str(caught.value)
    assert job["waiting"]["reason"] == NO_MEMORY and job["waiting"]["stuck"] is True


def _spans(fog: LocalFog, memory_mb: int) -> list[tuple[float, float]]:
    with Client(fog.url, fog.api_key, replicas=1, on_wait=lambda *_: None) as c:
        futures = c.submit_many(_span, [((1.5,), {}), ((1.5,), {})], memory_mb=memory_mb)
        return sorted(f.result(timeout=60) for f in futures)


def test_two_tasks_that_together_exceed_the_device_run_one_after_the_other(
    small_node: LocalFog,
) -> None:
    (_, end0), (start1, _) = _spans(small_node, 400)  # 800 MB on a 512 MB device
    assert start1 >= end0 - 0.05
    log = (small_node.dir / "node-0.log").read_text()
    assert "waits for memory: it needs 400 MB and the task running here holds 400" in log


def test_two_tasks_that_fit_together_run_side_by_side(small_node: LocalFog) -> None:
    (_, end0), (start1, _) = _spans(small_node, 256)  # 512 MB on a 512 MB device
    assert start1 < end0 - 0.5


# -- an agent under a real memory cgroup --------------------------------------------------------


def _memory_cgroup() -> Path | None:
    """A fresh memory cgroup this process may fill, under its own (v2 or v1); None if none."""
    own = Path("/proc/self/cgroup").read_text()
    mounts = Path("/proc/self/mounts").read_text()
    files = memfit.limit_files(own, mounts)
    if not files:
        return None
    parent = Path(files[0]).parent
    name = "memory.max" if files[0].endswith("memory.max") else "memory.limit_in_bytes"
    group = parent / f"fogwheel-memfit-{os.getpid()}"
    try:
        group.mkdir()
        (group / name).write_text(str(300 * MB))
    except OSError:
        if group.is_dir():
            group.rmdir()
        return None
    return group


def test_an_agent_under_a_cgroup_offers_the_cgroups_limit(tmp_path: Path) -> None:
    group = _memory_cgroup()
    if group is None:
        pytest.skip("no memory cgroup can be made here (not root, or none delegated)")
    try:
        with LocalFog(0, workdir=tmp_path) as fog:
            # The agent starts inside the group: a shell joins it, then execs the node.
            join = f'echo $$ > "{group}/cgroup.procs" && exec "$@"'
            cmd = [sys.executable, "-m", "fogwheel", "node", "--coordinator", fog.url]
            cmd += ["--data-dir", str(tmp_path / "n"), "--cores", "1", "--no-serve"]
            env = {**os.environ, "FOGWHEEL_JOIN_TOKEN": fog.join_string}
            with open(tmp_path / "node.log", "wb") as log:
                proc = subprocess.Popen(
                    ["sh", "-c", join, "sh", *cmd],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                fog.nodes.append(proc)
                fog.wait_for_nodes(1, timeout=60)
                r = httpx.get(f"{fog.url}/v1/nodes", headers=fog.headers, timeout=10)
                assert [n["memory_mb"] for n in r.json()["nodes"]] == [300]
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
