"""The client's side of every MapReduce run: splits up as blobs, a phase's tasks waited for,
part files down; shared by `run` (Python jobs) and `streaming.run_streaming` (commands).

Nothing here holds the data set: splits are uploaded as they are cut and forgotten, task
outputs stay on the fog as blobs until `fetch_parts` streams each one into its file.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogwheel.client import Blob, Client, TaskOutput
from fogwheel.errors import FogwheelError

DEFAULT_SPLIT_MB = 16
MIN_SPLIT_MB = 0.25
MAX_PARTITIONS = 100  # a task lists its output files, at most 100
Progress = Callable[[str, int, int], None]  # (phase, done, total)


class JobFailed(FogwheelError):
    """A map or reduce task failed for good (after its retries); says which and why."""


@dataclass
class Result:
    """Where the output went and what the run did."""

    paths: list[Path]
    splits: int
    partitions: int
    input_bytes: int
    output_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)  # per phase
    map_job: int | None = None
    reduce_job: int | None = None

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def part_name(r: int) -> str:
    return f"part-{r:05d}"


def live_slots(client: Client) -> int:
    """Task slots of the nodes that are up now (at least 1)."""
    return max(1, sum(int(n.get("cores", 1)) for n in client.nodes() if n.get("state") == "up"))


def default_split_mb(total_bytes: int, slots: int) -> float:
    """16 MB splits, less for a small input, so that every slot gets two (at least 0.25 MB)."""
    return min(DEFAULT_SPLIT_MB, max(MIN_SPLIT_MB, total_bytes / 2**20 / (2 * slots)))


def upload_splits(
    client: Client, pieces: Iterable[bytes], total_bytes: int, report: Progress
) -> list[Blob]:
    """Upload each split as it is cut (a split is forgotten once it is a blob); an empty input
    is one empty split, so that its job still runs (and writes its empty output)."""
    blobs: list[Blob] = []
    sent = 0
    report("split", 0, total_bytes)
    for piece in pieces:
        blobs.append(client.put_blob(piece))
        sent += len(piece)
        report("split", min(sent, total_bytes), total_bytes)
    if not blobs:
        blobs.append(client.put_blob(b""))
    report("split", total_bytes, total_bytes)  # a k-mer split drops headers and newlines
    return blobs


def collect(
    client: Client, phase: str, futures: Sequence[Any], report: Progress
) -> list[TaskOutput]:
    """The phase's results in task order; the first task to fail for good cancels the rest of
    its job (on the fog, so that nothing goes on running and billing) and raises JobFailed."""
    index = {f: i for i, f in enumerate(futures)}
    results: list[TaskOutput | None] = [None] * len(futures)
    report(phase, 0, len(futures))
    for done, fut in enumerate(as_completed(futures), 1):
        i = index[fut]
        try:
            results[i] = fut.result()
        except Exception as e:
            # One request a job cancels its tasks on the fog and this process's futures.
            for job_id in sorted({f.job_id for f in futures}):
                with contextlib.suppress(Exception):
                    client.cancel(job_id)
            raise JobFailed(f"{phase} task {i} (job {futures[i].job_id}) failed: {e}") from e
        report(phase, done, len(futures))
    return [r for r in results if r is not None]


def fetch_parts(client: Client, outputs: Sequence[Blob], out: Path, report: Progress) -> list[Path]:
    """Stream output `r` into `out/part-0000r`, checked on the way, then write `_SUCCESS`
    (Hadoop's marker that the directory is whole)."""
    total = sum(b.size for b in outputs)
    report("output", 0, total)
    got = 0
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for r, blob in enumerate(outputs):
        path = out / part_name(r)
        got += client.fetch_to(blob, path)
        paths.append(path)
        report("output", got, total)
    (out / "_SUCCESS").write_bytes(b"")
    return paths


@contextlib.contextmanager
def timed(seconds: dict[str, float], phase: str) -> Any:
    """Add the wall time of the block to `seconds[phase]`."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - t0
