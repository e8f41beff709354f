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
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fogwheel.core import memfit
from fogwheel.node import safefs, wire
from fogwheel.node.cgroups import CANNOT_JOIN, Hierarchy, SlotGroup, group_name
from fogwheel.node.sandbox import (
    CANNOT_START,
    MAX_FILE_BYTES,
    MAX_PROCESSES,
    Limits,
    Sandbox,
    fogwheel_import_root,
)
from fogwheel.node.scratch import is_full, is_no_space, mount_tmpfs, unmount, used_bytes

KEEP_DIR = "keep"  # a task's kept state (TaskIn.keep_in / keep_out) lives here
OUTPUT_TAIL = 64 * 1024  # bytes of a command's stdout/stderr kept in its result
MAX_MESSAGE = 1 << 31  # a worker's answer larger than this is a broken (or hostile) worker
DEFAULT_KEEP_MB = 1024  # kept state one node holds for all jobs (--keep-mb)


class WorkerBroke(Exception):
    """The worker's answer was cut short, malformed or too large."""


@dataclass(frozen=True)
class Protections:
    """What confines a slot's guests beyond the sandbox, as detected at start."""

    groups: Hierarchy | None = None  # a control group per slot (cgroups.py)
    scratch_bytes: int | None = None  # a tmpfs of this size as each slot's scratch (scratch.py)
    keep_bytes: int = DEFAULT_KEEP_MB << 20  # kept state one task may leave
    tag: Path = Path(".")  # tells this agent's groups from another's (its data dir)


