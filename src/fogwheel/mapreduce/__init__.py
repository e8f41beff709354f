"""MapReduce on the fog: splits as blobs, map tasks with a combiner, a shuffle of partition
blobs, reduce tasks, output files.

    from fogwheel import Client
    from fogwheel.mapreduce import WordCount, run

    with Client() as fog:
        result = run(fog, WordCount(), ["book.txt"], out="counts/")
    print(result.paths)

The client cuts the input into splits (whole lines) and uploads each one as a blob. Map task
`m` runs on a node, reads its split, maps and combines it, and writes one file a partition
(`part-r`); the node uploads them as blobs and keeps them in its cache. Reduce task `r` takes
`part-r` of every map task as its inputs and writes one output file. No process ever holds the
whole data set: the client streams splits up and outputs down, and the shuffle is blobs named
by their hashes. Placement prefers a node that already holds a task's input (the node that
produced most of a reduce's partitions, say); near the end of each phase idle nodes run backup
copies of straggling tasks, and the first copy to finish wins (the coordinator's part). A lost
node costs its running tasks, which run again elsewhere; finished map outputs live in the
coordinator's blob store, so a node lost between phases costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import types
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle

from fogwheel.client import Blob, Client, _is_users_own
from fogwheel.mapreduce.jobs import Grep, Job, MapReduce, WordCount, line_splits, partition_of
from fogwheel.mapreduce.phases import (
    MAX_PARTITIONS,
    JobFailed,
    Progress,
    Result,
    collect,
    default_split_mb,
    fetch_parts,
    live_slots,
    part_name,
    timed,
    upload_splits,
)
from fogwheel.mapreduce.streaming import Streaming, run_streaming

__all__ = [
    "Grep",
    "Job",
    "JobFailed",
    "MapReduce",
    "Result",
    "Streaming",
    "WordCount",
    "line_splits",
    "partition_of",
    "run",
    "run_streaming",
]

# -- what runs on the nodes -------------------------------------------------------------------


class MapTask:
    """The function of every map task: read `split`, write `part-00000`…"""

    def __init__(self, job: Job, partitions: int) -> None:
        self.job = job
        self.partitions = partitions

    def __call__(self) -> dict[str, int]:
        data = Path("split").read_bytes()
        parts = self.job.map_split(data, self.partitions)
        if len(parts) != self.partitions:
            raise ValueError(f"map_split returned {len(parts)} partitions, not {self.partitions}")
        for r, payload in enumerate(parts):
            Path(part_name(r)).write_bytes(payload)
        return {"bytes_in": len(data), "bytes_out": sum(len(p) for p in parts)}


class ReduceTask:
    """The function of every reduce task: merge the `in-*` files into `out`."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __call__(self) -> dict[str, int]:
        paths = sorted(Path(".").glob("in-*"))
        data = self.job.reduce_parts(paths)
        Path("out").write_bytes(data)
        return {"inputs": len(paths), "bytes_out": len(data)}


# -- the driver -------------------------------------------------------------------------------


def run(
    client: Client,
    job: Job,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    partitions: int | None = None,
    split_mb: float | None = None,
    progress: Progress | None = None,
    wall_s: float = 3600.0,
    backups: bool = True,
) -> Result:
    """Run `job` over the files `inputs` on the fog and write its output to `out`.

    `out` is a directory of `part-NNNNN` files (`job.output == "dir"`) or one file. The input
    is cut into splits of about `split_mb` MB (default: 16, less for a small input, so that
    every slot of the live nodes gets two splits); `partitions` (reduce tasks) defaults to
    the number of slots of the live nodes, at least 2. `progress(phase, done, total)` hears of
    every split uploaded and every task finished. Raises `JobFailed` when a task fails for
    good, `FileNotFoundError` for a missing input.
    """
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"no input file {p}")
    total_bytes = sum(p.stat().st_size for p in paths)
    if partitions is None or split_mb is None:
        slots = live_slots(client)
        if partitions is None:
            partitions = min(MAX_PARTITIONS, job.suggest_partitions(total_bytes, slots))
        if split_mb is None:
            split_mb = default_split_mb(total_bytes, slots)
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be between 1 and {MAX_PARTITIONS}, not {partitions}")
    seconds: dict[str, float] = {}
    report = progress or (lambda phase, done, total: None)

    with timed(seconds, "split"):
        pieces = job.splits(paths, max(1, int(split_mb * 1024 * 1024)))
        blobs = upload_splits(client, pieces, total_bytes, report)

    names = [part_name(r) for r in range(partitions)]

    def phase(name: str, fn: Any, inputs: list[dict[str, Blob]], outs: list[str]) -> Any:
        t0 = time.perf_counter()
        futures = client.submit_many(
            fn,
            [((), {}) for _ in inputs],
            name=f"{job.describe()}: {name}",
            inputs=inputs,
            outputs=outs,
            memory_mb=job.memory_mb,
            wall_s=wall_s,
            backups=backups,
        )
        results = collect(client, name, futures, report)
        seconds[name] = time.perf_counter() - t0
        return results, futures[0].job_id

    with _by_value(job):
        maps, map_job = phase("map", MapTask(job, partitions), [{"split": b} for b in blobs], names)
        # reduce task r reads partition r of every map task (an empty partition adds nothing)
        reduce_inputs = [
            {
                f"in-{m:05d}": res.files[names[r]]
                for m, res in enumerate(maps)
                if res.files[names[r]].size
            }
            for r in range(partitions)
        ]
        reduces, reduce_job = phase("reduce", ReduceTask(job), reduce_inputs, ["out"])

    t0 = time.perf_counter()
    outputs = [res.files["out"] for res in reduces]
    written = _write_outputs(client, job, outputs, Path(out), report)
    seconds["output"] = time.perf_counter() - t0
    return Result(
        paths=written,
        splits=len(blobs),
        partitions=partitions,
        input_bytes=total_bytes,
        output_bytes=sum(b.size for b in outputs),
        seconds=seconds,
        map_job=map_job,
        reduce_job=reduce_job,
    )


def _write_outputs(
    client: Client, job: Job, outputs: Sequence[Blob], out: Path, report: Progress
) -> list[Path]:
    if job.output == "file":
        total = sum(b.size for b in outputs)
        report("output", 0, total)
        got = 0
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        tmp.write_bytes(b"")
        for blob in outputs:
            got += client.fetch_to(blob, tmp, append=True)
            report("output", got, total)
        tmp.replace(out)
        return [out]
    for old in out.glob("part-*"):
        old.unlink()
    return fetch_parts(client, outputs, out, report)


_pickle_lock = threading.Lock()


@contextmanager
def _by_value(job: Job) -> Iterable[None]:  # type: ignore[misc]
    """Ship the job's class and functions by value when they come from the user's own modules
    (a script, an examples/ file): the nodes have only installed packages to import from."""
    modules: set[types.ModuleType] = set()
    for obj in [type(job), *vars(job).values()]:
        mod = sys.modules.get(getattr(obj, "__module__", "") or "")
        if mod is not None and _is_users_own(mod):
            modules.add(mod)
    with _pickle_lock:
        for m in modules:
            cloudpickle.register_pickle_by_value(m)
        try:
            yield
        finally:
            for m in modules:
                # the SDK's own by-value registration (client.py) may have undone it already
                with contextlib.suppress(ValueError):
                    cloudpickle.unregister_pickle_by_value(m)
