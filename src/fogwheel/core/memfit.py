"""Memory fit: how much memory a device really has, and whether a task may start on it now.

A 512 MB box runs its agent under a control group (systemd's `MemoryMax=`, a container, an
owner's `memory.max`), and /proc/meminfo still shows the whole machine: a node that offered
MemTotal would accept work its group kills. The device's memory is the least of MemTotal and
every memory limit on the path from the agent's group up to the root (`device_memory_mb`),
read from the files `limit_files` names (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`).

Placement refuses a task whose `memory_mb` exceeds what the node offers (core/scheduler.py,
core/waiting.py: "it needs 1536 MB and the largest live node offers 512 MB"). A node with
several slots must also not start tasks whose limits add up past the device: a slot waits
until the tasks running beside it leave room (`wait_reason`), as BOINC's client leaves a task
"waiting for memory" rather than starting it into the kernel's OOM killer. A task alone is
always started, so nothing waits forever: placement already kept tasks too big for the
device away. What is resident counts as well (`plan_start`): the agent itself and the
workers its slots keep warm between tasks, which exit to make room on a small device.
Everything here is pure: the agent reads the files, /proc/PID/status and the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

MB = 1 << 20
# v1 writes "no limit" as the page counter's maximum rounded to pages (9223372036854771712);
# anything at or past 2**62 bytes is no limit on any machine that exists.
NO_LIMIT_V1 = 1 << 62
FALLBACK_MB = 512  # a device that shows no MemTotal is taken for the smallest one we serve


def limit_files(proc_cgroup: str, mounts: str) -> list[str]:
    """The memory-limit files of the group in `proc_cgroup` (/proc/self/cgroup) and of each
    of its ancestors, under the mount points in `mounts` (/proc/self/mounts); nearest first.

    A limit anywhere above the agent's group bounds it too (systemd puts the owner's limit on
    the slice, the agent runs in a service below it), so every level counts."""
    own_v2: str | None = None
    own_v1: str | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            own_v2 = path
        elif "memory" in controllers.split(","):
            own_v1 = path
    out: list[str] = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point, fstype, options = fields[1], fields[2], fields[3].split(",")
        if fstype == "cgroup" and "memory" in options and own_v1 is not None:
            out += _ancestors(point, own_v1, "memory.limit_in_bytes")
        elif fstype == "cgroup2" and own_v2 is not None and own_v1 is None:
            out += _ancestors(point, own_v2, "memory.max")
    return out


def _ancestors(point: str, own: str, name: str) -> list[str]:
    """`name` in the group `own` under `point` and in each group above it, nearest first."""
    rel = PurePosixPath(own.strip("/"))
    if ".." in rel.parts:
        return []  # a group outside this mount (another namespace's): nothing to read here
    return [str(PurePosixPath(point) / level / name) for level in (rel, *rel.parents)]


def parse_limit(text: str) -> int | None:
    """A limit file's bytes, or None for no limit ("max", v1's near-2**63, or garbage)."""
    text = text.strip()
    if not text.isdigit():
        return None  # "max" (v2), or not a number: no limit we can trust
    value = int(text)
    return None if value >= NO_LIMIT_V1 else value


def device_memory_mb(mem_total_kb: int | None, limits: Iterable[int | None]) -> int:
    """What the device has, MB: the least of MemTotal and every memory limit above the agent."""
    candidates = [b // MB for b in limits if b is not None]
    if mem_total_kb is not None and mem_total_kb > 0:
        candidates.append(mem_total_kb // 1024)
    return max(1, min(candidates)) if candidates else FALLBACK_MB


def wait_reason(task_mb: int, running_mb: Iterable[int], device_mb: int) -> str | None:
    """None when a task asking `task_mb` may start beside tasks holding `running_mb`, on a
    device of `device_mb`; else the sentence that says why it waits.

    The limits of the tasks running at once add up to at most the device's memory. A task
    with nothing beside it always starts: one bigger than the device never got here (the
    coordinator places a task only on a node that offers its memory), and one that did must
    run, or fail at its own limit, rather than hold its slot forever."""
    running = [m for m in running_mb if m > 0]
    if not running or task_mb <= 0:
        return None
    held = sum(running)
    if held + task_mb <= device_mb:
        return None
    them = (
        "the task running here holds"
        if len(running) == 1
        else f"the {len(running)} tasks running here hold"
    )
    return (
        f"it needs {task_mb} MB and {them} {held} of the device's {device_mb} MB: "
        "it starts when one finishes"
    )


# -- resident memory: the agent and its workers count too ---------------------------------------


def parse_rss_kb(status: str) -> int | None:
    """VmRSS, kB, from a /proc/PID/status text; None when it shows none (a zombie, garbage)."""
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            number = value.strip().removesuffix("kB").strip()
            return int(number) if number.isdigit() else None
    return None


@dataclass(frozen=True)
class Running:
    """A task running on the device: the limit it was started under, what its worker held
    resident when it started (the limit bounds only what the task adds to it), and what its
    slot holds resident now (its worker, or its command's process), MB."""

    limit_mb: int
    base_mb: float
    resident_mb: float

    @property
    def holds_mb(self) -> float:
        """What it may hold: its worker and its limit, or what it holds now if that is more
        (qemu-user ignores a guest's RLIMIT_AS)."""
        return max(self.limit_mb + self.base_mb, self.resident_mb)


@dataclass(frozen=True)
class StartPlan:
    """What a slot does with a task: start it, once the workers of the slots in `stop` have
    exited (its own among them when it must start afresh), or, with `reason`, hold it until a
    running task finishes. `base_mb`: what its worker holds resident as it starts."""

    stop: tuple[int, ...] = ()
    reason: str | None = None
    base_mb: float = 0.0

    @property
    def starts(self) -> bool:
        return self.reason is None


def plan_start(
    task_mb: int,
    *,
    slot: int,
    offered_mb: int,
    device_mb: int,
    agent_mb: float,
    worker_mb: float,
    running: Sequence[Running],
    idle: Mapping[int, float],
    own_warm: bool = False,
) -> StartPlan:
    """Whether a task asking `task_mb` may start on `slot` now, and which workers kept warm
    must exit first.

    Two budgets. The limits of the tasks running at once fit in what the node offers
    (`wait_reason`: the coordinator placed them by it). And what is resident fits in the
    device (`device_mb`, the least of its RAM and its cgroup limits): the agent's own resident
    set (`agent_mb`); each running task at `Running.holds_mb`; the workers the other slots
    keep warm between tasks (`idle`: slot index -> MB resident); and the new task, at its
    limit plus the worker it runs in: its slot's own (`idle[slot]`, which may have kept
    memory from earlier tasks) or a fresh one (`worker_mb`). Counting only the limits let a
    512 MB four-slot device under qemu keep an agent of 138 MB and four workers of 100-140 MB:
    the kernel killed one.

    A worker kept warm is only a cache: it exits to make room, the one whose exit frees the
    most first, and its slot starts a fresh one for its next task. A task that still does not
    fit waits for a running one to finish; with nothing running it starts anyway, with every
    kept worker gone (placement kept tasks bigger than the node away; one bigger than the
    device's room must run, or meet its own limit, rather than wait forever). Then its own
    worker stays if it last ran the same job (`own_warm`: what it holds is that job's warm
    state, numpy say) or holds less than two fresh ones: starting afresh would not make the
    task fit, and costs a worker's start (about 13 s under qemu)."""
    why = wait_reason(task_mb, [r.limit_mb for r in running], offered_mb)
    if why is not None:
        return StartPlan(reason=why)
    own = max(idle.get(slot, 0.0), worker_mb)
    if task_mb <= 0:
        return StartPlan(base_mb=own)  # no limit asked: nothing to count it by
    held = agent_mb + sum(r.holds_mb for r in running)
    kept = {s: mb for s, mb in idle.items() if s != slot}
    # what each exit frees: another slot's whole worker, or the own worker's excess over a fresh one
    frees = {**kept, slot: own - worker_mb}
    total = held + sum(kept.values()) + own + task_mb
    stop: list[int] = []
    for s, mb in sorted(frees.items(), key=lambda kv: (-kv[1], kv[0])):
        if total <= device_mb or mb <= 0:
            break
        stop.append(s)
        total -= mb
    if total > device_mb and not running:  # alone either way: every kept worker goes but
        stop = [s for s in stop if s != slot]  # the job's own warm one, if its slot has it
        stop += [s for s in sorted(kept) if s not in stop and kept[s] > 0]
        if slot in idle and not own_warm and idle[slot] > 2 * worker_mb:
            stop.append(slot)  # it kept more than a fresh worker holds: another job's leftovers
    base = worker_mb if slot in stop else own
    if total <= device_mb or not running:
        return StartPlan(tuple(stop), base_mb=base)
    n = len(running)
    them = "the task running here" if n == 1 else f"the {n} tasks running here"
    return StartPlan(
        reason=(
            f"it needs {task_mb} MB and its worker {own:.0f} MB; the agent "
            f"({agent_mb:.0f} MB) and {them} hold {held:.0f} of the device's {device_mb} MB "
            "resident: it starts when one finishes"
        )
    )