class Slot:
    def __init__(
        self,
        index: int,
        scratch_root: Path,
        log_path: Path,
        sandbox: Sandbox,
        protections: Protections | None = None,
    ) -> None:
        self.index = index
        self.scratch_root = scratch_root
        self.log_path = log_path
        self.sandbox = sandbox
        self.protections = protections or Protections()
        self._proc: subprocess.Popen[bytes] | None = None
        self._job: str | None = None  # the tenant (or job) the worker runs for
        self._last_job: int | None = None
        self._home = scratch_root / f"slot-{index}"  # the worker's scratch; a dir per task in it
        self._sent: set[str] = set()  # functions the current worker holds
        self._tasks = 0
        self._command: subprocess.Popen[bytes] | None = None  # the command task running now
        self._allowed: set[int] = set()  # the worker and the sandbox processes above it
        self._seen: list[Any] = []  # processes of the worker's tree, to wait for when killed
        self.aborted = False  # the running task was stopped on purpose (abort)
        groups = self.protections.groups
        tag = self.protections.tag
        self._wgroup = groups.group(group_name(tag, index, "worker")) if groups else None
        self._cgroup = groups.group(group_name(tag, index, "command")) if groups else None

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
        env_site: Path | None = None,
    ) -> dict[str, Any]:
        """Run one task of `job_id`; `msg` names the function's cached file as `fn_path`.
        `env_site`: a Python environment's directory (node/envs.py) the worker imports from
        first, shown to it read-only.

        `inputs` are copied into the task's working directory first; the files named in
        `outputs` that it leaves there are copied under `keep` and listed in the result's
        `files` (name -> path), the caller's to upload and delete. Kept state: the directory
        `state_in`, when given and present, is copied to the task's `keep/`; after a successful
        run the task's `keep/` is copied to `state_out` and its size is the result's `kept`.

        Before anything is read back, every process the task left is killed (and the worker
        with them: a worker that left a process behind is never used again); files are read
        through descriptors that no link can redirect (safefs.py)."""
        self.aborted = False
        proc = self._worker_for(job_id, tenant, env_site)
        assert proc.stdin is not None and proc.stdout is not None
        wall0 = time.perf_counter()
        deadline = time.monotonic() + wall_s
        self._tasks += 1
        name = f"task-{self._tasks}-{secrets.token_hex(4)}"  # not guessable by a leftover
        home_fd = os.open(self._home, safefs.DIR_FLAGS)
        try:
            os.mkdir(name, 0o755, dir_fd=home_fd)
            scratch_fd = os.open(name, safefs.DIR_FLAGS, dir_fd=home_fd)
        finally:
            os.close(home_fd)
        scratch = self._home / name
        try:
            return self._run_python_in(
                proc, scratch, scratch_fd, job_id, msg, wall_s, wall0, deadline,
                inputs or {}, outputs, keep or self.scratch_root, state_in, state_out,
            )  # fmt: skip
        finally:
            os.close(scratch_fd)
            shutil.rmtree(scratch, ignore_errors=True)

    def _run_python_in(
        self,
        proc: subprocess.Popen[bytes],
        scratch: Path,
        scratch_fd: int,
        job_id: int,
        msg: dict[str, Any],
        wall_s: float,
        wall0: float,
        deadline: float,
        inputs: dict[str, Path],
        outputs: Sequence[str],
        keep: Path,
        state_in: Path | None,
        state_out: Path | None,
    ) -> dict[str, Any]:
        placed = _place_inputs(scratch_fd, inputs, state_in, self._quota_mb())
        if placed is not None:
            return placed
        self.sandbox.hand_over(scratch)
        sha = msg["fn_sha"]
        out = {"fn_sha": sha, "args": msg["args"], "limits": msg["limits"], "cwd": str(scratch)}
        if sha not in self._sent:
            out["fn"] = Path(msg["fn_path"]).read_bytes()
            self._sent.add(sha)
        memory_mb = int(msg["limits"].get("memory_mb") or 0)
        group = self._wgroup
        ooms = group.oom_kills() if group else 0
        if group and memory_mb:
            group.limit(
                memory_bytes=group.memory_used() + (memory_mb << 20),
                processes=MAX_PROCESSES,
                cores=1,
            )
        result: dict[str, Any] | None
        try:
            result = self._exchange(proc, out, deadline)
        except TimeoutError:
            self.stop()
            result = _error(
                "limit", f"wall-time limit of {wall_s:g} s exceeded; the task was killed"
            )
        except WorkerBroke as e:
            self.stop()
            result = _error("crash", f"the worker broke its protocol: {e}")
        if result is not None and self._proc is not None and self._leftovers():
            self.stop()  # nothing the task started outlives it, and this worker is done
        wall = time.perf_counter() - wall0
        if group and group.oom_kills() > ooms:
            self.stop()
            return self._memory_error(memory_mb, wall)
        if result is None:
            self.stop()
            code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
            sig = self._signal_of(code)
            if self._scratch_full():
                return self._scratch_error(wall)
            if sig == signal.SIGXCPU:
                return _error(
                    "limit", f"CPU limit of {msg['limits'].get('cpu_s')} s exceeded", wall
                )
            if sig == signal.SIGKILL:
                return _error("limit", "the worker was killed (out of memory?)", wall)
            return _error("crash", f"the worker process exited with status {code}", wall)
        if not result.get("ok"):
            self._sent.discard(sha)  # it may have failed to load: send it again next time
            if self._scratch_full():
                return self._scratch_error(result.get("wall_s", wall))
            return result
        if outputs:
            files = _take_outputs(scratch_fd, outputs, keep, self._output_limit())
            if isinstance(files, str):
                return _error("exit", files, result.get("wall_s", 0.0))
            result["files"] = files
        if state_out is not None:
            kept = _keep_state(scratch_fd, state_out, self.protections.keep_bytes)
            if isinstance(kept, str):
                for p in result.pop("files", {}).values():
                    p.unlink(missing_ok=True)
                return _error("limit", kept, result.get("wall_s", 0.0))
            result["kept"] = kept
            if state_in is not None and state_in != state_out:
                shutil.rmtree(state_in, ignore_errors=True)  # superseded by state_out
        return result

    def _quota_mb(self) -> int | None:
        size = self.protections.scratch_bytes
        return size >> 20 if size else None

    def _output_limit(self) -> int:
        return self.protections.scratch_bytes or MAX_FILE_BYTES

    def _scratch_full(self, where: Path | None = None) -> bool:
        size = self.protections.scratch_bytes
        return bool(size) and is_full(where or self._home, size or 0)

    def _scratch_error(self, wall: float) -> dict[str, Any]:
        return _error("limit", f"scratch quota of {self._quota_mb()} MB exceeded", wall)

    def _memory_error(
        self, memory_mb: int, wall: float, where: Path | None = None
    ) -> dict[str, Any]:
        msg = f"memory limit of {memory_mb} MB exceeded (all the task's processes together"
        if self.protections.scratch_bytes:
            held = used_bytes(where or self._home) >> 20
            msg += f"; its scratch files, kept in memory, held {held} MB"
        return _error("limit", msg + ")", wall)

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

    def _worker_for(
        self, job_id: int, tenant: str = "", env_site: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """The slot's worker for this job: kept across jobs of the same tenant (a customer)
        and environment, so that their imports stay warm; a new one for another's job."""
        owner = f"{tenant or f'job-{job_id}'}|{env_site or ''}"
        if self._proc is not None and (self._job != owner or self._proc.poll() is not None):
            self.stop()
        elif self._proc is not None and self._leftovers():
            self.stop()  # a task left processes behind: the next one starts clean
        self._last_job = job_id
        if self._proc is None:
            self._reset_home()
            env = guest_env(self._home)
            root = fogwheel_import_root()
            path = [str(env_site)] if env_site is not None else []  # its environment first
            if not any(root.is_relative_to(p) for p in {sys.prefix, sys.base_prefix}):
                path.append(str(root))  # fogwheel runs from a source tree
            if path:
                env["PYTHONPATH"] = os.pathsep.join(path)
            if env_site is not None:
                env["FOGWHEEL_ENV_SITE"] = str(env_site)  # written <env> in error reports
            argv = [sys.executable, "-s", "-P", "-m", "fogwheel.node.worker"]
            # The worker sets rlimits per task itself (worker.py); the group bounds the tree.
            sandbox = self.sandbox.showing([env_site]) if env_site is not None else None
            self._proc = self._spawn(
                argv, self._home, Limits(), env, self._wgroup, None, sandbox=sandbox
            )
            self._job = owner
            self._sent.clear()
            self._find_worker()
        return self._proc

    def _spawn(
        self,
        argv: Sequence[str],
        scratch: Path,
        limits: Limits,
        env: dict[str, str],
        group: SlotGroup | None,
        memory_bytes: int | None,
        *,
        stdout: IO[bytes] | None = None,
        stderr: IO[bytes] | None = None,
        sandbox: Sandbox | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in the sandbox (and in `group`, bounded), in a session of its own.
        Without `stdout`: the slot's worker, spoken to over its stdin and stdout. `sandbox`:
        the slot's own, showing more (a Python environment), when given."""
        worker = stdout is None
        sandbox = sandbox or self.sandbox
        with sandbox.filter_fd() as fd:
            cmd = sandbox.wrap(argv, scratch=scratch, limits=limits, env=env, seccomp_fd=fd)
            if group is not None:
                group.kill()
                group.limit(memory_bytes=memory_bytes, processes=MAX_PROCESSES, cores=1)
                cmd = group.enter(cmd)
            log = open(self.log_path, "ab") if worker else None  # noqa: SIM115 - the child keeps it
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE if worker else subprocess.DEVNULL,
                    stdout=subprocess.PIPE if worker else stdout,
                    stderr=log if worker else stderr,
                    bufsize=0,
                    cwd=scratch,
                    start_new_session=True,
                    pass_fds=() if fd is None else (fd,),
                )
            finally:
                if log is not None:
                    log.close()
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
        return proc

    def _reset_home(self) -> None:
        """A fresh, empty scratch for a new worker (a tmpfs of its own where the agent can)."""
        unmount(self._home)
        shutil.rmtree(self._home, ignore_errors=True)
        self._home.mkdir(parents=True)
        if self.protections.scratch_bytes:
            mount_tmpfs(self._home, self.protections.scratch_bytes)
        self.sandbox.hand_over(self._home)

    def _find_worker(self) -> None:
        """Note the worker's pid and the sandbox processes above it, before any guest code
        runs: afterwards, any other process in the slot is one a task left behind."""
        import psutil

        assert self._proc is not None
        self._allowed = {self._proc.pid}
        self._seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                top = psutil.Process(self._proc.pid)
                for p in top.children(recursive=True):
                    if "fogwheel.node.worker" in p.cmdline():  # exec'd: not bwrap, launcher
                        chain = [p, *p.parents()]
                        self._allowed = {q.pid for q in chain} & (
                            {top.pid} | {c.pid for c in top.children(recursive=True)}
                        )
                        self._seen = [top, *top.children(recursive=True)]
                        return
            except psutil.Error:
                pass
            time.sleep(0.005)

    def _leftovers(self) -> set[int]:
        """Processes in the worker's slot that are not the worker or its sandbox."""
        import psutil

        assert self._proc is not None
        if self._wgroup is not None:
            return self._wgroup.pids() - self._allowed
        try:
            kids = psutil.Process(self._proc.pid).children(recursive=True)
        except psutil.Error:
            return {-1}
        self._seen.extend(k for k in kids if k not in self._seen)
        return {k.pid for k in kids} - self._allowed

    def stop(self) -> None:
        """Kill the worker and everything in its slot; return once all of it is gone."""
        import psutil

        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if self._wgroup is not None:
            self._wgroup.kill()
        else:
            for p in self._seen:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(self._seen, timeout=5)
        self._seen = []
        if proc is not None:
            proc.wait()

    def close(self) -> None:
        """Stop the worker and give back the slot's groups and scratch (the agent stops)."""
        self.stop()
        for group in (self._wgroup, self._cgroup):
            if group is not None:
                group.remove()
        unmount(self._home)
        shutil.rmtree(self._home, ignore_errors=True)

    @property
    def worker_pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def last_job(self) -> int | None:
        """The job whose task the slot's worker ran last (its imports may be warm for it)."""
        return self._last_job if self._proc is not None else None

    def resident_mb(self) -> float:
        """What the slot holds resident now, MB (VmRSS): its worker with the sandbox processes
        above it, and a command task's process; 0 with neither (core/memfit.py counts it)."""
        pids = set(self._allowed) if self._proc is not None else set()
        command = self._command
        if command is not None:
            pids.add(command.pid)
        return sum(resident_mb(pid) for pid in pids)

    def _signal_of(self, code: int) -> int | None:
        """The signal that ended a process, from its status (bubblewrap reports 128 + n)."""
        if code < 0:
            return -code
        if self.sandbox.confined and code > 128:
            return code - 128
        return None

    # -- command tasks ----------------------------------------------------------------------

    def run_command(
        self,
        task_id: int,
        command: list[str],
        inputs: dict[str, Path],
        limits: dict[str, Any],
        outputs: Sequence[str] = (),
        keep: Path | None = None,
        image: Path | None = None,
    ) -> dict[str, Any]:
        """Run `command` in a fresh scratch dir holding its inputs; on success the files named
        in `outputs` are copied under `keep` and listed in the result's `files` (the caller's
        to upload and delete). Every process of the command is dead before they are read.
        `image`: an unpacked program image (node/images.py) to run it in as `/`."""
        if image is not None:
            slot_sandbox, self.sandbox = self.sandbox, self.sandbox.in_image(image)
            try:
                return self.run_command(task_id, command, inputs, limits, outputs, keep)
            finally:
                self.sandbox = slot_sandbox
        self.aborted = False
        scratch = self.scratch_root / f"task-{task_id}"
        unmount(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            if self.protections.scratch_bytes:
                mount_tmpfs(scratch, self.protections.scratch_bytes)
            with safefs.opened_dir(scratch) as scratch_fd:
                return self._run_command_in(
                    scratch, scratch_fd, command, inputs, limits, outputs, keep
                )
        finally:
            unmount(scratch)
            shutil.rmtree(scratch, ignore_errors=True)

    def _run_command_in(
        self,
        scratch: Path,
        scratch_fd: int,
        command: list[str],
        inputs: dict[str, Path],
        limits: dict[str, Any],
        outputs: Sequence[str],
        keep: Path | None,
    ) -> dict[str, Any]:
        placed = _place_inputs(scratch_fd, inputs, None, self._quota_mb())
        if placed is not None:
            return placed
        self.sandbox.hand_over(scratch)
        memory_mb = int(limits["memory_mb"])
        group = self._cgroup
        wall0 = time.perf_counter()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # stdout and stderr live outside the scratch dir: the guest cannot swap them for links.
        with (
            tempfile.TemporaryFile(dir=self.scratch_root) as out,
            tempfile.TemporaryFile(dir=self.scratch_root) as err,
        ):
            ooms = group.oom_kills() if group else 0
            try:
                proc = self._spawn(
                    command,
                    scratch,
                    Limits(memory_bytes=memory_mb << 20, cpu_s=limits.get("cpu_s")),
                    guest_env(scratch),
                    group,
                    memory_mb << 20,
                    stdout=out,
                    stderr=err,
                )
            except OSError as e:
                return _error("crash", f"cannot start the sandbox: {e}")
            self._command = proc
            try:
                code = proc.wait(timeout=limits["wall_s"])
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                msg = f"wall-time limit of {limits['wall_s']:g} s exceeded"
                return _error("limit", msg)
            finally:
                self._command = None
                if group is not None:
                    group.kill()  # what the command left behind dies before outputs are read
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            wall = time.perf_counter() - wall0
            stdout, stderr = _tail(out), _tail(err)
        if code == CANNOT_JOIN and group is not None:
            return _error("crash", "cannot put the command in its slot's control group", wall)
        missing = CANNOT_START.search(stderr) if code == 127 else None
        if missing:
            return _error("exit", missing.group(1), wall)
        if group and group.oom_kills() > ooms:
            res = self._memory_error(memory_mb, wall, scratch)
        elif code != 0 and self._scratch_full(scratch):
            res = self._scratch_error(wall)
        elif self._signal_of(code) == signal.SIGXCPU and limits.get("cpu_s"):
            res = _error("limit", f"CPU limit of {limits.get('cpu_s')} s exceeded", wall)
        elif code != 0:
            value = json.dumps({"returncode": code, "stdout": stdout, "stderr": stderr}).encode()
            res = _error("exit", f"{command[0]} exited with status {code}", wall)
            res["error"]["traceback"] = stderr
            res["value"] = value
        else:
            value = json.dumps({"returncode": code, "stdout": stdout, "stderr": stderr}).encode()
            res = {"ok": True, "value": value, "wall_s": wall}
            if outputs:
                files = _take_outputs(
                    scratch_fd, outputs, keep or self.scratch_root, self._output_limit()
                )
                if isinstance(files, str):
                    return {
                        **_error("exit", files.replace("the task did", "the command did"), wall),
                        "cpu_s": cpu,
                    }
                res["files"] = files
        res["cpu_s"] = cpu
        return res


def _keep_state(scratch_fd: int, dst: Path, limit: int) -> int | str:
    """Copy the task's `keep/` directory (plain files only, never through a link) to `dst`;
    its size in bytes, or what went wrong when it is larger than `limit`."""
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}")
    tmp.mkdir(parents=True)
    size = 0
    try:
        for name in safefs.files_under(scratch_fd, KEEP_DIR):
            rel = name[len(KEEP_DIR) + 1 :]
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                size += safefs.copy_out(scratch_fd, name, target, max(0, limit - size))
            except safefs.Unsafe as e:
                if "larger than" in str(e):
                    shutil.rmtree(tmp, ignore_errors=True)
                    return f"kept state larger than this node's keep quota of {limit >> 20} MB"
            except FileNotFoundError:
                continue
        if dst.exists():
            shutil.rmtree(dst)
        tmp.replace(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return size


def _place_inputs(
    scratch_fd: int, inputs: dict[str, Path], state_in: Path | None, quota_mb: int | None
) -> dict[str, Any] | None:
    """Copy the task's inputs (and kept state) in; an error result when they do not fit."""
    try:
        for name, src in inputs.items():
            safefs.place(scratch_fd, name, src)
        if state_in is not None and state_in.is_dir():
            safefs.place_tree(scratch_fd, KEEP_DIR, state_in)
    except OSError as e:
        if is_no_space(e):
            return _error("limit", f"the task's inputs exceed the scratch quota of {quota_mb} MB")
        if isinstance(e, safefs.Unsafe):
            raise ValueError(str(e)) from None
        raise
    return None


def _take_outputs(
    scratch_fd: int, names: Sequence[str], keep: Path, limit: int
) -> dict[str, Path] | str:
    """Copy the task's output files out of its scratch dir (before it is removed), reading
    each through a descriptor opened without following links; a missing one, a link or
    anything not a plain file is the task's failure, told in the returned message."""
    files: dict[str, Path] = {}
    for name in names:
        fd, tmp = tempfile.mkstemp(dir=keep, prefix=".out-")
        os.close(fd)
        os.unlink(tmp)
        try:
            safefs.copy_out(scratch_fd, name, Path(tmp), limit)
        except (OSError, ValueError) as e:
            Path(tmp).unlink(missing_ok=True)
            for p in files.values():
                p.unlink(missing_ok=True)
            if isinstance(e, FileNotFoundError):
                return f"the task did not write its output file {name!r}"
            return f"output file {name!r} cannot be read: {e}"
        files[name] = Path(tmp)
    return files


def resident_mb(pid: int) -> float:
    """A process's resident set, MB, from /proc/PID/status; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kb = memfit.parse_rss_kb(f.read())
    except OSError:
        return 0.0
    return (kb or 0) / 1024


def inside(scratch: Path, name: str) -> Path:
    """`scratch / name`, refusing names that would lead out of the scratch directory."""
    safefs.parts_of(name)
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
