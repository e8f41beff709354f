"""A slot runs one task at a time in a sandboxed process, under wall, CPU and memory limits.

Python tasks go to a long-lived worker process (one per slot, restarted between jobs so that
one customer's code never shares a process with another's); command tasks run as their own
sandboxed process tree. Every task gets a fresh scratch directory, its only writable place.
The agent reads the function from its blob cache and sends the bytes down the worker's pipe,
so the sandbox never needs to show the worker the agent's data dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from fogwheel.node import wire
from fogwheel.node.sandbox import CANNOT_START, Limits, Sandbox, fogwheel_import_root

KEEP_DIR = "keep"  # a task's kept state (TaskIn.keep_in / keep_out) lives here
OUTPUT_TAIL = 64 * 1024  # bytes of a command's stdout/stderr kept in its result
MAX_MESSAGE = 1 << 31  # a worker's answer larger than this is a broken (or hostile) worker


class WorkerBroke(Exception):
    """The worker's answer was cut short, malformed or too large."""


class Slot:
    def __init__(self, index: int, scratch_root: Path, log_path: Path, sandbox: Sandbox) -> None:
        self.index = index
        self.scratch_root = scratch_root
        self.log_path = log_path
        self.sandbox = sandbox
        self._proc: subprocess.Popen[bytes] | None = None
        self._job: str | None = None  # the tenant (or job) the worker runs for
        self._last_job: int | None = None
        self._home = scratch_root / f"slot-{index}"  # the worker's scratch; a dir per task in it
        self._sent: set[str] = set()  # functions the current worker holds
        self._tasks = 0
        self._command: subprocess.Popen[bytes] | None = None  # the command task running now
        self.aborted = False  # the running task was stopped on purpose (abort)

    def abort(self) -> None:
        """Stop the running task now (the coordinator gave it to another node, or it won
        elsewhere): kill the worker or the command's process group. Any thread may call it."""
        self.aborted = True
        proc = self._command
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        worker = self._proc
        if worker is not None and worker.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.kill()

    # -- python tasks -----------------------------------------------------------------------

    def run_python(
        self,
        job_id: int,
        msg: dict[str, Any],
        wall_s: float,
        inputs: dict[str, Path] | None = None,
        outputs: Sequence[str] = (),
        keep: Path | None = None,
        state_in: Path | None = None,
        state_out: Path | None = None,
        tenant: str = "",
    ) -> dict[str, Any]:
        """Run one task of `job_id`; `msg` names the function's cached file as `fn_path`.

        `inputs` are copied into the task's working directory first; the files named in
        `outputs` that it leaves there are moved under `keep` and listed in the result's
        `files` (name -> path), the caller's to upload and delete. Kept state: the directory
        `state_in`, when given and present, is copied to the task's `keep/`; after a successful
        run the task's `keep/` is moved to `state_out` and its size is the result's `kept`."""
        self.aborted = False
        proc = self._worker_for(job_id, tenant)
        assert proc.stdin is not None and proc.stdout is not None
        wall0 = time.perf_counter()
        deadline = time.monotonic() + wall_s
        self._tasks += 1
        scratch = self._home / f"task-{self._tasks}"
        scratch.mkdir()
        _place_inputs(scratch, inputs or {})
        if state_in is not None and state_in.is_dir():
            shutil.copytree(state_in, scratch / KEEP_DIR)
        self.sandbox.hand_over(scratch)
        sha = msg["fn_sha"]
        out = {"fn_sha": sha, "args": msg["args"], "limits": msg["limits"], "cwd": str(scratch)}
        if sha not in self._sent:
            out["fn"] = Path(msg["fn_path"]).read_bytes()
            self._sent.add(sha)
        try:
            result = self._exchange(proc, out, deadline)
        except TimeoutError:
            self.stop()
            return _error("limit", f"wall-time limit of {wall_s:g} s exceeded; the task was killed")
        except WorkerBroke as e:
            self.stop()
            return _error("crash", f"the worker broke its protocol: {e}")
        else:
            if result is not None and result.get("ok") and outputs:
                files = _take_outputs(scratch, outputs, keep or self.scratch_root)
                if isinstance(files, str):
                    result = _error("exit", files, result.get("wall_s", 0.0))
                else:
                    result["files"] = files
            if result is not None and result.get("ok") and state_out is not None:
                result["kept"] = _keep_state(scratch / KEEP_DIR, state_out)
                if state_in is not None and state_in != state_out:
                    shutil.rmtree(state_in, ignore_errors=True)  # superseded by state_out
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if result is None:
            self._proc = None
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            wall = time.perf_counter() - wall0
            sig = self._signal_of(code)
            if sig == signal.SIGXCPU:
                return _error(
                    "limit", f"CPU limit of {msg['limits'].get('cpu_s')} s exceeded", wall
                )
            if sig == signal.SIGKILL:
                return _error("limit", "the worker was killed (out of memory?)", wall)
            return _error("crash", f"the worker process exited with status {code}", wall)
        if not result.get("ok"):
            self._sent.discard(sha)  # it may have failed to load: send it again next time
        return result

    def _exchange(
        self, proc: subprocess.Popen[bytes], msg: dict[str, Any], deadline: float
    ) -> dict[str, Any] | None:
        """Send `msg` and read the answer by `deadline`; None when the worker died."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            _write_by(proc.stdin, wire.encode(msg), deadline)
            (n,) = wire.HEADER.unpack(_read_by(proc.stdout, wire.HEADER.size, deadline))
            if n > MAX_MESSAGE:
                raise WorkerBroke(f"an answer of {n} bytes")
            body = _read_by(proc.stdout, n, deadline)
        except (EOFError, BrokenPipeError):
            return None
        try:
            answer = wire.decode(body)
        except Exception as e:  # whatever a hostile byte string makes the unpickler raise
            raise WorkerBroke(f"{type(e).__name__}: {e}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            raise WorkerBroke("an answer that is not a result")
        return answer

    def _worker_for(self, job_id: int, tenant: str = "") -> subprocess.Popen[bytes]:
        """The slot's worker for this job: kept across jobs of the same tenant (a customer),
        so that their imports stay warm; a new one for another tenant's job."""
        owner = tenant or f"job-{job_id}"
        if self._proc is not None and (self._job != owner or self._proc.poll() is not None):
            self.stop()
        elif self._proc is not None and job_id != self._last_job and not self._alone():
            self.stop()  # a job left processes behind: the next one starts clean
        self._last_job = job_id
        if self._proc is None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home.mkdir(parents=True)
            self.sandbox.hand_over(self._home)
            env = guest_env(self._home)
            root = fogwheel_import_root()
            if not any(root.is_relative_to(p) for p in {sys.prefix, sys.base_prefix}):
                env["PYTHONPATH"] = str(root)  # fogwheel runs from a source tree
            argv = [sys.executable, "-s", "-P", "-m", "fogwheel.node.worker"]
            # The worker sets memory and CPU limits per task itself (worker.py).
            cmd = self.sandbox.wrap(argv, scratch=self._home, limits=Limits(), env=env)
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
            try:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    bufsize=0,
                    cwd=self._home,
                    start_new_session=True,
                )
            finally:
                log.close()
            assert self._proc.stdin is not None
            os.set_blocking(self._proc.stdin.fileno(), False)
            self._job = owner
            self._sent.clear()
        return self._proc

    def _alone(self) -> bool:
        """Whether the worker runs without leftovers: no process in its sandbox but itself
        (bubblewrap's own processes aside)."""
        import psutil

        assert self._proc is not None
        try:
            kids = psutil.Process(self._proc.pid).children(recursive=True)
            others = [p for p in kids if p.name() != "bwrap"]
        except psutil.Error:
            return False
        return len(others) <= (1 if self.sandbox.confined else 0)

    def stop(self) -> None:
        """Kill the worker; in a sandbox everything it started dies with it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    @property
    def worker_pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _signal_of(self, code: int) -> int | None:
        """The signal that ended a process, from its status (bubblewrap reports 128 + n)."""
        if code < 0:
            return -code
        if self.sandbox.confined and code > 128:
            return code - 128
        return None

    # -- command tasks ----------------------------------------------------------------------

    def run_command(
        self, task_id: int, command: list[str], inputs: dict[str, Path], limits: dict[str, Any]
    ) -> tuple[dict[str, Any], Path]:
        """Run `command` in a fresh scratch dir holding its inputs; returns (result, scratch)."""
        self.aborted = False
        scratch = self.scratch_root / f"task-{task_id}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        _place_inputs(scratch, inputs)
        self.sandbox.hand_over(scratch)
        cmd = self.sandbox.wrap(
            command,
            scratch=scratch,
            limits=Limits(memory_bytes=int(limits["memory_mb"]) << 20, cpu_s=limits.get("cpu_s")),
            env=guest_env(scratch),
        )
        wall0 = time.perf_counter()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # stdout and stderr live outside the scratch dir: the guest cannot swap them for links.
        with (
            tempfile.TemporaryFile(dir=self.scratch_root) as out,
            tempfile.TemporaryFile(dir=self.scratch_root) as err,
        ):
            try:
                proc = subprocess.Popen(
                    cmd,
                    cwd=scratch,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as e:
                return _error("crash", f"cannot start the sandbox: {e}"), scratch
            self._command = proc
            try:
                code = proc.wait(timeout=limits["wall_s"])
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                msg = f"wall-time limit of {limits['wall_s']:g} s exceeded"
                return _error("limit", msg), scratch
            finally:
                self._command = None
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            wall = time.perf_counter() - wall0
            stdout, stderr = _tail(out), _tail(err)
        missing = CANNOT_START.search(stderr) if code == 127 else None
        if missing:
            return _error("exit", missing.group(1), wall), scratch
        value = json.dumps({"returncode": code, "stdout": stdout, "stderr": stderr}).encode()
        if self._signal_of(code) == signal.SIGXCPU and limits.get("cpu_s"):
            res = _error("limit", f"CPU limit of {limits.get('cpu_s')} s exceeded", wall)
        elif code != 0:
            res = _error("exit", f"{command[0]} exited with status {code}", wall)
            res["error"]["traceback"] = stderr
            res["value"] = value
        else:
            res = {"ok": True, "value": value, "wall_s": wall}
        res["cpu_s"] = cpu
        return res, scratch


def _keep_state(src: Path, dst: Path) -> int:
    """Move the task's `keep/` directory (plain files only) to `dst`; its size in bytes."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    size = 0
    if src.is_dir():
        for path in src.rglob("*"):
            if path.is_file() and not path.is_symlink():
                target = dst / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, target)
                size += target.stat().st_size
    return size


