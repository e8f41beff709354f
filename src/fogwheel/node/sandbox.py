"""Where guest code runs: bubblewrap with no network, a read-only system and rlimits.

A `Sandbox` turns a command line into one that runs it confined. `Bubblewrap` gives the
guest fresh PID, network (loopback only), IPC and UTS namespaces; the host's file system
read-only, with /home, /root, /tmp, /run and the agent's data dir (credential, blob cache)
hidden behind empty read-only mounts; /sys hidden too (it names the host's network
interfaces), but for /sys/devices/system/cpu; one writable scratch directory; a seccomp filter
(seccomp_filter.py) that refuses new namespaces, mounts, ptrace, keyrings, BPF and the like;
and, set by a small launcher inside, rlimits on address space, CPU, file size and process
count. The slot adds a control group and a size-limited scratch where the host allows them
(slots.py, cgroups.py, scratch.py).

The process count needs care: RLIMIT_NPROC counts a user's processes and is never enforced
for root. An agent running as a normal user gets a user namespace from bubblewrap, in which
the count is per sandbox. An agent running as root gives each slot's guest a uid of its own:
bubblewrap runs privileged with nothing but CAP_SETUID/CAP_SETGID, and the launcher drops to
that uid before it runs guest code. `NoSandbox` (`--unsafe-no-sandbox`) keeps the rlimits
but confines nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import fogwheel
from fogwheel.node import imageroot, safefs
from fogwheel.node.seccomp_filter import compile_filter, filter_fd

log = logging.getLogger("fogwheel.node")

MAX_FILE_BYTES = 1 << 30  # RLIMIT_FSIZE: no file a guest writes grows past 1 GiB
MAX_PROCESSES = 256  # RLIMIT_NPROC: processes and threads in one sandbox
SHM_BYTES = 64 << 20  # a small private /dev/shm (POSIX semaphores, multiprocessing locks)
HIDDEN = ("/home", "/root", "/tmp", "/var/tmp", "/run", "/mnt", "/media", "/srv", "/sys")
SYS_SHOWN = ("/sys/devices/system/cpu",)  # core counts for libraries that look there
GUEST_UID_BASE = 1_900_000_000  # root agents run guests as uids from here: no real account's

# Runs first inside the sandbox as `python -I -S -c LAUNCHER SPEC`: applies the rlimits,
# drops to the guest uid when asked, enters the scratch dir as that uid, restores the signals
# Python ignores, then execs the guest with its environment. A missing program: exit status
# 127 and a marked line on stderr.
LAUNCHER = """\
import json, os, resource, signal, sys
spec = json.loads(sys.argv[1])
for name, want in spec["rlimits"].items():
    kind = getattr(resource, name)
    hard = resource.getrlimit(kind)[1]
    cap = (lambda v: v) if hard == resource.RLIM_INFINITY else (lambda v: min(v, hard))
    resource.setrlimit(kind, (cap(want[0]), cap(want[1])))
if spec["uid"] is not None:
    os.setgroups([])
    os.setgid(spec["uid"])
    os.setuid(spec["uid"])
os.chdir(spec["cwd"])
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
argv = spec["argv"]
try:
    os.execvpe(argv[0], argv, spec["env"])
except OSError as e:
    sys.stderr.write("fogwheel-sandbox: cannot start %r: %s\\n" % (argv[0], e.strerror))
    sys.exit(127)
