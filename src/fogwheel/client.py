"""The SDK: `Client.submit / map / run` with `concurrent.futures` futures.

    with Client("http://127.0.0.1:8470", api_key="fwc_…") as fog:
        fut = fog.submit(pow, 2, 10)          # a concurrent.futures.Future
        print(fut.result(timeout=60))          # 1024
        print(list(fog.map(str.upper, ["a", "b"])))

Functions travel as cloudpickle blobs named by their SHA-256; arguments and results travel
inline when small and as blobs when large, and every byte is checked against its name.

Results are data: a node's bytes are decoded by `safe_pickle` (plain types, numpy, and the
types named in `trusted_types`), never by `pickle.loads`; an exception raised on a node is
rebuilt here from its type's name and plain args (a builtin or trusted type, else
`RemoteError`), with the node's traceback as its cause; only the output files a task asked
for are kept, and `CommandResult.save` writes only beneath its directory. A fog of one's own
devices may opt out with `unsafe_trust_nodes=True` (or FOGWHEEL_UNSAFE_TRUST_NODES=1).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sys
import sysconfig
import threading
import time
import types
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, as_completed, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cloudpickle
import httpx

from fogwheel import (
    apps,
    client_images,
    funcpickle,
    output_files,
    results,
    retry,
    safe_pickle,
    transfers,
)
from fogwheel.apps import App
from fogwheel.client_images import Image
from fogwheel.envs import Env
from fogwheel.errors import (
    ApiError,
    AuthError,
    CommandFailed,
    ConfigError,
    CoordinatorUnreachable,
    FogwheelError,
    IntegrityError,
    NeedsMoreNodes,
    NoCapableNode,
    NoLiveNodes,
    NotFound,
    RemoteTraceback,
    StillWaiting,
    TaskCancelled,
    TaskFailed,
)
from fogwheel.safe_pickle import Limits, TrustedType

INLINE_MAX = 64 * 1024
SUBMIT_CHUNK = 20_000  # tasks per request when a map is large

__all__ = [
    "Blob",
    "Client",
    "CommandResult",
    "Limits",
    "TaskFuture",
    "TaskOutput",
    "as_completed",
    "wait",
]

log = logging.getLogger("fogwheel.client")
UNSAFE_ENV = "FOGWHEEL_UNSAFE_TRUST_NODES"
_warned_unsafe = False


@dataclass(frozen=True)
class Blob:
    """Bytes that live on the fog, named by their SHA-256: a task's output file, or data you
    uploaded with `Client.put_blob`. Pass one as a task input and no byte travels through
    this process; `Client.fetch` or `Client.fetch_to` brings it here."""

    sha: str
    size: int
    data: bytes | None = field(default=None, repr=False)  # small blobs travel inline


@dataclass
class TaskOutput:
    """The result of a Python task that writes files: its return value and its output files
    (only those the task requested; `warnings` names any other a node reported)."""

    value: Any
    files: dict[str, Blob]
    warnings: list[str] = field(default_factory=list)


@dataclass
class CommandResult:
    """What a command task left behind: its exit status, output tails and output files (only
    those the task requested; `warnings` names any other a node reported)."""

    returncode: int
    stdout: str
    stderr: str
    outputs: dict[str, bytes] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> list[Path]:
        """Write the output files beneath `directory`; returns their paths.

        Never outside it (no absolute names, no `..`, no symlink followed on the way) and,
        unless `overwrite`, never over a file that is there already (OutputRefused)."""
        return [
            output_files.write_beneath(directory, name, data, overwrite=overwrite)
            for name, data in self.outputs.items()
        ]


class TaskFuture(Future):  # type: ignore[type-arg]
    """A `concurrent.futures.Future` for one task on the fog.

    `cancel()` cancels the task on the fog too: it is not run again, a node running it stops
    it, and nobody is charged or paid for it. Unlike a local pool's future, a running one can
    be cancelled (the node kills it; nothing of it stays behind on this machine), so it
    returns True then as well. It returns False when the task had already finished there (its
    result is on its way) or the coordinator could not be told.

    `running()` is True once a node holds the task (running it, or queued in one of its
    slots), as the coordinator's results stream says (asked for from the first call on).
    `job_id` and `index` are None while an `Executor` still gathers its batch."""

    def __init__(self, job_id: int | None, index: int | None, client: Client | None = None) -> None:
        super().__init__()
        self.job_id = job_id
        self.index = index
        self._client = client
        self._cancelling = False  # the fog's "cancelled" for it then cancels it here
        self._placed = threading.Event()  # set once it is a task of a job on the fog
        if job_id is not None:
            self._placed.set()
        # an Executor's: takes it back out of a batch not yet sent (True: it was there)
        self._withdraw: Callable[[TaskFuture], bool] | None = None

    def _place(self, job_id: int, index: int) -> None:
        self.job_id, self.index = job_id, index
        self._placed.set()

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        if self.job_id is None:
            if self._withdraw is not None and self._withdraw(self):
                return self._cancel_here()  # never sent: nothing to tell the fog
            self._placed.wait(60.0)  # its batch is on its way to the coordinator
            if self.job_id is None or self.done():
                return self.cancelled()
        if self._client is None:
            return self._cancel_here()
        self._cancelling = True
        if not self._client._cancel_task(self):
            self._cancelling = False
            return False
        return self._cancel_here()

    def running(self) -> bool:
        if self._client is not None and self.job_id is not None and not self.done():
            self._client._track_running(self.job_id)
        return super().running()

    def _mark_running(self) -> None:
        with self._condition:
            if self._state == "PENDING":
                self.set_running_or_notify_cancel()

    def _cancel_here(self) -> bool:
        """Cancel this future only, and wake `wait` and `as_completed` on it (a plain
        Future.cancel leaves that to the executor that would have run it). A running one
        too: the fog has stopped it."""
        with self._condition:
            if self._state == "RUNNING":
                self._state = "PENDING"
            if not Future.cancel(self):
                return False
            if self._state == "CANCELLED":
                self.set_running_or_notify_cancel()
            return True

    def result(self, timeout: float | None = None) -> Any:
        """The task's result; a wait that runs out raises a `StillWaiting` (a TimeoutError)
        that says why the task waits: `NoLiveNodes`, `NeedsMoreNodes`, `NoCapableNode`…"""
        try:
            return super().result(timeout)
        except TimeoutError as e:
            if self.done() or isinstance(e, StillWaiting) or self._client is None:
                raise  # the task's own TimeoutError, or already explained
            raise self._client._still_waiting(self.job_id, timeout) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except TimeoutError as e:
            if self.done() or isinstance(e, StillWaiting) or self._client is None:
                raise
            raise self._client._still_waiting(self.job_id, timeout) from None

    def __repr__(self) -> str:
        return f"<TaskFuture job={self.job_id} index={self.index} {self._state.lower()}>"


@dataclass(frozen=True)
class Wait:
    """Why a job's tasks wait (the coordinator's `waiting`, core/waiting.py), as `on_wait`
    receives it: `reason` a stable code, `sentence` what to do, `tasks` how many wait so."""

    job_id: int
    reason: str
    sentence: str
    stuck: bool
    tasks: int


STALL_S = 2.0  # a job whose results have not moved for this long is asked why
ASK_MAX_S = 15.0  # ... and asked again at most this far apart while nothing waits
_WAIT_ERRORS: dict[str, type[StillWaiting]] = {
    "no-live-nodes": NoLiveNodes,
    "quarantined": NoLiveNodes,
    "checking-needs-another-owner-or-node": NeedsMoreNodes,
    "no-node-has-capability": NoCapableNode,
    "no-node-has-memory": NoCapableNode,
}


@dataclass
class _Watch:
    kind: str
    futures: dict[int, TaskFuture]
    cursor: int = 0
    leased: int | None = None  # tasks a node holds, as last heard (None: not asked for)
    leased_asked: float = 0.0  # when running() last asked itself (until the stream says)
    total: int = 0
    outputs: tuple[str, ...] | None = None  # the output names asked for (None: not known)
    decoder: safe_pickle.Decoder | None = None  # None: unsafe_trust_nodes
    moved_at: float = field(default_factory=time.monotonic)  # last result, or the submit
    ask_at: float = 0.0  # when to ask the coordinator why it waits (0: STALL_S after moved_at)
    said: tuple[str, str] | None = None  # the wait last announced (reason, sentence)
    env: bool = False  # it names a Python environment: devices may be preparing it


class Client:
    """A connection to one fog. Thread-safe; close it (or use `with`) to stop its watcher."""

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        api_key: str | None = None,
        *,
        http: httpx.Client | None = None,
        timeout: float = 30.0,
        retry_for: float = 120.0,
        replicas: str | int = "adaptive",
        trusted_types: Iterable[TrustedType] = (),
        result_limits: Limits | None = None,
        unsafe_trust_nodes: bool | None = None,
        cancel_on_exit: bool = True,
        on_wait: Callable[[int, Wait | None], None] | None = None,
        on_retry: Callable[[str], None] | None = None,
        max_cost: float | None = None,
        env: Env | None = None,
        deadline: float | None = None,
    ) -> None:
        """`deadline`: seconds from each submission by which its job should be done (a
        coordinator run with `--placement deadline` places least slack first); a call's
        `deadline=` overrides it. The wire carries the Unix time (JobOut.deadline).

        `env`: the Python environment (`fogwheel.Env`, docs/envs.md) this client's python
        jobs run in, unless a call names another: resolved here, built once per device.

        `cancel_on_exit`: a `with Client(...)` block left by an exception (Ctrl-C's
        KeyboardInterrupt included) cancels on the fog the jobs whose futures are still
        pending, so that they stop running and costing; False leaves them running (reattach
        with `Client.attach` or `fogwheel attach`).

        `trusted_types` are the types beyond plain data (numbers, strings, containers,
        numpy) that results and exceptions from nodes may be decoded as: classes, or names
        like "pkg.mod:Name". `result_limits` bounds the work one result's decoding may cause.
        `unsafe_trust_nodes=True` (or FOGWHEEL_UNSAFE_TRUST_NODES=1) decodes results with
        full pickle, which runs any code a node sends: only for a fog of your own devices.

        `url` may name several coordinators of one fog (a list, or "URL1,URL2" here and in
        FOGWHEEL_COORDINATOR): requests go to one while it answers and move to the next on
        a transport error or a 502/503/504; a request is sent again only where that is
        safe (retry.may_resend: reads, content-addressed uploads, a submit with its client
        token, cancels). `http` is a ready `httpx.Client` to send every request through (a
        `starlette.testclient.TestClient(app)` runs the SDK against an app in this process,
        without sockets): its base URL is the coordinator's, it gets the API key's header,
        and it stays open after `close()` (its owner closes it)."""
        if url is None and http is not None:
            url = str(http.base_url)
        url = url or os.environ.get("FOGWHEEL_COORDINATOR")
        api_key = api_key or os.environ.get("FOGWHEEL_API_KEY")
        if not url:
            raise ConfigError("no coordinator: pass url= or set FOGWHEEL_COORDINATOR")
        if not api_key and not (http is not None and "authorization" in http.headers):
            raise ConfigError("no API key: pass api_key= or set FOGWHEEL_API_KEY")
        try:  # base URLs: a trailing /v1 (copied from the API docs) is dropped
            self.urls = tuple(retry.coordinator_urls(url))
        except ValueError as e:
            raise ConfigError(f"url=: {e}") from None
        self.url = self.urls[0]
        self._coordinators = retry.Coordinators(self.urls)
        self.retry_for = retry_for
        # "adaptive": results of new or doubtful nodes are checked on another node; N: every
        # task runs on N distinct nodes; 1: no checking (a fog of your own devices).
        self.replicas = replicas
        if unsafe_trust_nodes is None:
            unsafe_trust_nodes = os.environ.get(UNSAFE_ENV, "") not in ("", "0", "false", "no")
        self.unsafe_trust_nodes = unsafe_trust_nodes
        self.cancel_on_exit = cancel_on_exit
        # Credits each job it submits may cost: refused (ApiError 422) when its limits let it
        # cost more, stopped ("max cost reached") once its charges reach it. None: no cap.
        self.max_cost = max_cost
        self.deadline = deadline  # seconds from submission (see the docstring)
        # No silent waits: `on_wait(job_id, Wait)` when a job's results have not moved for
        # STALL_S and the coordinator says why (`on_wait(job_id, None)` once they move
        # again); `on_retry(line)` before each retry of a request. Both log a warning when
        # not given.
        self.on_wait = on_wait
        self.on_retry = on_retry
        self.env = env
        self._env_shas: dict[Env, str] = {}  # resolved and uploaded by this client
        self.env_progress: Callable[[str], None] | None = None  # hears what building one does
        self._reached = False  # the coordinator has answered once: retry through restarts
        if unsafe_trust_nodes:
            _warn_unsafe()
        self.decoder = safe_pickle.Decoder(trusted_types, result_limits)
        self._owns_http = http is None
        self._http = http if http is not None else self._new_http(api_key or "", timeout)
        if http is not None and api_key:
            http.headers["authorization"] = f"Bearer {api_key}"
        self._uploaded: set[str] = set()
        self._hashed: dict[tuple[str, int, int, int], str] = {}  # a file's identity -> sha
        # hears of every file hashed, uploaded or downloaded: (phase, name, done, total)
        self.transfer_progress: transfers.Progress | None = None
        self._watches: dict[int, _Watch] = {}
        self._lock = threading.Lock()
        self._news = threading.Event()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._explainer: threading.Thread | None = None

    # -- context ----------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is not None and self.cancel_on_exit:
                self.cancel_pending()
        finally:
            self.close()

    def close(self) -> None:
        self._closed.set()
        self._news.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self._owns_http:
            self._http.close()

    def _new_http(self, api_key: str, timeout: float) -> httpx.Client:
        """The HTTP client of this SDK; with several coordinators, one whose transport sends
        each request to the coordinator that answers now (retry.FailoverTransport). That one
        ignores proxy settings of the environment: a proxy would take the requests before
        the failover could route them."""
        kw: dict[str, Any] = {
            "base_url": self.url,
            "headers": {"authorization": f"Bearer {api_key}"},
            "timeout": httpx.Timeout(timeout, connect=5.0),
        }
        if len(self.urls) > 1:
            kw["transport"] = retry.FailoverTransport(self._coordinators, httpx.HTTPTransport())
            kw["trust_env"] = False
        return httpx.Client(**kw)

    # -- submitting -------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run `fn(*args, **kwargs)` on the fog; returns a future of its result."""
        return self.submit_many(fn, [(args, kwargs)], name=_name_of(fn))[0]

    def with_env(self, env: Env | None) -> EnvCalls:
        """This client's `submit`, `map` and `submit_many` in the Python environment `env`
        (a call's own keyword arguments all go to its function, so the environment of one
        call is chosen here): `client.with_env(Env(pip=["numpy"])).submit(fn, x)`."""
        return EnvCalls(self, env)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        name: str | None = None,
        trusted_types: Iterable[TrustedType] = (),
        env: Env | None = None,
    ) -> Iterator[Any]:
        """Like `Executor.map`, as one job: results yielded in input order, `chunksize` items
        a task. It fails fast: the first failure known is raised at the next step, before
        results of earlier items not yet yielded, and the rest is cancelled on the fog. Like
        `Executor.map`, an iteration that ends early (a `break` once the iterator is closed,
        Ctrl-C) cancels the tasks not yet finished, on the fog too (executor.py)."""
        from fogwheel.executor import Chunk, chunked, in_order

        deadline = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables, strict=False))
        if chunksize < 1:
            raise ValueError(f"chunksize must be 1 or more, not {chunksize}")
        if chunksize == 1:
            calls: list[tuple[tuple[Any, ...], Mapping[str, Any]]] = [(a, {}) for a in items]
            task_fn: Callable[..., Any] = fn
        else:
            calls = [((chunk,), {}) for chunk in chunked(items, chunksize)]
            task_fn = Chunk(fn)
        futures = self.submit_many(
            task_fn, calls, name=name or _name_of(fn), trusted_types=trusted_types, env=env
        )
        return in_order(futures, deadline, flat=chunksize > 1, cancel=self._cancel_unfinished)

    def submit_many(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]],
        *,
        name: str = "job",
        memory_mb: int = 256,
        wall_s: float = 600.0,
        cpu_s: float | None = None,
        max_attempts: int = 3,
        rel_tol: float | None = None,
        abs_tol: float = 0.0,
        inputs: Sequence[Mapping[str, Blob | bytes | str | os.PathLike[str]]] | None = None,
        outputs: Sequence[str] = (),
        backups: bool = True,
        keep: Sequence[tuple[str | None, str | None]] | None = None,
        replicas: str | int | None = None,
        trusted_types: Iterable[TrustedType] = (),
        max_cost: float | None = None,
        client_token: str | None = None,
        env: Env | None = None,
        deadline: float | None = None,
        needs: Sequence[Sequence[str]] | None = None,
        _futures: Sequence[TaskFuture] | None = None,
    ) -> list[TaskFuture]:
        """One job of many calls of `fn`; the lower layer under `submit` and `map`.

        `max_cost` (credits; default the client's `max_cost`) caps what the job may cost:
        refused (ApiError 422) when its limits let it cost more, cancelled ("max cost
        reached") once its charges reach it. A submission of more than SUBMIT_CHUNK calls
        is several jobs, each with that cap.

        `trusted_types` adds, for this job, to the types its results may be decoded as.
        `client_token` (letters, digits, `_`, `-`; at most 60) makes the submission
        idempotent: submitting again with the same token returns the jobs made the first time.

        With `rel_tol` (and `abs_tol`), replicas' numeric results agree when every number is
        within that tolerance (`math.isclose`) rather than only when their bytes are equal.

        `inputs` (one mapping a call) are files placed in the task's working directory
        (`Blob`s, bytes or paths); `outputs` names files each task writes there. With
        `outputs`, a future's result is a `TaskOutput` whose files stay on the fog as `Blob`s
        until fetched. `backups=False` turns off backup copies of straggling tasks (turn it
        off for a function with side effects).

        `keep` (one `(keep_in, keep_out)` pair a call) is state a node keeps for a later task
        instead of sending it anywhere: the task finds the state kept under `keep_in` (if the
        node that runs it has it; placement prefers such a node) in its `keep/` directory, and
        what it leaves there is kept under `keep_out`. An optimizer's state between rounds of
        training, say. Kept state differs between nodes, so such a job needs `replicas=1`.

        `needs` (one list a call) are capabilities the node that runs the call must advertise
        (`fogwheel node --capability`); a call no live node can take waits.

        `env` (default the client's `env`) is the Python environment the tasks import from
        (`fogwheel.Env`): resolved and uploaded before the job is submitted (docs/envs.md)."""
        env_sha = self.env_lock(env or self.env)
        due = _deadline_at(deadline)  # `deadline`: seconds from now, as the client's
        fn_value = self._blob_value(pickle_function(fn), upload=True)
        if _futures is not None and len(_futures) != len(calls):
            raise ValueError(f"{len(_futures)} futures for {len(calls)} calls")
        if inputs is not None and len(inputs) != len(calls):
            raise ValueError(f"{len(inputs)} input mappings for {len(calls)} calls")
        if keep is not None and len(keep) != len(calls):
            raise ValueError(f"{len(keep)} keep pairs for {len(calls)} calls")
        if needs is not None and len(needs) != len(calls):
            raise ValueError(f"{len(needs)} needs lists for {len(calls)} calls")
        kind = "python-files" if outputs else "python"
        futures: list[TaskFuture] = []
        for start in range(0, max(1, len(calls)), SUBMIT_CHUNK):
            chunk = calls[start : start + SUBMIT_CHUNK]
            tasks: list[dict[str, Any]] = []
            for i, (a, k) in enumerate(chunk):
                task: dict[str, Any] = {"args": self._blob_value(_pickle_args(a, k))}
                if inputs is not None:
                    task["inputs"] = self._files(inputs[start + i])
                if outputs:
                    task["outputs"] = list(outputs)
                if keep is not None:
                    keep_in, keep_out = keep[start + i]
                    if keep_in:
                        task["keep_in"] = keep_in
                    if keep_out:
                        task["keep_out"] = keep_out
                if needs is not None and needs[start + i]:
                    task["needs"] = list(needs[start + i])
                tasks.append(task)
            job = {
                "name": name,
                "kind": "python",
                "fn": fn_value,
                "tasks": tasks,
                "limits": _limits(memory_mb, wall_s, cpu_s),
                "max_attempts": max_attempts,
                "replicas": self.replicas if replicas is None else replicas,
                "backups": backups,
                # the same token again (a driver resumed after it was killed mid-submit)
                # answers with the job it made the first time, not a twin
                "client_token": f"{client_token}-{start // SUBMIT_CHUNK}"
                if client_token
                else uuid.uuid4().hex,
            }
            if max_cost is not None:
                job["max_cost"] = max_cost
            if due is not None:
                job["deadline"] = due
            if env_sha is not None:
                job["env"] = env_sha
            if rel_tol is not None:
                job["tolerance"] = {"rel": rel_tol, "abs": abs_tol}
            made = self._submit_job(
                job,
                kind,
                outputs=tuple(outputs),
                decoder=self._decoder_for(trusted_types),
                futures=None if _futures is None else _futures[start : start + len(chunk)],
            )
            if env_sha is not None and made:  # "preparing environment on N devices"
                with self._lock:
                    if (watch := self._watches.get(made[0].job_id)) is not None:
                        watch.env = True
            futures.extend(made)
        return futures

    def run(
        self,
        command: Sequence[str],
        *,
        inputs: Mapping[str, Blob | str | os.PathLike[str] | bytes] | None = None,
        outputs: Sequence[str] = (),
        needs: Sequence[str] = (),
        memory_mb: int = 256,
        wall_s: float = 600.0,
        cpu_s: float | None = None,
        name: str | None = None,
        max_cost: float | None = None,
        image: str | Image | None = None,
        deadline: float | None = None,
    ) -> TaskFuture:
        """Run a program on one node: `inputs` are files placed in its working directory
        (paths, bytes or `Blob`s; a large file is streamed up as a blob, resumably),
        `outputs` the files to bring back. The future's result is a
        `CommandResult`; a non-zero exit raises `CommandFailed`. `image`: a pushed program
        image (`push_image`, or its id) to run it in as `/` (docs/images.md)."""
        return self.run_many(
            [command],
            inputs=[inputs or {}],
            outputs=outputs,
            needs=needs,
            memory_mb=memory_mb,
            wall_s=wall_s,
            cpu_s=cpu_s,
            name=name or str(command[0]),
            max_cost=max_cost,
            image=image,
            deadline=deadline,
        )[0]

    def run_many(
        self,
        commands: Sequence[Sequence[str]],
        *,
        inputs: Sequence[Mapping[str, Blob | str | os.PathLike[str] | bytes]] | None = None,
        outputs: Sequence[str] = (),
        needs: Sequence[str] = (),
        memory_mb: int = 256,
        wall_s: float = 600.0,
        cpu_s: float | None = None,
        name: str = "command",
        max_cost: float | None = None,
        image: str | Image | None = None,
        deadline: float | None = None,
    ) -> list[TaskFuture]:
        """One job of several command tasks (a render's bands, say), each in `image` if
        given (a pushed program image or its id; its working directory is /.fogwheel/task)."""
        image_id = image.id if isinstance(image, Image) else image
        inputs = inputs or [{} for _ in commands]
        tasks = []
        for cmd, ins in zip(commands, inputs, strict=True):
            tasks.append(
                {
                    "command": list(cmd),
                    "inputs": self._files(ins),
                    "outputs": list(outputs),
                    "needs": list(needs),
                    **({"image": image_id} if image_id else {}),
                }
            )
        job = {
            "name": name,
            "kind": "command",
            "tasks": tasks,
            "limits": _limits(memory_mb, wall_s, cpu_s),
            "replicas": self.replicas,
            "client_token": uuid.uuid4().hex,
        }
        if max_cost is not None:
            job["max_cost"] = max_cost
        if (due := _deadline_at(deadline)) is not None:
            job["deadline"] = due
        return self._submit_job(job, "command", outputs=tuple(outputs))

    def attach(
        self,
        job_id: int,
        files: bool = False,
        *,
        outputs: Sequence[str] | None = None,
        trusted_types: Iterable[TrustedType] = (),
    ) -> list[TaskFuture]:
        """Futures for the tasks of a job submitted earlier (by this process or another that
        was killed): finished ones resolve at once. `files=True` (or `outputs`) for a Python
        job whose tasks write output files (their results are `TaskOutput`s); `outputs` are
        the names its tasks requested: output files of any other name are dropped."""
        job = self.job(job_id)
        files = files or bool(outputs)
        kind = {"python": "python-files" if files else "python"}.get(job["kind"], job["kind"])
        names = None if outputs is None else tuple(outputs)
        decoder = self._decoder_for(trusted_types)
        return self._watch_job(job_id, job["total"], kind, outputs=names, decoder=decoder)

    def _decoder_for(self, trusted_types: Iterable[TrustedType]) -> safe_pickle.Decoder | None:
        """The decoder of one job's results (None: full pickle, `unsafe_trust_nodes`)."""
        return None if self.unsafe_trust_nodes else self.decoder.with_trusted(trusted_types)

    def _files(self, ins: Mapping[str, Blob | bytes | str | os.PathLike[str]]) -> dict[str, Any]:
        """Input files as values: small ones inline, large files streamed up as blobs."""
        files = {}
        for fname, src in ins.items():
            if isinstance(src, Blob):
                files[fname] = _blob_ref(src)
            elif isinstance(src, bytes):
                files[fname] = self._blob_value(src)
            elif os.stat(src).st_size <= INLINE_MAX:
                files[fname] = self._blob_value(Path(src).read_bytes())
            else:
                files[fname] = _blob_ref(self._upload_file(src))
        return files

    # -- apps (apps.py, docs/apps.md) ----------------------------------------------------------

    def app(self, name: str) -> App:
        """Your app `name` (`fogwheel apps publish`): its `submit` and `map` run the version
        each task's lease binds (the current one)."""
        return apps.App(self, name)

    def publish_app(self, name: str, **kw: Any) -> apps.Version:
        """Publish a version of app `name` (apps.publish: `path=`, `function="mod:attr"` or
        `command=[...]`, `env=`, `image=`, `label=`, `make_current=`)."""
        return apps.publish(self, name, **kw)

    # -- program images (client_images.py) ---------------------------------------------------

    def push_image(self, source: str | os.PathLike[str], arch: str | None = None) -> Image:
        """Push a root filesystem as a program image: a directory, a tarball (`docker
        export`, debootstrap) or an OCI image layout. Layers go up as resumable blobs (the
        client's `transfer_progress` hears of them); returns the registered `Image`."""
        return client_images.push(self, source, arch)

    def images(self, limit: int = 100) -> list[Image]:
        """Your program images, newest first."""
        return client_images.listed(self, limit)

    # -- blobs ------------------------------------------------------------------------------

    def env_lock(self, env: Env | None) -> str | None:
        """The name (its lock's SHA-256) of `env` on the fog: resolved with pip on this machine
        (cached on disk) and its wheels and lock uploaded, once per client."""
        if env is None:
            return None
        sha = self._env_shas.get(env)
        if sha is None:
            from fogwheel import envs

            built = envs.build(self._for_the_fog(env), self.env_progress)
            sha = envs.publish(self, built, self.env_progress)
            self._env_shas[env] = sha
        return sha

    def platforms(self) -> list[dict[str, Any]]:
        """The platforms the fog's live devices' Pythons install wheels for, most devices
        first: `platform` (cp311-x86_64-glibc_2_36), `python`, `arch`, `tags`, `nodes`."""
        out: list[dict[str, Any]] = self._request("GET", "/v1/platforms").json()["platforms"]
        return out

    def _for_the_fog(self, env: Env) -> Env:
        """`env` as it is resolved: for the platforms of the fog's devices that run its Python
        when it names none (docs/envs.md); for this machine's when they are all this
        machine's, or when no device has said its platform yet."""
        if env.platforms:
            return env
        from fogwheel import envs

        python = env.target_python()
        fog = [p for p in self.platforms() if p["python"] == python]
        tags = list(dict.fromkeys(t for p in fog for t in p["tags"]))
        if not tags or set(tags) == set(envs.this_machine_tags(python)):
            return env
        if self.env_progress is not None:
            self.env_progress(
                "resolving for the fog's devices: "
                + ", ".join(f"{p['platform']} ({p['nodes']})" for p in fog[:4])
            )
        return replace(env, platforms=tuple(tags))

    def env_status(self, job_id: int) -> dict[str, Any]:
        """Where job `job_id`'s Python environment stands: `nodes` (devices holding its
        tasks now) and `preparing` (of those, devices still downloading and installing it:
        what "preparing environment on N devices" counts), and `env` (its lock)."""
        out: dict[str, Any] = self._request("GET", f"/v1/jobs/{job_id}/env").json()
        return out

    def put_blob(self, data: bytes | str | os.PathLike[str], upload: bool = False) -> Blob:
        """Upload `data` once (a second put of the same bytes sends nothing) as a `Blob`;
        small data travels inline with the tasks that read it unless `upload` is set.

        A path is streamed from disk (never whole in memory) and resumed where an earlier,
        interrupted upload of the same file stopped; `transfer_progress` hears of it."""
        if not isinstance(data, bytes):
            return self._upload_file(data)
        value = self._blob_value(data, upload=upload or len(data) > INLINE_MAX)
        inline = base64.b64decode(value["data"]) if value.get("data") is not None else None
        return Blob(value["sha"], value["size"], inline)

    def upload(self, path: str | os.PathLike[str]) -> transfers.Transfer:
        """Stream a file up as a blob: hashed in one pass (once per version of the file), then
        sent in 1 MiB pieces, from where an interrupted upload of it stopped (the coordinator
        keeps what arrived). Returns what crossed the network (`sent`, `resumed_from`)."""
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
        name = Path(path).name
        sha = self._hashed.get(key)
        if sha is None:
            sha, _ = transfers.hash_file(path, self.transfer_progress, name)
            self._hashed[key] = sha
        if sha in self._uploaded:
            return transfers.Transfer(sha, st.st_size, 0, st.st_size)
        sent = transfers.upload(
            self._http,
            path,
            sha=sha,
            retry_for=self.retry_for,
            progress=self.transfer_progress,
            name=name,
            status=lambda url: self._request("GET", url).json(),
        )
        self._uploaded.add(sha)
        return sent

    def _upload_file(self, path: str | os.PathLike[str]) -> Blob:
        sent = self.upload(path)
        return Blob(sent.sha, sent.size)

    def blob(self, sha: str) -> Blob:
        """Your blob `sha` (uploaded, or a task's output), to pass as a task input; NotFound
        when it is not yours or not whole."""
        st = self._request("GET", f"/v1/blobs/{sha}/upload").json()
        if not st["complete"]:
            arrived = (
                f"; {st['received']} bytes of an upload of it arrived" if st["received"] else ""
            )
            raise NotFound(
                404, f"no blob {sha} of yours: upload it with fogwheel blobs put FILE{arrived}"
            )
        return Blob(sha, int(st["size"]))

    def blobs(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Your blobs, newest first: sha, size, created (a Unix time, or None)."""
        params = {"limit": limit, "offset": offset}
        return self._request("GET", "/v1/blobs", params=params).json()["blobs"]

    def download(self, blob: Blob | str, path: str | os.PathLike[str]) -> transfers.Transfer:
        """Stream a blob into `path` via `path.part`, checked; an interrupted download is
        continued by the next call (Range), and `path` appears only once it is whole."""
        sha = blob if isinstance(blob, str) else blob.sha
        if not self._request("GET", f"/v1/blobs/{sha}/upload").json()["complete"]:
            raise NotFound(404, f"no blob {sha} of yours (`fogwheel blobs ls` lists yours)")
        return transfers.download(
            self._http,
            sha,
            path,
            retry_for=self.retry_for,
            progress=self.transfer_progress,
            name=Path(path).name,
        )

    def fetch(self, blob: Blob) -> bytes:
        """The bytes of `blob`, checked against its name."""
        if blob.data is not None:
            return blob.data
        return self._value_bytes({"sha": blob.sha, "size": blob.size})

    def fetch_to(self, blob: Blob, path: str | os.PathLike[str], append: bool = False) -> int:
        """Stream `blob` into the file `path` (appended with `append`), checking it on the way;
        returns its size. A dropped connection continues from the bytes already written
        (`Range`); a corrupt transfer raises IntegrityError and leaves no new bytes."""
        path = Path(path)
        if blob.data is not None:
            with open(path, "ab" if append else "wb") as f:
                f.write(blob.data)
            return blob.size
        start = path.stat().st_size if append and path.exists() else 0
        if not append:
            path.write_bytes(b"")

        def undo() -> None:
            with open(path, "ab") as f:
                f.truncate(start)

        deadline = time.monotonic() + self.retry_for
        h = hashlib.sha256()
        have = 0  # bytes of this blob written after `start`
        try:
            while True:
                headers = {"range": f"bytes={have}-"} if have else {}
                try:
                    with self._http.stream("GET", f"/v1/blobs/{blob.sha}", headers=headers) as r:
                        if r.status_code == 416 and have:  # all of it came already
                            r.read()
                            break
                        if r.status_code >= 400:
                            r.read()
                            if r.status_code < 500 or time.monotonic() > deadline:
                                raise ApiError(r.status_code, _message(r))
                            time.sleep(0.5)
                            continue
                        if have and r.status_code != 206:  # the whole blob again
                            undo()
                            h, have = hashlib.sha256(), 0
                        with open(path, "ab") as f:
                            for chunk in r.iter_bytes(1 << 20):
                                h.update(chunk)
                                f.write(chunk)
                                have += len(chunk)
                    break
                except httpx.TransportError as e:
                    if time.monotonic() > deadline:
                        raise CoordinatorUnreachable(f"cannot reach {self.url}: {e}") from e
                    time.sleep(0.5)
            if h.hexdigest() != blob.sha:
                raise IntegrityError(f"blob {blob.sha[:12]}… arrived corrupt")
        except (ApiError, CoordinatorUnreachable, IntegrityError):
            undo()
            raise
        return blob.size

    def _submit_job(
        self,
        job: dict[str, Any],
        kind: str,
        *,
        outputs: tuple[str, ...],
        decoder: safe_pickle.Decoder | None = None,
        futures: Sequence[TaskFuture] | None = None,
    ) -> list[TaskFuture]:
        if self.max_cost is not None:
            job.setdefault("max_cost", self.max_cost)
        if self.deadline is not None and "deadline" not in job:
            job["deadline"] = _deadline_at(self.deadline)
        # the job's client token makes a repeat answer with the job made the first time
        out = self._request("POST", "/v1/jobs", json=job, idempotent="client_token" in job).json()
        if decoder is None and not self.unsafe_trust_nodes:
            decoder = self.decoder
        return self._watch_job(
            out["id"], out["total"], kind, outputs=outputs, decoder=decoder, made=futures
        )

    def _watch_job(
        self,
        job_id: int,
        total: int,
        kind: str,
        *,
        outputs: tuple[str, ...] | None,
        decoder: safe_pickle.Decoder | None,
        made: Sequence[TaskFuture] | None = None,
    ) -> list[TaskFuture]:
        """Futures for a job's tasks (`made` ones placed in it), resolved by the results
        watcher (started on first use)."""
        if made is not None:
            for i, f in enumerate(made):
                f._place(job_id, i)
            futures = dict(enumerate(made))
        else:
            futures = {i: TaskFuture(job_id, i, self) for i in range(total)}
        with self._lock:
            self._watches[job_id] = _Watch(
                kind, futures, total=total, outputs=outputs, decoder=decoder
            )
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="fogwheel-results", daemon=True
                )
                self._watcher.start()
                self._explainer = threading.Thread(
                    target=self._explain_waits, name="fogwheel-waits", daemon=True
                )
                self._explainer.start()
        self._news.set()
        return [futures[i] for i in range(total)]

    # -- reading ----------------------------------------------------------------------------

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/jobs", params={"limit": limit}).json()["jobs"]

    def job(self, job_id: int) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def tasks(
        self, job_id: int, state: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """A page of a job's tasks, each with the history of every attempt and why it was placed."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state
        return self._request("GET", f"/v1/jobs/{job_id}/tasks", params=params).json()["tasks"]

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a job on the fog: its unfinished tasks are not run again, nodes running them
        stop them at their next sync, and nobody is charged or paid for them (finished tasks
        keep their results and charges). This client's futures of the job not yet resolved
        are cancelled. Returns the job as the coordinator left it."""
        self._cancel_locally(job_id, before=True)
        out = self._request("POST", f"/v1/jobs/{job_id}/cancel", idempotent=True).json()
        self._cancel_locally(job_id)
        return out

    def logs(self, job_id: int, index: int) -> dict[str, Any]:
        """What task `index` of a job left behind: a command's exit status and stdout/stderr
        tails, a Python task's error and traceback, and every attempt's node and outcome."""
        return self._request("GET", f"/v1/jobs/{job_id}/tasks/{index}/logs").json()

    def pending_jobs(self) -> list[int]:
        """The jobs this client watches that still have futures not resolved."""
        with self._lock:
            return sorted(
                j for j, w in self._watches.items() if any(not f.done() for f in w.futures.values())
            )

    def cancel_pending(self) -> list[int]:
        """Cancel on the fog every job of `pending_jobs()` (what leaving `with Client(...)` on
        an exception does); returns the ids of those it cancelled. One quick try each: a job
        that could not be cancelled is logged with the command that cancels it later; a
        second Ctrl-C meanwhile leaves the rest running, and says so."""
        cancelled = []
        jobs = self.pending_jobs()
        for i, job_id in enumerate(jobs):
            try:
                if self._cancel_now(job_id):
                    cancelled.append(job_id)
            except KeyboardInterrupt:
                left = " ".join(map(str, jobs[i:]))
                log.warning("left job(s) %s running on the fog: fogwheel cancel %s", left, left)
                raise
        return cancelled

    def _cancel_unfinished(self, futures: Sequence[TaskFuture]) -> None:
        for job_id in sorted({f.job_id for f in futures if not f.done()}):
            self._cancel_now(job_id)

    def _cancel_now(self, job_id: int) -> bool:
        """Cancel a job with one short request (on the way out: no two-minute retries)."""
        self._cancel_locally(job_id, before=True)
        try:
            r = self._http.post(f"/v1/jobs/{job_id}/cancel", timeout=10.0)
            if r.status_code >= 400:
                raise ApiError(r.status_code, _message(r))
        except (httpx.HTTPError, RuntimeError, FogwheelError) as e:  # RuntimeError: closed
            log.warning(
                "job %d is still running on the fog: cancelling it failed (%s); "
                "cancel it with: fogwheel cancel %d",
                job_id,
                e,
                job_id,
            )
            return False
        self._cancel_locally(job_id)
        log.warning("cancelled job %d on the fog", job_id)
        return True

    def _cancel_locally(self, job_id: int, before: bool = False) -> None:
        """Cancel this client's futures of a job (`before` the fog is told: mark them, so that
        the fog's "cancelled" answers cancel them rather than fail them)."""
        with self._lock:
            watch = self._watches.get(job_id)
            futures = list(watch.futures.values()) if watch else []
        for f in futures:
            if before:
                f._cancelling = True
            else:
                f._cancel_here()

    def _cancel_task(self, fut: TaskFuture) -> bool:
        """Cancel one task on the fog; False when it had finished there or the call failed."""
        try:
            out = self._request(
                "POST", f"/v1/jobs/{fut.job_id}/tasks/{fut.index}/cancel", idempotent=True
            ).json()
        except (FogwheelError, RuntimeError) as e:
            log.warning("could not cancel task %d of job %d: %s", fut.index, fut.job_id, e)
            return False
        return bool(out["cancelled"])

    def _cancel_tasks(self, futures: Iterable[TaskFuture]) -> list[TaskFuture]:
        """Cancel many tasks on the fog, a request per job (and per 10,000 tasks): those the
        fog cancelled are cancelled here, and returned; a failed request is logged."""
        by_job: dict[int, list[TaskFuture]] = {}
        for f in futures:
            if f.job_id is not None and f.index is not None and not f.done():
                by_job.setdefault(f.job_id, []).append(f)
        stopped: list[TaskFuture] = []
        for job_id, group in sorted(by_job.items()):
            for start in range(0, len(group), 10_000):
                part = {f.index: f for f in group[start : start + 10_000]}
                for f in part.values():
                    f._cancelling = True
                try:
                    out = self._request(
                        "POST",
                        f"/v1/jobs/{job_id}/tasks/cancel",
                        json={"indexes": sorted(part)},
                        idempotent=True,
                    ).json()
                except (FogwheelError, RuntimeError) as e:
                    log.warning("could not cancel %d tasks of job %d: %s", len(part), job_id, e)
                    out = {"cancelled": []}
                for i, f in part.items():
                    if i in out["cancelled"] and f._cancel_here():
                        stopped.append(f)
                    else:
                        f._cancelling = False
        return stopped

    def _track_running(self, job_id: int) -> None:
        """From now on ask the results stream which tasks of the job nodes hold. Until its
        first answer comes (a long poll under way does not carry it), ask with a quick
        request of its own, at most every quarter of a second, so that `running()` is
        never stale by more than that."""
        with self._lock:
            watch = self._watches.get(job_id)
            now = time.monotonic()
            if watch is None or (watch.leased is not None and watch.leased >= 0):
                return
            if watch.leased == -1 and now - watch.leased_asked < 0.25:
                return
            watch.leased, watch.leased_asked = -1, now  # not known yet: an answer says it
            cursor, unknown = watch.cursor, watch.total + 1
        try:
            r = self._http.post(
                "/v1/results/poll",
                json={"jobs": {str(job_id): cursor}, "wait": 0, "leased": {str(job_id): unknown}},
                timeout=10.0,
            )
            held = r.json()["jobs"][0].get("leased") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, IndexError, RuntimeError):
            held = None
        if held:
            self._mark_leased(watch, held)
        self._news.set()

    def _mark_leased(self, watch: _Watch, held: list[int]) -> None:
        for i in held:
            f = watch.futures.get(i)
            if f is not None:
                f._mark_running()

    def nodes(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/nodes").json()["nodes"]

    # -- the results watcher ----------------------------------------------------------------

    def _watch(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                cursors = {str(j): w.cursor for j, w in self._watches.items()}
                # how many tasks of each job we know nodes hold; more than it has: not known yet
                held = {
                    str(j): w.total + 1 if w.leased < 0 else w.leased
                    for j, w in self._watches.items()
                    if w.leased is not None
                }
            if not cursors:
                self._news.wait(1.0)
                self._news.clear()
                continue
            body: dict[str, Any] = {"jobs": cursors, "wait": 5.0}
            if held:
                body["leased"] = held
            try:
                r = self._request(
                    "POST",
                    "/v1/results/poll",
                    idempotent=True,  # a read: it changes nothing
                    json=body,
                    timeout=httpx.Timeout(30.0, connect=5.0),
                )
                answers = r.json()["jobs"]
            except Exception as e:  # unreachable for too long, or the job is gone: fail them
                self._fail_all(e, [int(j) for j in cursors])
                continue
            for ans in answers:
                self._deliver(ans)

    def _deliver(self, ans: dict[str, Any]) -> None:
        with self._lock:
            watch = self._watches.get(ans["job_id"])
        if watch is None:
            return
        if ans.get("leased") is not None:
            with self._lock:
                watch.leased = len(ans["leased"])
            self._mark_leased(watch, ans["leased"])
        for res in ans["results"]:
            fut = watch.futures.pop(res["index"], None)
            if fut is None or fut.done():
                continue
            try:
                if res["state"] == "done":
                    fut.set_result(self._decode_result(watch, res))
                elif res["state"] == "cancelled" and fut._cancelling:
                    fut._cancel_here()  # this process's cancel(): cancelled, not failed
                elif res["state"] == "cancelled":
                    job = ans["job_id"]
                    fut.set_exception(
                        TaskCancelled(f"task {res['index']} of job {job} was cancelled on the fog")
                    )
                else:
                    fut.set_exception(self._decode_error(watch, res))
            except Exception as e:  # a corrupt or unreadable result is this future's error
                if not fut.done():
                    fut.set_exception(e)
        with self._lock:
            watch.cursor = ans["cursor"]
            moved = bool(ans["results"])
            if moved:
                watch.moved_at, watch.ask_at = time.monotonic(), 0.0
            said, watch.said = watch.said, (None if moved else watch.said)
        if moved and said is not None:
            self._tell_wait(ans["job_id"], None)
        with self._lock:
            if not watch.futures:
                self._watches.pop(ans["job_id"], None)

    # -- why a job waits --------------------------------------------------------------------

    def _explain_waits(self) -> None:
        """Ask the coordinator why a job whose results have not moved for STALL_S waits, and
        announce each new reason once (`on_wait`, else a warning)."""
        while not self._closed.wait(0.5):
            now = time.monotonic()
            with self._lock:
                due = [
                    (j, w)
                    for j, w in self._watches.items()
                    if now >= (w.ask_at or w.moved_at + STALL_S)
                ]
            for job_id, w in due:
                found = self._job_wait(job_id)
                with self._lock:
                    # Soon while the stall is young (a task that is just running may wait
                    # next), seldom once it has lasted: a quarter of the stall, 1 s to 15 s.
                    stalled = time.monotonic() - w.moved_at
                    w.ask_at = time.monotonic() + min(ASK_MAX_S, max(1.0, stalled / 4))
                    said = (found.reason, found.sentence) if found else None
                    news = found is not None and said != w.said and found.reason != "queued"
                    if news:
                        w.said = said
                if news:
                    self._tell_wait(job_id, found)

    def _job_wait(self, job_id: int) -> Wait | None:
        """The coordinator's word on why the job waits, with one quick request (None: it
        does not wait, or the coordinator did not answer: the results watcher says so)."""
        try:
            r = self._http.get(f"/v1/jobs/{job_id}", timeout=10.0)
            w = r.json().get("waiting") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, RuntimeError):  # RuntimeError: closed
            return None
        if not isinstance(w, dict):
            return self._env_wait(job_id)
        return Wait(
            job_id,
            str(w.get("reason", "")),
            str(w.get("sentence", "")),
            bool(w.get("stuck")),
            int(w.get("tasks", 0)),
        )

    def _env_wait(self, job_id: int) -> Wait | None:
        """For a running job with a Python environment: how many of its devices are still
        preparing it (GET /v1/jobs/ID/env), as a wait that is not stuck."""
        with self._lock:
            watch = self._watches.get(job_id)
            if watch is None or not watch.env:
                return None
        try:
            r = self._http.get(f"/v1/jobs/{job_id}/env", timeout=10.0)
            n = int(r.json().get("preparing", 0)) if r.status_code == 200 else 0
        except (httpx.HTTPError, ValueError, TypeError, RuntimeError):
            return None
        if n <= 0:
            return None
        devices = f"{n} device{'s' if n > 1 else ''}"
        sentence = f"preparing environment on {devices} (its first download and install there)"
        return Wait(job_id, "preparing-environment", sentence, False, n)

    def _tell_wait(self, job_id: int, wait: Wait | None) -> None:
        if self.on_wait is not None:
            try:
                self.on_wait(job_id, wait)
            except Exception:  # a callback's bug must not stop the watch
                log.exception("on_wait raised")
        elif wait is not None:
            # A fog that cannot make progress is a warning; a queue that is only busy is news.
            log.log(
                logging.WARNING if wait.stuck else logging.INFO,
                "job %d waits: %s",
                job_id,
                wait.sentence,
            )

    def _still_waiting(self, job_id: int, timeout: float | None) -> StillWaiting:
        """The TimeoutError of a wait that ran out, of the kind that says why."""
        found = self._job_wait(job_id)
        waited = f"still waiting after {timeout:g} s" if timeout is not None else "still waiting"
        if found is None:
            return StillWaiting(f"job {job_id}: {waited}", "unknown", job_id)
        kind = _WAIT_ERRORS.get(found.reason, StillWaiting)
        return kind(f"job {job_id}: {waited}: {found.sentence}", found.reason, job_id)

    def _fail_all(self, error: Exception, job_ids: list[int]) -> None:
        with self._lock:
            watches = [self._watches.pop(j) for j in job_ids if j in self._watches]
        for w in watches:
            for fut in w.futures.values():
                if not fut.done():
                    fut.set_exception(error)

    def _decode_result(self, watch: _Watch, res: dict[str, Any]) -> Any:
        kind = watch.kind
        if watch.decoder is not None and kind != "command" and res.get("value"):
            watch.decoder.check_size(int(res["value"].get("size", 0)))  # before fetching it
        raw = self._value_bytes(res["value"]) if res.get("value") else b""
        if kind == "python":
            return results.decode_value(watch.decoder, raw)
        if kind == "python-files":
            files, notes = output_files.requested(res.get("outputs", {}), watch.outputs)
            results.check_complete(files, watch.outputs)
            blobs = {name: _blob_of(v) for name, v in files.items()}  # type: ignore[arg-type]
            _log_dropped(notes)
            return TaskOutput(results.decode_value(watch.decoder, raw), blobs, notes)
        info = results.command_info(raw)
        outs, notes = output_files.requested(res.get("outputs", {}), watch.outputs)
        results.check_complete(outs, watch.outputs)
        _log_dropped(notes)
        outputs = {name: self._value_bytes(v) for name, v in outs.items()}  # type: ignore[arg-type]
        return CommandResult(info["returncode"], info["stdout"], info["stderr"], outputs, notes)

    def _decode_error(self, watch: _Watch, res: dict[str, Any]) -> BaseException:
        kind = watch.kind
        err = res.get("error") or {"kind": "crash", "message": "no detail"}
        tb = str(err.get("traceback") or "")
        if err.get("kind") == "exception" and kind != "command":
            exc = results.rebuild_exception(watch.decoder, err)
            exc.__cause__ = RemoteTraceback(tb)
            return exc
        if err.get("kind") == "exit" and kind == "command":
            result = None
            if res.get("value"):
                info = results.command_info(self._value_bytes(res["value"]))
                result = CommandResult(info["returncode"], info["stdout"], info["stderr"])
            return CommandFailed(str(err.get("message") or "the command failed"), result)
        return TaskFailed(
            f"task {res.get('task_id')} failed: {err.get('message', err.get('kind'))}"
        )

    # -- bytes ------------------------------------------------------------------------------

    def _blob_value(self, data: bytes, upload: bool = False) -> dict[str, Any]:
        sha = hashlib.sha256(data).hexdigest()
        if len(data) <= INLINE_MAX and not upload:
            return {"sha": sha, "size": len(data), "data": base64.b64encode(data).decode()}
        if sha not in self._uploaded:
            self._request(
                "PUT",
                f"/v1/blobs/{sha}",
                content=data,
                headers={"content-type": "application/octet-stream"},
            )
            self._uploaded.add(sha)
        return {"sha": sha, "size": len(data)}

    def _value_bytes(self, value: dict[str, Any]) -> bytes:
        if value.get("data") is not None:
            data = base64.b64decode(value["data"])
        else:
            data = self._request("GET", f"/v1/blobs/{value['sha']}").content
        if hashlib.sha256(data).hexdigest() != value["sha"]:
            raise IntegrityError(f"result {value['sha'][:12]}… arrived corrupt")
        return data

    def _request(
        self, method: str, path: str, *, idempotent: bool | None = None, **kw: Any
    ) -> httpx.Response:
        """One API call, retried (retry.py) while the coordinator is unreachable or
        restarting, each retry announced: `Backoff.attempts` tries when it has never
        answered this client, `retry_for` seconds once it has (a restart). An unknown
        host is not retried (one of several coordinators' is: the others may answer).

        With several coordinators, a failed try moves to the next at once and only a full
        round of failures waits. A request that may have been acted on is sent again only
        when that is safe (`idempotent`: True for a POST whose repeat is harmless, see
        retry.may_resend); else its failure is raised."""
        many = len(self.urls) > 1
        tries = retry.Attempts(
            RETRY,
            budget_s=self.retry_for if self._reached else None,
            start=time.monotonic(),
            urls=len(self.urls),
        )
        while True:
            try:
                r = self._http.request(method, path, **kw)
                self._reached = True
                if r.status_code < 500 and r.status_code != 429:
                    break
                problem: Exception = ApiError(r.status_code, _message(r))
                why = f"HTTP {r.status_code}"
                tried = self._coordinators.base_of(r.request.url)
                # a 429 was refused before anything was done; a 5xx may come after
                resend = retry.may_resend(method, idempotent=idempotent, sent=r.status_code != 429)
            except httpx.TransportError as e:
                why = retry.why_retry(e) or ""
                tried = self._coordinators.base_of(e.request.url) if many else self.url
                problem = self._unreachable(why or "unknown host", tries.tried + 1, tried)
                if not why and not many:
                    raise problem from e
                why = why or "no such host"
                resend = retry.may_resend(
                    method, idempotent=idempotent, sent=not retry.surely_unsent(e)
                )
            if not resend:
                raise problem
            if not tries.failed(time.monotonic()) or self._closed.is_set():
                if isinstance(problem, CoordinatorUnreachable):
                    problem = self._unreachable(why, tries.tried, ", ".join(self.urls))
                raise problem
            if many:
                after = self._coordinators.current
                self._say_retry(tries.announce(after, f"{tried}: {why}"))
                if self._coordinators.round_ended():
                    time.sleep(tries.delay(self._coordinators.rounds_failed()))
            else:
                self._say_retry(tries.announce(self.url, why))
                time.sleep(tries.delay())
        if r.status_code in (401, 403):
            raise AuthError(r.status_code, _message(r))
        if r.status_code == 404:
            raise NotFound(r.status_code, _message(r))
        if r.status_code >= 400:
            raise ApiError(r.status_code, _message(r))
        return r

    def _unreachable(self, why: str, tries: int, url: str | None = None) -> CoordinatorUnreachable:
        url = url or self.url
        if why == "unknown host":
            host = httpx.URL(url).host
            return CoordinatorUnreachable(
                f"cannot reach the coordinator at {url}: no such host {host!r}: check "
                "the URL (--coordinator or FOGWHEEL_COORDINATOR)"
            )
        after = f", {tries} tries" if tries > 1 else ""
        return CoordinatorUnreachable(
            f"cannot reach the coordinator at {url} ({why}{after}): is it running? "
            "check the URL (--coordinator or FOGWHEEL_COORDINATOR)"
        )

    def _say_retry(self, line: str) -> None:
        if self.on_retry is not None:
            self.on_retry(line)
        else:
            log.warning("%s", line)


RETRY = retry.Backoff(attempts=8, first_s=0.25, max_s=2.0)


class EnvCalls:
    """`Client.with_env(env)`: the client's calls, each job in `env` (docs/envs.md)."""

    def __init__(self, client: Client, env: Env | None) -> None:
        self.client = client
        self.env = env

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        return self.submit_many(fn, [(args, kwargs)], name=_name_of(fn))[0]

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], **kw: Any) -> Iterator[Any]:
        return self.client.map(fn, *iterables, env=self.env, **kw)

    def submit_many(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]],
        **kw: Any,
    ) -> list[TaskFuture]:
        return self.client.submit_many(fn, calls, env=self.env, **kw)


