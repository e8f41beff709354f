"""A worker process: runs Python tasks one at a time under the limits the agent asks for.

The agent starts it (in the sandbox) as `python -m fogwheel.node.worker` and talks over
stdin/stdout; the task's own prints go to stderr so they cannot corrupt the pipe. The
function arrives as bytes in the first message that needs it (the worker cannot see the
agent's blob cache), and each task runs in a fresh scratch directory that the agent names.
A task that blows its CPU limit dies with SIGXCPU and the agent reports that; the agent
kills it on wall-time.

What goes back is data the client can decode without trusting this device: the value as a
plain pickle (`safe_pickle.dumps`), and an exception as fields (its type's name, message,
plain `args`, traceback), never as a pickle. Paths that differ between honest nodes (the
scratch directory, where Python is installed) and memory addresses are written the same way
on every node, so that replicas of a raising task agree on every byte the customer sees.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import resource
import sys
import sysconfig
import tempfile
import time
import traceback
from typing import Any

from fogwheel import safe_pickle
from fogwheel.node import wire

MAX_MESSAGE = 10_000  # characters of an exception's message sent back
MAX_TRACEBACK = 50_000  # characters of its traceback (the end, where the error is)
MAX_ARGS = 16
MAX_TYPE_NAME = 1000  # protocol.ErrorInfo.type
_SYSTEM_DIRS = {"", "/", "/usr", "/usr/local", "/opt"}
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")

_functions: dict[str, Any] = {}
_PID = os.getpid()


def _vsz() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _enter(scratch: str) -> None:
    """Make `scratch` the task's working, home and temporary directory."""
    os.chdir(scratch)
    os.environ["HOME"] = os.environ["TMPDIR"] = scratch
    tempfile.tempdir = scratch


