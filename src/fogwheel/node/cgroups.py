"""Control groups for slots: memory, process count and CPU for a whole process tree.

Per-process rlimits let four processes of 200 MB each live under a 256 MB limit; a control
group counts them together. Each slot gets its own groups (one for its Python worker, one for
its command tasks), made under the agent's own group so that the owner's limits on the agent
still hold. A process is put in a group before it runs anything (`enter`: a tiny shell that
writes its pid to the group and then execs the sandbox), so all its descendants are in it too,
and `kill` ends every one of them (cgroup.kill on v2; freeze, kill and thaw on v1).

`detect()` finds cgroup v2 (memory and pids delegated to the agent's group) or v1 (the memory
and pids hierarchies writable), in that order; None where neither works, and the agent says so
at start and keeps to rlimits.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fogwheel.node")

V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")
CPU_PERIOD_US = 100_000
# Writes its own pid to each file named before `--`, then execs the rest: the sandbox starts
# inside the group, and everything it starts stays there.
JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
CANNOT_JOIN = 125


@dataclass(frozen=True)
class Hierarchy:
    """Where this agent's groups go: the agent's own group in each controller it can use."""

    version: int  # 1 or 2
    roots: dict[str, Path]  # controller -> the agent's group directory ("unified" on v2)

    def describe(self) -> str:
        names = sorted(k for k in self.roots if k != "unified")
        if self.version == 2:
            return "cgroup v2 (memory.max, pids.max, cpu.max per slot)"
        return f"cgroup v1 ({', '.join(names)} per slot)"

    def sweep(self) -> int:
        """Kill and remove the groups of agents that died without removing theirs (killed
        with SIGKILL, say); how many were removed."""
        removed = 0
        for root in self.roots.values():
            for path in root.glob("fogwheel-*-slot*"):
                parts = path.name.split("-")  # fogwheel, node, pid, start, slotN, purpose
                if len(parts) != 6 or not parts[2].isdigit():
                    continue
                if _process_tag(int(parts[2])) == f"{parts[2]}-{parts[3]}":
                    continue  # its agent lives
                _kill(_procs(path))
                with contextlib.suppress(OSError):
                    if not _procs(path):
                        path.rmdir()
                        removed += 1
        return removed

    def group(self, name: str) -> SlotGroup:
        """A group called `name` (made now, emptied of any process a dead agent left)."""
        paths = {c: root / name for c, root in self.roots.items()}
        group = SlotGroup(self.version, paths)
        for p in paths.values():
            p.mkdir(exist_ok=True)
        group.kill()
        return group


@dataclass(frozen=True)
class SlotGroup:
    version: int
    paths: dict[str, Path]

    def _file(self, controller: str, name: str) -> Path | None:
        root = self.paths.get("unified" if self.version == 2 else controller)
        return root / name if root is not None else None

    def _write(self, controller: str, name: str, value: str) -> bool:
        path = self._file(controller, name)
        if path is None:
            return False
        try:
            path.write_text(value)
            return True
        except OSError as e:
            log.warning("cannot write %s to %s: %s", value, path, e)
            return False

    def _read(self, controller: str, name: str) -> str:
        path = self._file(controller, name)
        if path is None:
            return ""
        try:
            return path.read_text()
        except OSError:
            return ""

    def enter(self, argv: list[str]) -> list[str]:
        """`argv`, started inside this group."""
        procs = sorted({str(p / "cgroup.procs") for p in self.paths.values()})
        return ["/bin/sh", "-c", JOIN, "fogwheel-cgroup", *procs, "--", *argv]

    def limit(self, *, memory_bytes: int | None, processes: int, cores: float) -> None:
        """Bound what the group may use; memory None: no limit."""
        if self.version == 2:
            self._write("memory", "memory.max", str(memory_bytes or "max"))
            self._write("memory", "memory.swap.max", "0")
            self._write("pids", "pids.max", str(processes))
            self._write("cpu", "cpu.max", f"{int(cores * CPU_PERIOD_US)} {CPU_PERIOD_US}")
            return
        swap = self._file("memory", "memory.memsw.limit_in_bytes")  # absent: no swap accounting
        has_swap = swap is not None and swap.exists()
        if has_swap:
            self._write("memory", "memory.memsw.limit_in_bytes", "-1")  # never below the limit
        self._write("memory", "memory.limit_in_bytes", str(memory_bytes or -1))
        if has_swap and memory_bytes:
            self._write("memory", "memory.memsw.limit_in_bytes", str(memory_bytes))  # no swap
        self._write("pids", "pids.max", str(processes))
        if "cpu" in self.paths:
            self._write("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US))
            self._write("cpu", "cpu.cfs_quota_us", str(int(cores * CPU_PERIOD_US)))

    def memory_used(self) -> int:
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        text = self._read("memory", name).strip()
        return int(text) if text.isdigit() else 0

    def oom_kills(self) -> int:
        """How many processes the kernel killed for the group's memory limit, so far."""
        text = self._read("memory", "memory.events" if self.version == 2 else "memory.oom_control")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def pids(self) -> set[int]:
        controller = "unified" if self.version == 2 else "pids"
        root = self.paths.get(controller) or next(iter(self.paths.values()))
        try:
            return {int(x) for x in (root / "cgroup.procs").read_text().split()}
        except (OSError, ValueError):
            return set()

    def kill(self, timeout: float = 10.0) -> bool:
        """SIGKILL every process in the group and wait until it is empty; whether it is."""
        deadline = time.monotonic() + timeout
        if not (self.version == 2 and self._write("unified", "cgroup.kill", "1")):
            # v1: frozen, nothing can fork between our reading the list and the kill
            frozen = "freezer" in self.paths and self._write("freezer", "freezer.state", "FROZEN")
            _kill(self.pids())
            if frozen:
                self._write("freezer", "freezer.state", "THAWED")
        while pids := self.pids():
            if time.monotonic() > deadline:
                log.warning("%d processes survive in %s", len(pids), self.paths)
                return False
            _kill(pids)
            time.sleep(0.005)
        return True

    def remove(self) -> None:
        self.kill()
        for p in self.paths.values():
            with contextlib.suppress(OSError):
                p.rmdir()