def _warn_unsafe() -> None:
    global _warned_unsafe
    if _warned_unsafe:
        return
    _warned_unsafe = True
    text = (
        "fogwheel: unsafe_trust_nodes is on: results and exceptions from nodes are decoded "
        "with full pickle, so any node can run code on this machine. Use it only on a fog of "
        "your own devices."
    )
    log.warning(text)
    warnings.warn(text, RuntimeWarning, stacklevel=3)


def _log_dropped(notes: list[str]) -> None:
    for note in notes:
        log.warning(note)


def pickle_function(fn: Callable[..., Any]) -> bytes:
    """cloudpickle `fn`; code from the user's own modules (a script, a test file) travels by
    value, since nodes have only installed packages to import from."""
    with _users_code_by_value():
        return funcpickle.dumps(fn)  # keeps the file names a remote traceback shows


def _pickle_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
    """A call's arguments as bytes; functions among them (a Dask task's, a joblib batch's)
    travel by value too when they come from the user's own modules."""
    with _users_code_by_value():
        return funcpickle.dumps((args, dict(kwargs)))


_users_modules: tuple[int, list[str]] = (0, [])  # (len(sys.modules) when found, their names)
_by_value_lock = threading.Lock()


@contextmanager
def _users_code_by_value() -> Iterator[None]:
    """Register the user's own loaded modules to pickle by value for the time of one dump
    (found again only when modules were imported since)."""
    global _users_modules
    with _by_value_lock:
        if _users_modules[0] != len(sys.modules):
            own = [n for n, m in list(sys.modules.items()) if m is not None and _is_users_own(m)]
            _users_modules = (len(sys.modules), own)
        names = [n for n in _users_modules[1] if n in sys.modules]
        for name in names:
            cloudpickle.register_pickle_by_value(sys.modules[name])
        try:
            yield
        finally:
            for name in names:
                cloudpickle.unregister_pickle_by_value(sys.modules[name])


