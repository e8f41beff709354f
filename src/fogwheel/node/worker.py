"""A worker process: runs Python tasks one at a time under the limits the agent asks for.

The agent starts it (in the sandbox) as `python -m fogwheel.node.worker` and talks over
stdin/stdout; the task's own prints go to stderr so they cannot corrupt the pipe. The
function arrives as bytes in the first message that needs it (the worker cannot see the
agent's blob cache), and each task runs in a fresh scratch directory that the agent names.
A task that blows its CPU limit dies with SIGXCPU and the agent reports that; the agent
kills it on wall-time.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import sys
import tempfile
import time
import traceback
from typing import Any

from fogwheel.node import wire

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
        out = {"ok": True, "value": cloudpickle.dumps(value)}
    except MemoryError:
        out = _error("limit", "MemoryError", f"memory limit of {limits['memory_mb']} MB exceeded")
    except BaseException as exc:
        out = _error("exception", type(exc).__qualname__, str(exc), traceback.format_exc())
        # If the exception will not pickle, its type, message and traceback still travel.
        with contextlib.suppress(Exception):
            out["error"]["exc"] = cloudpickle.dumps(exc)
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
            result = _error("exception", type(exc).__qualname__, str(exc), traceback.format_exc())
        try:
            wire.send(proto_out, result)
        except pickle.PicklingError as exc:
            wire.send(proto_out, _error("exception", "PicklingError", str(exc)))


if __name__ == "__main__":
    main()