"""
CANNOT_START = re.compile(r"^fogwheel-sandbox: (cannot start .*)$", re.MULTILINE)


@dataclass(frozen=True)
class Limits:
    """What one sandboxed process tree may use; None leaves that limit as it is."""

    memory_bytes: int | None = None  # RLIMIT_AS of each process
    cpu_s: float | None = None  # RLIMIT_CPU: SIGXCPU after cpu_s + 1 s, SIGKILL a second later
    file_bytes: int = MAX_FILE_BYTES  # RLIMIT_FSIZE
    processes: int = MAX_PROCESSES  # RLIMIT_NPROC, applied only where it counts per sandbox

    def rlimits(self, *, count_processes: bool) -> dict[str, tuple[int, int]]:
        out = {"RLIMIT_FSIZE": (self.file_bytes, self.file_bytes), "RLIMIT_CORE": (0, 0)}
        if self.memory_bytes is not None:
            out["RLIMIT_AS"] = (self.memory_bytes, self.memory_bytes)
        if self.cpu_s:
            out["RLIMIT_CPU"] = (int(self.cpu_s) + 1, int(self.cpu_s) + 2)
        if count_processes:
            out["RLIMIT_NPROC"] = (self.processes, self.processes)
        return out


class Sandbox(ABC):
    """Turns a guest's command line into one that runs it confined (or says it does not)."""

    name: str
    confined: bool

    @abstractmethod
    def wrap(
        self,
        argv: Sequence[str],
        *,
        scratch: Path,
        limits: Limits,
        env: dict[str, str],
        seccomp_fd: int | None = None,
    ) -> list[str]:
        """The command line that runs `argv` in `scratch` (its only writable place);
        `seccomp_fd` (from `filter_fd`) must be passed on to the child."""

    @contextlib.contextmanager
    def filter_fd(self) -> Iterator[int | None]:
        """A descriptor holding the syscall filter for one sandbox start, or None."""
        yield None

    def for_slot(self, index: int, private: Path) -> Sandbox:
        """This sandbox for one slot of an agent whose data dir `private` guests must not see."""
        return self

    def hand_over(self, path: Path) -> None:
        """Let the guest write in `path` (a fresh scratch dir and what the agent put in it)."""
        return None

    def in_image(self, root: Path) -> Sandbox:
        """This sandbox with an unpacked program image (node/images.py) as the guest's `/`."""
        raise ValueError("a program image needs bubblewrap: this node runs no sandbox")

    def showing(self, paths: Sequence[Path]) -> Sandbox:
        """This sandbox with `paths` (host directories) shown to guests read-only."""
        return self

    def describe(self) -> str:
        return self.name


def _launcher(
    argv: Sequence[str],
    *,
    scratch: Path,
    env: dict[str, str],
    rlimits: dict[str, tuple[int, int]],
    uid: int | None,
    python: Sequence[str] = (),
) -> list[str]:
    spec = {"argv": list(argv), "cwd": str(scratch), "env": env, "rlimits": rlimits, "uid": uid}
    return [*(python or [sys.executable]), "-I", "-S", "-c", LAUNCHER, json.dumps(spec)]


@dataclass(frozen=True)
class NoSandbox(Sandbox):
    """Guest code runs as the agent's user with rlimits only: `--unsafe-no-sandbox`."""

    name = "none"
    confined = False

    def wrap(
        self,
        argv: Sequence[str],
        *,
        scratch: Path,
        limits: Limits,
        env: dict[str, str],
        seccomp_fd: int | None = None,
    ) -> list[str]:
        # RLIMIT_NPROC would count every process of the agent's user here, so it is left off.
        rlimits = limits.rlimits(count_processes=False)
        return _launcher(argv, scratch=scratch, env=env, rlimits=rlimits, uid=None)

    def describe(self) -> str:
        return "no sandbox: guest code can use the network and read what this user can read"