def _procs(path: Path) -> set[int]:
    try:
        return {int(x) for x in (path / "cgroup.procs").read_text().split()}
    except (OSError, ValueError):
        return set()


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def group_name(data_dir: Path, slot: int, purpose: str) -> str:
    """A name that tells agents (by data dir and by process: pid and start time) and slots
    apart, so that `sweep` can tell the groups of an agent that died from a live one's."""
    node = zlib.crc32(str(data_dir.absolute()).encode())
    return f"fogwheel-{node:08x}-{_process_tag(os.getpid())}-slot{slot}-{purpose}"


def _process_tag(pid: int) -> str:
    """pid and start time (clock ticks since boot): pids are reused, the pair is not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return f"{pid}-gone"
    return f"{pid}-{start}"


def detect() -> Hierarchy | None:
    """Where this agent can make slot groups (v2 first, then v1); None where it cannot."""
    mounts = _cgroup_mounts()
    own = _own_groups()
    for finder in (_v2, _v1):
        try:
            found = finder(mounts, own)
        except OSError as e:
            log.debug("cgroups: %s", e)
            found = None
        if found is not None:
            return found
    return None


def _cgroup_mounts() -> list[tuple[str, Path, set[str]]]:
    """(fstype, mount point, super options) of each cgroup mount, from /proc/self/mountinfo."""
    out = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3 or not rfields[0].startswith("cgroup"):
                continue
            if "rw" not in fields[5].split(","):
                continue
            out.append((rfields[0], Path(fields[4]), set(rfields[2].split(","))))
    return out


def _own_groups() -> dict[str, str]:
    """controller -> this process's group path ("" for cgroup v2), from /proc/self/cgroup."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def _v2(mounts: list[tuple[str, Path, set[str]]], own: dict[str, str]) -> Hierarchy | None:
    for fstype, point, _ in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        base = point / own[""].lstrip("/")
        available = set((base / "cgroup.controllers").read_text().split())
        if not {"memory", "pids"} <= available:
            continue
        wanted = [c for c in ("memory", "pids", "cpu") if c in available]
        enabled = set((base / "cgroup.subtree_control").read_text().split())
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _enable(base, missing)
        probe = base / f"fogwheel-probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        try:
            (probe / "pids.max").write_text("64")
        finally:
            probe.rmdir()
        return Hierarchy(2, {"unified": base})
    return None


def _enable(base: Path, controllers: list[str]) -> None:
    """Delegate `controllers` to `base`'s children. A group that holds processes cannot (the
    "no internal processes" rule): when the agent is alone in its group (a systemd service with
    Delegate=yes, say), it moves itself into a leaf `fogwheel-agent` first; OSError else."""
    want = " ".join("+" + c for c in controllers)
    try:
        (base / "cgroup.subtree_control").write_text(want)
        return
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
    others = {int(x) for x in (base / "cgroup.procs").read_text().split()} - {os.getpid()}
    if others:
        raise OSError(errno.EBUSY, f"{base} holds other processes: cannot delegate to slots")
    leaf = base / "fogwheel-agent"
    leaf.mkdir(exist_ok=True)
    (leaf / "cgroup.procs").write_text(str(os.getpid()))
    (base / "cgroup.subtree_control").write_text(want)


def _v1(mounts: list[tuple[str, Path, set[str]]], own: dict[str, str]) -> Hierarchy | None:
    roots: dict[str, Path] = {}
    for fstype, point, options in mounts:
        if fstype != "cgroup":
            continue
        for c in V1_CONTROLLERS:
            if c in options and c in own and c not in roots:
                roots[c] = point / own[c].lstrip("/")
    if not {"memory", "pids"} <= set(roots):
        return None
    usable: dict[str, Path] = {}
    probe_name = f"fogwheel-probe-{os.getpid()}"
    for c, root in roots.items():
        probe = root / probe_name
        try:
            probe.mkdir(exist_ok=True)
            (probe / "cgroup.procs").stat()
            probe.rmdir()
            usable[c] = root
        except OSError:
            if c in ("memory", "pids"):
                return None
    return Hierarchy(1, usable)
