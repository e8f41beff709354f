"""The small callables an Executor's tasks run on a node: a chunk of a map, a pool's
initializer before the call, a joblib batch.

They live apart from `executor.py` so that a node unpickling one imports only this module
(no SDK, no HTTP client): a worker on a 512 MB device stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Chunk", "Initialized", "run_batch"]


@dataclass(frozen=True)
class Chunk:
    """Call `fn` on each argument tuple of a chunk, in order: `map(chunksize=N)`'s task."""

    fn: Callable[..., Any]

    def __call__(self, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [self.fn(*args) for args in calls]


@dataclass(frozen=True)
class Initialized:
    """Run `initializer(*initargs)`, then `fn(*args, **kwargs)`: a pool's initializer on the
    fog, where no worker lives for one executor, so it runs before each task."""

    initializer: Callable[..., Any]
    initargs: tuple[Any, ...]
    fn: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.initializer(*self.initargs)
        return self.fn(*args, **kwargs)


def run_batch(batch: Callable[[], Any]) -> Any:
    """Run one of joblib's `BatchedCalls` (its argument, so that every batch shares this one
    function and a burst of them becomes one job)."""
    return batch()
