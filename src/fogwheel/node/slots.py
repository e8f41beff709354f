"""A slot runs one task at a time in a separate process, under wall, CPU and memory limits.

Python tasks go to a long-lived worker process (one per slot, restarted between jobs so that
one customer's code never shares a process with another's); command tasks run as their own
child process in a scratch directory.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fogwheel.node import wire

OUTPUT_TAIL = 64 * 1024  # bytes of a command's stdout/stderr kept in its result


class Slot:
    def __init__(self, index: int, scratch_root: Path, log_path: Path) -> None:
        self.index = index
        self.scratch_root = scratch_root
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._job: int | None = None

    # -- python tasks -----------------------------------------------------------------------

    def run_python(self, job_id: int, msg: dict[str, Any], wall_s: float) -> dict[str, Any]:
        proc = self._worker_for(job_id)
        assert proc.stdin is not None and proc.stdout is not None
        wall0 = time.perf_counter()
        try:
            wire.send(proc.stdin, msg)
        except (BrokenPipeError, OSError):
            self.stop()
            return _error("crash", "the worker process died before the task started")
        ready, _, _ = select.select([proc.stdout], [], [], wall_s)
        if not ready:
            self.stop()
            return _error("limit", f"wall-time limit of {wall_s:g} s exceeded; the task was killed")
        try:
            result: dict[str, Any] | None = wire.recv(proc.stdout)
        except (EOFError, OSError):
            result = None
        if result is None:
            code = proc.wait()
            self._proc = None
            wall = time.perf_counter() - wall0
            if code == -signal.SIGXCPU:
                return _error(
                    "limit", f"CPU limit of {msg['limits'].get('cpu_s')} s exceeded", wall
                )
            if code == -signal.SIGKILL:
                return _error("limit", "the worker was killed (out of memory?)", wall)
            return _error("crash", f"the worker process exited with status {code}", wall)
        return result

    def _worker_for(self, job_id: int) -> subprocess.Popen[bytes]:
        if self._proc is not None and (self._job != job_id or self._proc.poll() is not None):
            self.stop()
        if self._proc is None:
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "fogwheel.node.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                bufsize=0,
                cwd=self.scratch_root,
                start_new_session=True,
            )
            log.close()
            self._job = job_id
        return self._proc

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    @property
    def worker_pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- command tasks ----------------------------------------------------------------------

    def run_command(
        self, task_id: int, command: list[str], inputs: dict[str, Path], limits: dict[str, Any]
    ) -> tuple[dict[str, Any], Path]:
        """Run `command` in a fresh scratch dir holding its inputs; returns (result, scratch)."""
        scratch = self.scratch_root / f"task-{task_id}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        for name, src in inputs.items():
            dst = inside(scratch, name)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        out_path, err_path = scratch / ".stdout", scratch / ".stderr"
        wall0 = time.perf_counter()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(
                    command,
                    cwd=scratch,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    preexec_fn=_limiter(limits),
                    start_new_session=True,
                    env=_guest_env(scratch),
                )
        except (FileNotFoundError, PermissionError) as e:
            return _error("exit", f"cannot start {command[0]!r}: {e.strerror}"), scratch
        try:
            code = proc.wait(timeout=limits["wall_s"])
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return _error("limit", f"wall-time limit of {limits['wall_s']:g} s exceeded"), scratch
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        wall = time.perf_counter() - wall0
        stdout, stderr = _tail(out_path), _tail(err_path)
        value = json.dumps({"returncode": code, "stdout": stdout, "stderr": stderr}).encode()
        if code == -signal.SIGXCPU:
            res = _error("limit", f"CPU limit of {limits.get('cpu_s')} s exceeded", wall)
        elif code != 0:
            res = _error("exit", f"{command[0]} exited with status {code}", wall)
            res["error"]["traceback"] = stderr
            res["value"] = value
        else:
            res = {"ok": True, "value": value, "wall_s": wall}
        res["cpu_s"] = cpu
        return res, scratch


def inside(scratch: Path, name: str) -> Path:
    """`scratch / name`, refusing names that would lead out of the scratch directory."""
    path = (scratch / name).resolve()
    if not path.is_relative_to(scratch.resolve()):
        raise ValueError(f"file name {name!r} leads outside the task's directory")
    return path


def _limiter(limits: dict[str, Any]) -> Any:
    mem = int(limits["memory_mb"]) * 1024 * 1024
    cpu = limits.get("cpu_s")

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        if cpu:
            resource.setrlimit(resource.RLIMIT_CPU, (int(cpu) + 1, int(cpu) + 2))

    return apply


def _guest_env(scratch: Path) -> dict[str, str]:
    """A small, explicit environment: no credentials or tokens of the agent leak through."""
    keep = {k: v for k, v in os.environ.items() if k in {"PATH", "LANG", "LC_ALL", "TZ"}}
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        **keep,
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
    }


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - OUTPUT_TAIL))
        return f.read().decode("utf-8", "replace")


def _error(kind: str, message: str, wall: float = 0.0) -> dict[str, Any]:
    return {"ok": False, "error": {"kind": kind, "message": message}, "wall_s": wall, "cpu_s": 0.0}