@dataclass(frozen=True)
class Bubblewrap(Sandbox):
    """bubblewrap (https://github.com/containers/bubblewrap), version 0.5 or newer."""

    program: str
    version: tuple[int, ...] = (0, 8, 0)
    private: tuple[Path, ...] = ()  # host paths to hide besides HIDDEN (the agent's data dir)
    uid: int | None = None  # root agents: the unprivileged uid guests of this slot run as
    seccomp: bytes | None = None  # the compiled syscall filter (None: none could be built)
    shown: tuple[Path, ...] = ()  # host dirs guests see read-only (a Python env: node/envs.py)
    image: Path | None = None  # an unpacked program image as `/` (node/imageroot.py)

    name = "bubblewrap"
    confined = True

    def for_slot(self, index: int, private: Path) -> Bubblewrap:
        return replace(self, private=(private.absolute(),), uid=guest_uid(private, index))

    def in_image(self, root: Path) -> Bubblewrap:
        return replace(self, image=root)

    def showing(self, paths: Sequence[Path]) -> Bubblewrap:
        return replace(self, shown=tuple(Path(p).absolute() for p in paths))

    def hand_over(self, path: Path) -> None:
        if self.uid is None:
            return
        safefs.chown_tree(path, self.uid)  # never through a link a guest planted

    @contextlib.contextmanager
    def filter_fd(self) -> Iterator[int | None]:
        if self.seccomp is None:
            yield None
            return
        fd = filter_fd(self.seccomp)
        try:
            yield fd
        finally:
            os.close(fd)

    def describe(self) -> str:
        who = "under a uid of their own per slot" if os.geteuid() == 0 else "in a user namespace"
        version = ".".join(map(str, self.version))
        seccomp = "a seccomp filter" if self.seccomp else "NO seccomp filter (no libseccomp)"
        return (
            f"bubblewrap {version} ({self.program}): no network, read-only system, no /sys, "
            f"a pid namespace per sandbox, {seccomp}, guests {who}"
        )

    def wrap(
        self,
        argv: Sequence[str],
        *,
        scratch: Path,
        limits: Limits,
        env: dict[str, str],
        seccomp_fd: int | None = None,
    ) -> list[str]:
        if self.uid is None and os.geteuid() == 0:
            raise ValueError("a root agent's guests need a uid of their own: use for_slot()")
        scratch = scratch.absolute()
        args = [self.program, "--die-with-parent", "--new-session"]
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        args += ["--unshare-cgroup-try"]
        if os.geteuid() == 0:
            args += ["--cap-drop", "ALL"]  # bubblewrap run by root keeps every capability else
        if self.uid is None:
            args += ["--unshare-user"]
            if self.version >= (0, 8):
                args += ["--disable-userns"]
        else:
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]  # to drop to uid
        python: list[str] = []
        root = self.image
        if root is None:
            args += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
        else:  # a program image as `/`, the scratch dir at TASK_DIR (node/imageroot.py)
            runtime = imageroot.host_runtime()
            if runtime is None:
                raise ValueError("this node cannot find its Python's loader: no images here")
            args += imageroot.image_mounts(root, scratch, runtime)
            args += ["--proc", "/proc", "--dev", "/dev"]
            here = str(scratch)  # $HOME and $TMPDIR name the scratch dir as the guest sees it
            env = {k: imageroot.TASK_DIR if _abs(v) == here else v for k, v in env.items()}
            python, scratch = runtime.argv(), Path(imageroot.TASK_DIR)
        args += ["--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm"]
        if root is None:
            args += _mounts(
                hidden=[Path(p) for p in HIDDEN] + list(self.private),
                exposed=runtime_paths()
                + [Path(p) for p in SYS_SHOWN if os.path.isdir(p)]
                + list(self.shown),
                scratch=scratch,
            )
        else:
            args += ["--remount-ro", "/"]
        args += ["--remount-ro", "/dev", "--clearenv"]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        args += ["--"]
        rlimits = limits.rlimits(count_processes=True)
        return args + _launcher(
            argv, scratch=scratch, env=env, rlimits=rlimits, uid=self.uid, python=python
        )


def _abs(value: str) -> str:
    return os.path.abspath(value) if value.startswith(("/", ".")) or os.sep in value else value


def _mounts(*, hidden: Iterable[Path], exposed: Iterable[Path], scratch: Path) -> list[str]:
    """Empty read-only mounts over `hidden`, with `exposed` (read-only) and `scratch` inside."""
    roots = _outermost(p for p in hidden if p.is_dir() and not p.is_symlink())
    created: set[Path] = set()
    args: list[str] = []

    def parents_of(dest: Path) -> None:
        # bubblewrap makes missing mount points 0700; guests must be able to pass through.
        for parent in reversed(dest.parents):
            inside = any(parent.is_relative_to(r) and parent != r for r in roots)
            if inside and parent not in created:
                args.extend(["--perms", "0755", "--dir", str(parent)])
                created.add(parent)

    for root in roots:
        args += ["--perms", "0755", "--tmpfs", str(root)]
    for path in _outermost(p for p in exposed if any(p.is_relative_to(r) for r in roots)):
        parents_of(path)
        args += ["--ro-bind", str(path), str(path)]
    parents_of(scratch)
    args += ["--bind", str(scratch), str(scratch)]
    for root in roots:
        args += ["--remount-ro", str(root)]
    return args


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """The paths that are not inside another of them, shallowest first."""
    out: list[Path] = []
    for p in sorted({Path(os.path.abspath(p)) for p in paths}, key=lambda p: len(p.parts)):
        if not any(p.is_relative_to(q) for q in out):
            out.append(p)
    return out