def _is_users_own(module: types.ModuleType) -> bool:
    name = module.__name__
    if name == "__main__" or name.split(".")[0] == "fogwheel":
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    path = os.path.realpath(path)
    installed = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return not any(p and path.startswith(os.path.realpath(p) + os.sep) for p in installed)


def _blob_ref(blob: Blob) -> dict[str, Any]:
    if blob.data is not None:
        return {"sha": blob.sha, "size": blob.size, "data": base64.b64encode(blob.data).decode()}
    return {"sha": blob.sha, "size": blob.size}


def _blob_of(value: dict[str, Any]) -> Blob:
    data = base64.b64decode(value["data"]) if value.get("data") is not None else None
    if data is not None and hashlib.sha256(data).hexdigest() != value["sha"]:
        raise IntegrityError(f"output {value['sha'][:12]}… arrived corrupt")
    return Blob(value["sha"], value["size"], data)


def _deadline_at(seconds: float | None) -> float | None:
    """The Unix time `seconds` from now (a job's `deadline` on the wire); None for None."""
    if seconds is None:
        return None
    if not 0 < seconds < float("inf"):
        raise ValueError(f"deadline={seconds!r}: give the seconds from now it should be done by")
    return time.time() + seconds


def _limits(memory_mb: int, wall_s: float, cpu_s: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"memory_mb": memory_mb, "wall_s": wall_s}
    if cpu_s is not None:
        out["cpu_s"] = cpu_s
    return out


def _name_of(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "job"))[:200]


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text[:200]))
    except ValueError:
        return r.text[:200] or r.reason_phrase
