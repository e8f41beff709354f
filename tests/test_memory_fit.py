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
from contextlib import contextmanager, suppress
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


def test_a_status_file_reads_as_its_resident_set() -> None:
    status = "Name:\tpython3\nVmPeak:\t  20060 kB\nVmRSS:\t   16508 kB\nThreads:\t1\n"
    assert memfit.parse_rss_kb(status) == 16508
    assert memfit.parse_rss_kb("Name:\tzombie\nState:\tZ (zombie)\n") is None
    assert memfit.parse_rss_kb("VmRSS:\t lots kB\n") is None


def _plan(task: int, running: list[tuple[int, float]], idle: dict[int, float]) -> memfit.StartPlan:
    """The seed's device under qemu: 512 MB, an agent of 138 MB, workers of 100 MB fresh; the
    task is for slot 0."""
    return memfit.plan_start(
        task,
        slot=0,
        offered_mb=512,
        device_mb=512,
        agent_mb=138,
        worker_mb=100,
        running=[memfit.Running(m, 100, r) for m, r in running],
        idle=idle,
    )


@pytest.mark.parametrize(
    ("task", "running", "idle", "stop", "starts"),
    [
        (256, [], {}, (), True),  # 138 + 256 + 100 = 494 of 512
        (256, [], {1: 110}, (1,), True),  # 604 with the idle worker: it exits
        (128, [], {1: 60, 2: 140, 3: 100}, (2, 3), True),  # largest first, as many as needed
        (64, [], {1: 60, 2: 140, 3: 100}, (2,), True),
        (512, [], {1: 120, 2: 130}, (2, 1), True),  # alone: starts, every idle worker gone
        (256, [(256, 120)], {}, (), False),  # 494 held: a second 256 MB task waits
        (256, [(256, 120)], {2: 100}, (), False),  # and evicts nothing for it
        (32, [(128, 140)], {2: 100}, (2,), True),  # 138 + 228 + 132 + 100 = 598: it exits
        (64, [(128, 300)], {}, (), False),  # a task over its limit (qemu ignores RLIMIT_AS)
        (0, [(256, 120)], {1: 400}, (), True),  # no limit asked: nothing to count
        (256, [], {0: 250}, (0,), True),  # its own worker kept 150 MB more: it starts afresh
        (128, [], {0: 150, 1: 140}, (1,), True),  # 556: the other frees more than its own
    ],
)
def test_resident_workers_and_the_agent_count_against_the_device(
    task: int,
    running: list[tuple[int, float]],
    idle: dict[int, float],
    stop: tuple[int, ...],
    starts: bool,
) -> None:
    plan = _plan(task, running, idle)
    assert plan.starts is starts
    assert plan.stop == stop
    if not starts:
        assert plan.reason is not None and "of the device's 512 MB resident" in plan.reason
        assert f"it needs {task} MB and its worker 100 MB" in plan.reason
    elif task > 0:  # the worker it starts in: a fresh one, or its slot's own as it is now
        assert plan.base_mb == (100 if 0 in stop else max(idle.get(0, 0), 100))


def test_alone_a_task_keeps_its_jobs_warm_worker_but_not_another_jobs_leftovers() -> None:
    own = 0.0

    def plan(own_warm: bool) -> memfit.StartPlan:
        return memfit.plan_start(
            512,
            slot=0,
            offered_mb=512,
            device_mb=512,
            agent_mb=138,
            worker_mb=100,
            running=[],
            idle={0: own, 1: 120},
            own_warm=own_warm,
        )

    own = 250  # it kept 150 MB more than a fresh worker of 100
    assert plan(own_warm=True) == memfit.StartPlan((1,), base_mb=250)  # this job's state
    assert plan(own_warm=False) == memfit.StartPlan((1, 0), base_mb=100)  # another job's
    own = 142  # numpy imported, say: not worth a worker's start
    assert plan(own_warm=False) == memfit.StartPlan((1,), base_mb=142)


def test_the_offered_limits_are_checked_first() -> None:
    plan = memfit.plan_start(
        300,
        slot=0,
        offered_mb=512,
        device_mb=24_000,
        agent_mb=70,
        worker_mb=17,
        running=[memfit.Running(300, 17, 40)],
        idle={},
    )
    assert plan.reason is not None and "the task running here holds 300 of the device's 512 MB" in (
        plan.reason
    )


