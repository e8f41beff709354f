"""joblib on the fog: a `ParallelBackendBase` named "fogwheel" over a `fogwheel.Executor`.

    import fogwheel.joblib_backend  # registers "fogwheel" with joblib
    with joblib.parallel_config(backend="fogwheel", executor=ex):   # or url=, api_key=
        squares = joblib.Parallel()(joblib.delayed(pow)(i, 2) for i in range(1000))

It follows joblib's own future-based backends (`joblib._dask.DaskDistributedBackend`): each
batch of calls is one `Executor.submit`, its future's callback hands the result to joblib,
and joblib's auto-batching (`AutoBatchingMixin`) grows the batches until one takes about a
fifth of a second, which hides the fog's round trip. The Executor's batching window makes
each burst of batches that joblib dispatches one job. A failure makes joblib abort: the
batches still on the fog are cancelled there (not billed). A `Parallel` nested inside a task
runs sequentially on its node.
"""

from __future__ import annotations

from typing import Any

import joblib  # type: ignore[import-untyped]
from joblib._parallel_backends import (  # type: ignore[import-untyped]
    AutoBatchingMixin,
    ParallelBackendBase,
    SequentialBackend,
)

from fogwheel.client import Client, TaskFuture
from fogwheel.executor import Executor
from fogwheel.task_calls import run_batch

__all__ = ["FogwheelBackend", "register"]


class FogwheelBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's "fogwheel" backend: batches of calls as fog tasks, through an `Executor`
    (`executor=`, shared and left open) or one of its own made from `url`, `api_key` and
    the `Executor`'s options (closed when joblib terminates the backend)."""

    supports_retrieve_callback = True
    default_n_jobs = -1

    def __init__(
        self,
        executor: Executor | None = None,
        url: str | None = None,
        api_key: str | None = None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **executor_kwargs: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if executor is not None and (url or api_key or executor_kwargs):
            raise ValueError("pass either executor= or the options of a new one, not both")
        self._given = executor
        self._options = (url, api_key, executor_kwargs)
        self._executor: Executor | None = None
        self._futures: set[TaskFuture] = set()

    @property
    def executor(self) -> Executor:
        if self._given is not None:
            return self._given
        if self._executor is None:
            url, api_key, kw = self._options
            client = kw.pop("client", None)
            if isinstance(client, Client):
                self._executor = Executor(client, **kw)
            else:
                self._executor = Executor(url, api_key, **kw)
        return self._executor

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """`n_jobs` as given; -1 (all) or None: the executor's `max_workers`."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs < 0:
            return self.executor._max_workers
        return n_jobs

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: Any = None,
        require: Any = None,
        **backend_kwargs: Any,
    ) -> int:
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Any, callback: Any = None) -> TaskFuture:
        fut = self.executor.submit(run_batch, func)  # one function: a burst is one job
        self._futures.add(fut)
        fut.add_done_callback(self._futures.discard)
        if callback is not None:
            fut.add_done_callback(callback)
        return fut

    def retrieve_result_callback(self, out: TaskFuture) -> Any:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call failed: cancel its batches still on the fog (the executor stays usable)."""
        self.executor.cancel(list(self._futures))
        self._futures.clear()

    def terminate(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def get_nested_backend(self) -> tuple[Any, Any]:
        """A `Parallel` inside a task runs on its node, one call after another."""
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    def __reduce__(self) -> Any:
        return (SequentialBackend, ())  # on a node there is no fog to submit to


def register() -> None:
    """Make `parallel_config(backend="fogwheel")` mean this backend (done on import)."""
    joblib.register_parallel_backend("fogwheel", FogwheelBackend)


register()
