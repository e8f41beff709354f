"""`fogwheel.Executor`: the fog as a `concurrent.futures.Executor` (PEP 3148).

    with fogwheel.Executor(url, api_key) as ex:      # or Executor(client=fog)
        fut = ex.submit(pow, 2, 10)                   # a TaskFuture
        print(list(ex.map(str.upper, "abc", chunksize=2)))
        dask.compute(bag, scheduler=ex)               # dask.base.get_scheduler takes Executors

Submits made close together (each within `batch_window` seconds of the one before, 20 ms by
default, for at most half a second) become one job of the coordinator, one per function, so
1,000 `submit` calls are one row of `fogwheel jobs`, one request and one function upload.
Dask's `get_async` and joblib's dispatch both submit in bursts, which the window turns into
a job per burst.

Where it differs from a local pool, on purpose (docs/executor.md):
- `Future.cancel()` cancels a *running* task too, and returns True: the fog can stop it (the
  node kills it; nobody is charged or paid) and nothing of it lives in this process.
  `shutdown(cancel_futures=True)` therefore stops running tasks as well as queued ones.
- `map` fails fast: the first failure known is raised at the next step, before results of
  earlier items not yet yielded, and every task of the map not finished is cancelled.
- `running()` is True once a node holds the task (running, or queued in one of its slots).
- `initializer(*initargs)` runs before every task (a node keeps no worker per executor).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures as cf
from dataclasses import dataclass, field
from typing import Any, Literal

from fogwheel.client import Client, TaskFuture
from fogwheel.task_calls import Chunk, Initialized

__all__ = ["Chunk", "Executor", "chunked", "fog_map", "gather", "in_order"]

BATCH_WINDOW_S = 0.02  # a batch is sent once no submit came for this long
MAX_BATCH_WAIT_S = 0.5  # ... or once its first submit waited this long (10 windows if longer)
MAX_BATCH = 10_000  # ... or at once when it is this big
# How many tasks may be in flight at once, as dask (`_max_workers`) and joblib read it: a fog
# queues tasks cheaply (a row each; a node queues up to 64 a slot), so it is wide.
DEFAULT_MAX_WORKERS = 4096


def chunked(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def in_order(
    futures: Sequence[cf.Future[Any]],
    deadline: float | None,
    *,
    flat: bool = False,
    cancel: Callable[[Sequence[Any]], Any],
) -> Iterator[Any]:
    """Yield the futures' results in order (each a list to flatten when `flat`), failing fast.

    A failure that is known is raised at the next step even when earlier results are not yet
    yielded (stdlib's map would yield those first: with 1,000 items a late failure then costs
    the wait for every item before it). Leaving early, by a failure, `close()` or Ctrl-C,
    cancels the unfinished rest with `cancel`. A deadline that passes raises the future's
    own TimeoutError (for a TaskFuture, `StillWaiting`: it says why the task waits)."""
    news: queue.SimpleQueue[cf.Future[Any]] = queue.SimpleQueue()
    for f in futures:
        f.add_done_callback(news.put)

    def failure_known() -> BaseException | None:
        while True:
            try:
                f = news.get_nowait()
            except queue.Empty:
                return None
            if not f.cancelled() and f.exception() is not None:
                return f.exception()

    def results() -> Iterator[Any]:
        try:
            for f in futures:
                while not f.done():
                    error = failure_known()
                    if error is not None:
                        raise error
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        f.result(timeout=0)  # raises the explained TimeoutError
                    with contextlib.suppress(queue.Empty):
                        news.put(news.get(timeout=left))  # back: failure_known reads it
                error = failure_known()
                if error is not None:
                    raise error
                value = f.result()
                if flat:
                    yield from value
                else:
                    yield value
        finally:
            rest = [f for f in futures if not f.done()]
            if rest:
                cancel(rest)

    return results()


def gather(
    futures: Iterable[cf.Future[Any]],
    errors: Literal["raise", "skip", "return"] = "raise",
    timeout: float | None = None,
) -> list[Any]:
    """The futures' results in their order. `errors`: "raise" the first failure as soon as
    it is known (the others keep running); "skip" failed and cancelled ones; "return" their
    exceptions (a `CancelledError` for a cancelled one) in their place. The same choice as
    `distributed.Client.gather(errors=...)` and `asyncio.gather(return_exceptions=True)`."""
    if errors not in ("raise", "skip", "return"):
        raise ValueError(f'errors must be "raise", "skip" or "return", not {errors!r}')
    fs = list(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    if errors == "raise":
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, _ = cf.wait(fs, timeout=left, return_when=cf.FIRST_EXCEPTION)
        for f in fs:
            if f in done and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
    out: list[Any] = []
    for f in fs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            out.append(f.result(timeout=left))
        except cf.TimeoutError:
            if not f.done():
                raise
            if errors == "raise":
                raise
            if errors == "return":
                out.append(f.exception())
        except (Exception, cf.CancelledError) as e:
            if errors == "raise":
                raise
            if errors == "return":
                out.append(e)
    return out


@dataclass
class _Batch:
    fn: Callable[..., Any]
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    futures: list[TaskFuture] = field(default_factory=list)


class Executor(cf.Executor):
    """A `concurrent.futures.Executor` whose workers are the fog's nodes.

    `client` is a `Client` to share (left open by `shutdown`) or a coordinator URL (or None:
    FOGWHEEL_COORDINATOR) for a client of its own, made with `api_key` and `client_kwargs`
    (`replicas=`, `trusted_types=`, `max_cost=`…) and closed by `shutdown`. `batch_window`:
    a batch is sent once no submit came for this many seconds (0: each submit is a job).
    `max_workers`: how many tasks dask and joblib keep in flight. `name`: the jobs' name
    (default: the function's)."""

    def __init__(
        self,
        client: Client | str | Sequence[str] | None = None,
        api_key: str | None = None,
        *,
        batch_window: float = BATCH_WINDOW_S,
        max_workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        name: str | None = None,
        **client_kwargs: Any,
    ) -> None:
        if batch_window < 0:
            raise ValueError(f"batch_window must be 0 or more seconds, not {batch_window}")
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be 1 or more, not {max_workers}")
        if isinstance(client, Client):
            if api_key is not None or client_kwargs:
                raise ValueError("pass api_key and client options to the Client, not here")
            self.client, self._owns_client = client, False
        else:
            self.client, self._owns_client = Client(client, api_key, **client_kwargs), True
        self.batch_window = batch_window
        self._max_workers = max_workers or DEFAULT_MAX_WORKERS
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._name = name
        self._lock = threading.Condition()
        self._batches: dict[int, _Batch] = {}  # by id(fn): a job per function
        self._batched = 0
        self._first_at = 0.0  # when the oldest submit of the batches came
        self._last_at = 0.0  # ... and the newest
        self._sending = 0  # batches taken out, not yet placed
        self._live: set[TaskFuture] = set()  # submitted, not finished
        self._unsent: set[TaskFuture] = set()  # in a batch (withdrawn ones leave this set)
        self._shutdown = False
        self._flusher = threading.Thread(
            target=self._flush_loop, name="fogwheel-batch", daemon=True
        )
        self._flusher.start()

    # -- concurrent.futures.Executor --------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run `fn(*args, **kwargs)` on the fog, in the job of the submits made with it."""
        fut = TaskFuture(None, None, self.client)
        fut._withdraw = self._withdraw
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            batch = self._batches.get(id(fn))
            if batch is None:
                batch = self._batches[id(fn)] = _Batch(fn)
            self._last_at = time.monotonic()
            if not self._batched:
                self._first_at = self._last_at
            batch.calls.append((args, kwargs))
            batch.futures.append(fut)
            self._batched += 1
            self._live.add(fut)
            self._unsent.add(fut)
            self._lock.notify_all()
        fut.add_done_callback(self._forget)
        return fut

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Results of `fn` over the iterables, in order; `chunksize` items run as one task.
        All items are submitted now (one job); it fails fast and, left early, cancels the
        rest on the fog (the module's docstring)."""
        if chunksize < 1:
            raise ValueError(f"chunksize must be 1 or more, not {chunksize}")
        deadline = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables, strict=False))
        if chunksize == 1:
            fs = [self.submit(fn, *args) for args in items]
        else:
            task = Chunk(fn)
            fs = [self.submit(task, chunk) for chunk in chunked(items, chunksize)]
        return in_order(fs, deadline, flat=chunksize > 1, cancel=self.cancel)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submits; the batch waiting is sent now. `cancel_futures` cancels every
        unfinished future, running ones included (on a fog they stop cleanly). `wait` waits
        for all futures; an own client is closed once they are all resolved."""
        with self._lock:
            self._shutdown = True
            self._lock.notify_all()
            live = list(self._live)
        if cancel_futures:
            self.cancel(live)
        self._flusher.join()
        if wait:
            cf.wait(live)
            self._close_client()
        elif self._owns_client:
            threading.Thread(target=self._close_when_done, args=(live,), daemon=True).start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Leaving the block waits for its futures; left by an exception (Ctrl-C's
        KeyboardInterrupt too), it cancels them on the fog instead, as `Client` does."""
        self.shutdown(wait=True, cancel_futures=exc_type is not None)

    # -- the fog's part ---------------------------------------------------------------------

    def cancel(self, futures: Iterable[TaskFuture]) -> int:
        """Cancel many futures with a request per job (not one per future); how many it
        cancelled. Those not yet sent are simply taken out of their batch."""
        withdrawn, placed = 0, []
        for f in futures:
            if f.done():
                continue
            if f.job_id is None and self._withdraw(f):
                withdrawn += f._cancel_here()
            else:
                placed.append(f)
        for f in placed:
            f._placed.wait(60.0)  # its batch is on its way
        return withdrawn + len(self.client._cancel_tasks(placed))

    def _withdraw(self, fut: TaskFuture) -> bool:
        """Take a future out of its batch if the batch is not sent yet (it is then left out
        when the batch is sent)."""
        with self._lock:
            if fut not in self._unsent:
                return False
            self._unsent.discard(fut)
            self._batched -= 1
            return True

    def _forget(self, fut: cf.Future[Any]) -> None:
        with self._lock:
            self._live.discard(fut)

    def _flush_loop(self) -> None:
        """Send the batches once no submit came for `batch_window` s, or their first waited
        MAX_BATCH_WAIT_S, or at once when they are big (MAX_BATCH) or the executor shuts
        down."""
        while True:
            with self._lock:
                while True:
                    if self._batched:
                        due = (
                            min(
                                self._last_at + self.batch_window,
                                self._first_at + max(MAX_BATCH_WAIT_S, 10 * self.batch_window),
                            )
                            - time.monotonic()
                        )
                        if due <= 0 or self._batched >= MAX_BATCH or self._shutdown:
                            break
                        self._lock.wait(due)
                    elif self._shutdown:
                        return
                    else:
                        self._lock.wait()
                batches = []
                for b in self._batches.values():
                    kept = [
                        (c, f) for c, f in zip(b.calls, b.futures, strict=True) if f in self._unsent
                    ]
                    self._unsent.difference_update(f for _, f in kept)
                    if kept:
                        batches.append(_Batch(b.fn, [c for c, _ in kept], [f for _, f in kept]))
                self._batches.clear()
                self._batched = 0
            for batch in batches:
                self._send(batch)

    def _send(self, batch: _Batch) -> None:
        fn = batch.fn
        if self._initializer is not None:
            fn = Initialized(self._initializer, self._initargs, fn)
        try:
            self.client.submit_many(
                fn, batch.calls, name=self._name or _name_of(batch.fn), _futures=batch.futures
            )
        except BaseException as e:  # refused or unreachable: each future of it says so
            for f in batch.futures:
                f._placed.set()
                if not f.done():
                    f.set_exception(e)

    def _close_when_done(self, live: list[TaskFuture]) -> None:
        cf.wait(live)
        self._close_client()

    def _close_client(self) -> None:
        if self._owns_client:
            self.client.close()

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"{len(self._live)} unfinished"
        return f"<fogwheel.Executor {self.client.url} {state}>"


def fog_map(
    fn: Callable[..., Any], *iterables: Iterable[Any], executor: Executor, **tqdm_kwargs: Any
) -> list[Any]:
    """tqdm's `process_map` on the fog: `fn` over the iterables with a progress bar that
    moves as each task's result arrives (`chunksize=`, `timeout=` and tqdm's own options as
    `tqdm.contrib.concurrent` takes them). Runs through `executor`'s client, in a batch of
    its own; fails fast as `Executor.map` does."""
    from tqdm.contrib.concurrent import _executor_map  # type: ignore[import-untyped]

    client = executor.client
    window, workers = executor.batch_window, executor._max_workers

    def pool(**kw: Any) -> Executor:  # the pool tqdm opens and shuts down: a view of ours
        return Executor(client, batch_window=window, max_workers=kw.get("max_workers") or workers)

    return list(_executor_map(pool, fn, *iterables, _initializer=_nothing, **tqdm_kwargs))


def _nothing() -> None:
    """tqdm's pool initializer otherwise shares a lock with local workers; nodes need none."""


def _name_of(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "fn", fn)
    return str(getattr(inner, "__qualname__", None) or type(inner).__qualname__)[:200]