def runtime_paths() -> list[Path]:
    """What the worker needs to see: the interpreter, its libraries and fogwheel itself."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.add(str(fogwheel_import_root()))
    paths |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    out = set()
    for p in paths:
        if p and os.path.isdir(p):
            out.add(Path(os.path.abspath(p)))
            out.add(Path(os.path.realpath(p)))
    return sorted(out)


def fogwheel_import_root() -> Path:
    """The directory that holds the `fogwheel` package (an editable install's src/)."""
    return Path(fogwheel.__file__).resolve().parent.parent


def guest_uid(private: Path, index: int) -> int | None:
    """The uid a root agent's slot runs guests as (None for a normal user: it keeps its own).

    Each node (told apart by its data dir) and slot gets its own, so that one slot's fork
    bomb uses up only its own RLIMIT_NPROC.
    """
    if os.geteuid() != 0:
        return None
    node = zlib.crc32(str(private.absolute()).encode()) % 100_000
    return GUEST_UID_BASE + node * 1024 + index % 1024


# -- detection ------------------------------------------------------------------------------

_detected: dict[str, Bubblewrap | None] = {}


def detect(program: str | None = None) -> Bubblewrap | None:
    """bubblewrap if it runs `true` in the sandbox the agent would use, else None; cached.

    `program` defaults to $FOGWHEEL_BWRAP, then `bwrap` on PATH.
    """
    name = program or os.environ.get("FOGWHEEL_BWRAP") or "bwrap"
    path = shutil.which(name)
    if path is None:
        log.warning("no bubblewrap: %r is not an executable program", name)
        return None
    if path not in _detected:
        _detected[path] = _probe(path)
    return _detected[path]


def _probe(path: str) -> Bubblewrap | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out.stdout)
        version = tuple(int(x) for x in found.groups(default="0")) if found else (0,)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("bubblewrap at %s does not run: %s", path, e)
        return None
    seccomp = compile_filter()
    res = _try(Bubblewrap(path, version, seccomp=seccomp))
    if res is not None and res.returncode != 0 and seccomp is not None:
        log.warning(
            "bubblewrap at %s refuses the seccomp filter (%s): guests run without one",
            path,
            res.stderr.strip()[-300:],
        )
        seccomp = None
        res = _try(Bubblewrap(path, version))
    if res is None:
        return None
    if res.returncode != 0:
        log.warning(
            "bubblewrap at %s does not work here (exit status %d): %s",
            path,
            res.returncode,
            res.stderr.strip()[-500:],
        )
        return None
    return Bubblewrap(path, version, seccomp=seccomp)


def _try(sandbox: Bubblewrap) -> subprocess.CompletedProcess[str] | None:
    """Run `true` in `sandbox` as a slot would; None when bubblewrap cannot even start."""
    with tempfile.TemporaryDirectory(prefix="fogwheel-probe-") as tmp:
        scratch = Path(tmp) / "scratch"
        scratch.mkdir()
        slot = sandbox.for_slot(0, Path(tmp))
        slot.hand_over(scratch)
        with slot.filter_fd() as fd:
            argv = slot.wrap(
                ["true"],
                scratch=scratch,
                limits=Limits(),
                env={"PATH": "/usr/bin:/bin"},
                seccomp_fd=fd,
            )
            try:
                return subprocess.run(
                    argv,
                    capture_output=True,
                    text=True,
                    timeout=30,
                    cwd=scratch,
                    pass_fds=() if fd is None else (fd,),
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                log.warning("bubblewrap at %s does not work here: %s", sandbox.program, e)
                return None