def _place_inputs(scratch: Path, inputs: dict[str, Path]) -> None:
    for name, src in inputs.items():
        dst = inside(scratch, name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _take_outputs(scratch: Path, names: Sequence[str], keep: Path) -> dict[str, Path] | str:
    """Move the task's output files out of its scratch dir (before it is removed); a missing
    one is the task's failure, told in the returned message."""
    files: dict[str, Path] = {}
    for name in names:
        path = inside(scratch, name)
        if not path.is_file():
            for p in files.values():
                p.unlink(missing_ok=True)
            return f"the task did not write its output file {name!r}"
        fd, tmp = tempfile.mkstemp(dir=keep, prefix=".out-")
        os.close(fd)
        shutil.move(path, tmp)
        files[name] = Path(tmp)
    return files


def inside(scratch: Path, name: str) -> Path:
    """`scratch / name`, refusing names that would lead out of the scratch directory."""
    path = (scratch / name).resolve()
    if not path.is_relative_to(scratch.resolve()):
        raise ValueError(f"file name {name!r} leads outside the task's directory")
    return path


def guest_env(scratch: Path) -> dict[str, str]:
    """A small, explicit environment: no credentials or tokens of the agent leak through."""
    keep = {k: v for k, v in os.environ.items() if k in {"LANG", "LC_ALL", "TZ"}}
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        **keep,
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
    }


def _write_by(stream: IO[bytes], data: bytes, deadline: float) -> None:
    fd, view = stream.fileno(), memoryview(data)
    while view:
        _wait_for(fd, deadline, write=True)
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue


def _read_by(stream: IO[bytes], n: int, deadline: float) -> bytes:
    fd, chunks = stream.fileno(), []
    while n:
        _wait_for(fd, deadline, write=False)
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("worker pipe closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _wait_for(fd: int, deadline: float, *, write: bool) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    r, w, _ = select.select([] if write else [fd], [fd] if write else [], [], left)
    if not (r or w):
        raise TimeoutError


def _tail(f: IO[bytes]) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - OUTPUT_TAIL))
    return f.read().decode("utf-8", "replace")


def _error(kind: str, message: str, wall: float = 0.0) -> dict[str, Any]:
    return {"ok": False, "error": {"kind": kind, "message": message}, "wall_s": wall, "cpu_s": 0.0}