def run_one(msg: dict[str, Any]) -> dict[str, Any]:
    import cloudpickle

    limits = msg["limits"]
    if msg.get("cwd"):
        _enter(msg["cwd"])
    fn = _functions.get(msg["fn_sha"])
    if fn is None:
        if msg.get("fn") is None:
            raise LookupError(f"function {msg['fn_sha']} was not sent to this worker")
        fn = cloudpickle.loads(msg["fn"])
        _functions[msg["fn_sha"]] = fn
    args, kwargs = pickle.loads(msg["args"]) if msg["args"] is not None else ((), {})
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    soft_cpu, hard_cpu = resource.getrlimit(resource.RLIMIT_CPU)
    soft_as, hard_as = resource.getrlimit(resource.RLIMIT_AS)
    if limits.get("cpu_s"):
        used = resource.getrusage(resource.RUSAGE_SELF)
        budget = int(used.ru_utime + used.ru_stime + limits["cpu_s"]) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (min(budget, _cap(hard_cpu)), hard_cpu))
    # The memory limit bounds what the task adds to this process's address space.
    mem = _vsz() + int(limits["memory_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (min(mem, _cap(hard_as)), hard_as))
    try:
        value = fn(*args, **kwargs)
        out = {"ok": True, "value": safe_pickle.dumps(value)}
    except MemoryError:
        out = _error("limit", "MemoryError", f"memory limit of {limits['memory_mb']} MB exceeded")
    except BaseException as exc:
        out = exception_report(exc, msg.get("cwd"), skip_frames=1)
    finally:
        _leave_if_forked()
        resource.setrlimit(resource.RLIMIT_AS, (soft_as, hard_as))
        resource.setrlimit(resource.RLIMIT_CPU, (soft_cpu, hard_cpu))
    out["cpu_s"] = time.process_time() - cpu0
    out["wall_s"] = time.perf_counter() - wall0
    return out


def _leave_if_forked() -> None:
    """A process the task forked must not go on to speak the worker's protocol."""
    if os.getpid() != _PID:
        os._exit(0)


def _cap(hard: int) -> int:
    return hard if hard != resource.RLIM_INFINITY else 1 << 62


def _error(kind: str, type_: str, message: str, tb: str = "") -> dict[str, Any]:
    return {
        "ok": False,
        "error": {"kind": kind, "type": type_, "message": message, "traceback": tb},
    }


def exception_report(
    exc: BaseException, scratch: str | None = None, skip_frames: int = 0
) -> dict[str, Any]:
    """The error report of `exc` as plain fields: `type` (`module:qualname`, or the bare name
    of a builtin), `message`, `args` when they are plain scalars, and the traceback without
    the worker's own `skip_frames` frames; node-specific paths and addresses made uniform."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        message = str(exc)
    except Exception:  # a __str__ that raises
        message = f"<{type(exc).__name__} whose message could not be read>"
    exc_args = exc.args
    if isinstance(exc, ModuleNotFoundError):
        message = missing_module(message, exc.name)
        exc_args = (message,)
    out = _error(
        "exception",
        safe_pickle.type_name(type(exc))[:MAX_TYPE_NAME],
        uniform(message, scratch)[:MAX_MESSAGE],
        uniform(text, scratch)[-MAX_TRACEBACK:],
    )
    args = plain_args(exc_args, scratch)
    if args is not None:
        out["error"]["args"] = args
    return out


def missing_module(message: str, name: str | None) -> str:
    """A ModuleNotFoundError's message with what to do about it. The node is not named: the
    replicas of a task must report the same bytes (`fogwheel jobs JOB` shows where it ran)."""
    module = (name or "").split(".")[0] or "it needs"
    return (
        f"{message}: the module {module} is not installed on the node that ran this task: "
        "install it there, or send the code with your function (it travels by value from "
        "your own files), or bring it in a Python environment: Client(env=Env(pip=[...])), "
        "docs/envs.md"
    )


def plain_args(args: Any, scratch: str | None = None) -> list[Any] | None:
    """`args` as a JSON list when each is a short string, a bounded number, a bool or None;
    None otherwise (the client then rebuilds the exception from its message)."""
    if not isinstance(args, tuple) or len(args) > MAX_ARGS:
        return None
    out: list[Any] = []
    for a in args:
        if a is None or isinstance(a, bool):
            out.append(a)
        elif isinstance(a, int) and -(2**63) <= a < 2**63:
            out.append(int(a))
        elif isinstance(a, float) and math.isfinite(a):
            out.append(float(a))
        elif isinstance(a, str) and len(a) <= MAX_MESSAGE:
            out.append(uniform(str(a), scratch))
        else:
            return None
    return out


def uniform(text: str, scratch: str | None = None) -> str:
    """`text` with what differs between honest nodes written one way: the task's scratch
    directory (and its slot's), Python's install paths, and memory addresses."""
    places: list[tuple[str, str]] = []
    if scratch:
        places += [(scratch, "<scratch>"), (os.path.dirname(scratch), "<slot>")]
    for key in ("purelib", "platlib", "stdlib", "platstdlib"):
        path = sysconfig.get_path(key)
        if path:
            places.append((path, f"<{key}>"))
    places += [(sys.prefix, "<prefix>"), (sys.base_prefix, "<prefix>")]
    if os.environ.get("FOGWHEEL_ENV_SITE"):  # a Python environment's dir (node/envs.py)
        places.append((os.environ["FOGWHEEL_ENV_SITE"], "<env>"))
    for path, name in sorted(set(places), key=lambda p: -len(p[0])):
        if path not in _SYSTEM_DIRS:  # "/usr" is the same everywhere, and in much text
            text = text.replace(path, name)
    return _ADDRESS.sub("0x...", text)


def main() -> None:
    # Keep the protocol pipes to ourselves; guest prints go to stderr, guest stdin is empty.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    while True:
        try:
            msg = wire.recv(proto_in)
        except EOFError:
            return
        try:
            result = run_one(msg)
        except BaseException as exc:  # a broken message or an unpicklable value
            _leave_if_forked()
            result = exception_report(exc)
        try:
            wire.send(proto_out, result)
        except pickle.PicklingError as exc:
            wire.send(proto_out, _error("exception", "PicklingError", str(exc)))


if __name__ == "__main__":
    main()