@given(
    device=st.integers(256, 4096),
    agent=st.integers(20, 200),
    worker=st.integers(5, 150),
    slots=st.integers(1, 6),
    tasks=st.lists(st.tuples(st.integers(1, 2048), st.integers(0, 300)), min_size=1, max_size=16),
)
def test_slots_started_by_the_plan_never_hold_more_than_the_device(
    device: int, agent: int, worker: int, slots: int, tasks: list[tuple[int, int]]
) -> None:
    """A simulated device: a task started on a free slot holds its limit over the worker it
    starts in, and leaves that worker holding what it kept (the second number) more. Slots
    start what the plan lets them, stopping the workers it names, and finish the oldest task
    when nothing may start. What is resident never exceeds the device unless one task runs
    alone with no other worker kept; every task starts in the end."""
    resident = dict.fromkeys(range(slots), 0.0)  # slot -> its worker's resident set now
    running: dict[int, tuple[int, int, float]] = {}  # slot -> (limit, kept, base)
    waiting = list(tasks)
    while waiting:
        free = [s for s in range(slots) if s not in running]
        mb, kept = waiting[0]
        plan = None
        if free:
            slot = free[0]
            idle = {s: resident[s] for s in free if resident[s] > 0}
            plan = memfit.plan_start(
                mb,
                slot=slot,
                offered_mb=device,
                device_mb=device,
                agent_mb=agent,
                worker_mb=worker,
                running=[memfit.Running(m, b, resident[s]) for s, (m, _, b) in running.items()],
                idle=idle,
            )
        if plan is not None and plan.starts:
            assert set(plan.stop) <= set(idle) | {slot}
            for s in plan.stop:
                resident[s] = 0.0
            waiting.pop(0)
            running[slot] = (mb, kept, plan.base_mb)
            resident[slot] = plan.base_mb + mb  # at its limit: the worst it may do
            total = agent + sum(resident.values())
            alone = len(running) == 1 and all(resident[s] == 0 for s in free if s != slot)
            assert total <= device + 1e-9 or alone
        else:
            assert running, "a task waits while nothing runs"
            oldest = next(iter(running))
            _, left, base = running.pop(oldest)
            resident[oldest] = base + left


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


def _memory_cgroup(mb: int = 300) -> Path | None:
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
        (group / name).write_text(str(mb * MB))
    except OSError:
        if group.is_dir():
            group.rmdir()
        return None
    return group


@contextmanager
def _agent_in_group(
    fog: LocalFog, group: Path, data: Path, cores: int
) -> Iterator[subprocess.Popen[bytes]]:
    """A node agent started inside `group`: a shell joins it, then execs the node."""
    join = f'echo $$ > "{group}/cgroup.procs" && exec "$@"'
    cmd = [sys.executable, "-m", "fogwheel", "node", "--coordinator", fog.url]
    cmd += ["--data-dir", str(data), "--cores", str(cores), "--no-serve"]
    env = {**os.environ, "FOGWHEEL_JOIN_TOKEN": fog.join_string}
    with open(data.parent / "node.log", "wb") as log:
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
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _remove(group: Path) -> None:
    for _ in range(50):
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def _oom_kills(group: Path) -> int:
    for name in ("memory.events", "memory.oom_control"):
        with suppress(OSError):
            for line in (group / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


def test_an_agent_under_a_cgroup_offers_the_cgroups_limit(tmp_path: Path) -> None:
    group = _memory_cgroup()
    if group is None:
        pytest.skip("no memory cgroup can be made here (not root, or none delegated)")
    try:
        with LocalFog(0, workdir=tmp_path) as fog, _agent_in_group(fog, group, tmp_path / "n", 1):
            r = httpx.get(f"{fog.url}/v1/nodes", headers=fog.headers, timeout=10)
            assert [n["memory_mb"] for n in r.json()["nodes"]] == [300]
    finally:
        _remove(group)


def _keep(mb: int, seconds: float) -> tuple[float, float]:
    """Fill `mb` and leave it in the worker after the task: a worker kept warm, and fat."""
    import builtins

    b = bytearray(mb * MB)
    b[:: 1 << 12] = b"x" * len(b[:: 1 << 12])  # touched: resident
    builtins._fogwheel_test_kept = b  # type: ignore[attr-defined]
    return _span(seconds)


def _fill(mb: int) -> int:
    b = bytearray(mb * MB)
    b[:: 1 << 12] = b"x" * len(b[:: 1 << 12])
    return len(b) // MB


def test_an_idle_worker_exits_to_make_room_on_a_small_device(tmp_path: Path) -> None:
    """A 560 MB device of two slots (an x86 agent of about 70 MB): two tasks run side by
    side and each leaves its worker holding 150 MB. A task of another job that fills 380 MB
    then starts only once the other slot's idle worker has exited: with it kept, the device
    holds 70 + 167 + 397 MB and the kernel kills one. Nothing is OOM-killed."""
    group = _memory_cgroup(560)
    if group is None:
        pytest.skip("no memory cgroup can be made here (not root, or none delegated)")
    try:
        with (
            LocalFog(0, workdir=tmp_path) as fog,
            _agent_in_group(fog, group, tmp_path / "n", 2),
            Client(fog.url, fog.api_key, replicas=1, on_wait=lambda *_: None) as c,
        ):
            # a lean task first: the agent sees a fresh worker's size (about 20 MB here)
            (lean,) = c.submit_many(_fill, [((1,), {})], memory_mb=64)
            assert lean.result(timeout=120) == 1
            kept = c.submit_many(_keep, [((150, 2.0), {}), ((150, 2.0), {})], memory_mb=180)
            (_, end0), (start1, _) = sorted(f.result(timeout=120) for f in kept)
            assert start1 < end0 - 0.5  # side by side, one on each slot
            (big,) = c.submit_many(_fill, [((380,), {})], memory_mb=440)
            assert big.result(timeout=120) == 380
            log = (tmp_path / "node.log").read_text()
            assert "exits to make room" in log, log[-3000:]
            assert _oom_kills(group) == 0
            outcomes = [ln.split("finished: ")[1] for ln in log.splitlines() if "finished: " in ln]
            assert len(outcomes) == 4 and all(o.startswith("ok") for o in outcomes)  # no retry
    finally:
        _remove(group)
