"""Hadoop Streaming on the fog: any programs that read lines on stdin and write lines on
stdout as mapper, combiner and reducer (`fogwheel mapreduce streaming`).

    from fogwheel import Client
    from fogwheel.mapreduce import Streaming, run_streaming

    job = Streaming("python3 mapper.py", "python3 reducer.py", files=("mapper.py", "reducer.py"))
    with Client() as fog:
        result = run_streaming(fog, job, ["book.txt"], "counts/")

Hadoop's semantics (Hadoop Streaming documentation, "How Streaming Works"): the input is cut
into splits of whole lines; each map task feeds its split's lines to the mapper; a mapper's
output line is `key<TAB>value` (no tab: the whole line is the key, the value empty); lines are
partitioned by key over R reduce tasks (CRC-32 of the key, the same on every machine) and each
reducer reads its lines sorted by key, in byte order. With R = 1 (the default, as in Hadoop)
the output is byte for byte what `cat INPUT… | mapper | LC_ALL=C sort | reducer` prints, for
any key without a byte below tab. With R = 0 (`-numReduceTasks 0` or `-reducer NONE`) the
mappers' output is the job's output, one part file per map task. Output lines are written as
the commands wrote them (Hadoop adds a tab to a line that has none; fogwheel does not).

The commands run on the nodes, in their sandbox, as part of Python tasks of fogwheel's own
(`streamtask.py`), so that map outputs stay on the fog as blobs and reach the reduce tasks
without passing through this process; the client streams splits up and part files down, and
never holds a key's values. Files given as `files` are placed in every task's working
directory. A command that exits with a non-zero status fails its task, with its stderr's end.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fogwheel.client import Blob, Client
from fogwheel.mapreduce.jobs import line_splits
from fogwheel.mapreduce.phases import (
    MAX_PARTITIONS,
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
from fogwheel.mapreduce.streamtask import (
    WORK_DIR,
    StreamingCommandFailed,
    StreamingMap,
    StreamingReduce,
)

REDUCE_NONE = "NONE"  # `-reducer NONE`: a map-only job, as in Hadoop
SHIPPED_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._-]{0,199}$")  # protocol.FileName, no /
TASK_FILES = re.compile(rf"^(split|out|in-.*|part-.*|{re.escape(WORK_DIR)})$")


@dataclass(frozen=True)
class Streaming:
    """A streaming job: commands as a shell would split them (no shell runs them), the files
    shipped with every task, and the number of reduce tasks (0: map-only)."""

    mapper: str
    reducer: str | None = None  # None: the identity (the sorted map output itself)
    combiner: str | None = None
    reduce_tasks: int = 1
    files: tuple[str | os.PathLike[str], ...] = ()
    memory_mb: int = 256
    wall_s: float = 3600.0
    name: str | None = None  # what `fogwheel jobs` calls it (Hadoop's mapreduce.job.name)

    def __post_init__(self) -> None:
        if not 0 <= self.reduce_tasks <= MAX_PARTITIONS:
            raise ValueError(
                f"-numReduceTasks must be between 0 and {MAX_PARTITIONS}, not {self.reduce_tasks}"
            )
        for role, command in (("mapper", self.mapper), ("reducer", self.reducer),
                              ("combiner", self.combiner)):  # fmt: skip
            if command is not None:
                argv_of(role, command)
        names = [shipped_name(f) for f in self.files]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two -file arguments are both named {twice[0]!r} on the nodes")

    @property
    def map_only(self) -> bool:
        return self.reduce_tasks == 0 or self.reducer == REDUCE_NONE

    @property
    def partitions(self) -> int:
        return 0 if self.map_only else self.reduce_tasks

    def describe(self) -> str:
        if self.name:
            return self.name
        program = argv_of("mapper", self.mapper)[0]
        return f"streaming {Path(program).name}"


REDUCES = ("mapreduce.job.reduces", "mapred.reduce.tasks")
NAMES = ("mapreduce.job.name", "mapred.job.name")
MAPS_HINT = ("mapreduce.job.maps", "mapred.map.tasks")


def hadoop_settings(defines: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Hadoop's `-D KEY=VALUE` settings that mean something here, as `Streaming` fields, and
    notes on those that are hints only; ValueError for any other (it would be ignored
    silently otherwise)."""
    fields: dict[str, Any] = {}
    notes: list[str] = []
    for define in defines:
        key, eq, value = define.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"-D {define!r}: write -D KEY=VALUE, e.g. -D mapreduce.job.reduces=2")
        if key in REDUCES:
            if not value.strip().isdigit():
                raise ValueError(f"-D {key}={value}: the number of reduce tasks is a whole number")
            fields["reduce_tasks"] = int(value)
        elif key in NAMES:
            fields["name"] = value
        elif key in MAPS_HINT:
            notes.append(f"-D {key} is a hint that fogwheel does not need: --split-mb sets splits")
        else:
            known = ", ".join([*REDUCES, *NAMES, *MAPS_HINT])
            raise ValueError(f"-D {key}: not a setting fogwheel takes (it takes {known})")
    return fields, notes


def argv_of(role: str, command: str) -> tuple[str, ...]:
    """`command` split as a shell splits words (quotes kept together), as Hadoop splits it."""
    try:
        argv = tuple(shlex.split(command))
    except ValueError as e:
        raise ValueError(f"the -{role} {command!r} is not a command line: {e}") from None
    if not argv:
        raise ValueError(f"the -{role} is empty: give a command, e.g. -{role} 'python3 x.py'")
    return argv


def shipped_name(path: str | os.PathLike[str]) -> str:
    """The name a `-file` has in the task's working directory: its own name."""
    name = Path(path).name
    if not SHIPPED_NAME.match(name):
        raise ValueError(
            f"-file {path}: a shipped file's name may hold only letters, digits, '.', '_' "
            "and '-' (it becomes a file in the task's working directory): rename it"
        )
    if TASK_FILES.match(name):
        raise ValueError(
            f"-file {path}: {name!r} is a name the task itself uses (split, out, in-*, "
            "part-*): rename it"
        )
    return name


def input_files(specs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files that `-input` arguments name, in order: a file; a directory's files (not its
    subdirectories, not names starting with `_` or `.`, as Hadoop skips them); a glob; or
    several of these joined by commas, as Hadoop's FileInputFormat reads them."""
    files: list[Path] = []
    for spec in specs:
        text = os.fspath(spec)
        parts = [text] if os.path.exists(text) or "," not in text else text.split(",")
        for part in parts:
            path = Path(part)
            if path.is_file():
                files.append(path)
            elif path.is_dir():
                files += sorted(
                    p for p in path.iterdir() if p.is_file() and not p.name.startswith(("_", "."))
                )
            elif glob.has_magic(part) and (found := sorted(glob.glob(part))):
                files += [Path(p) for p in found if os.path.isfile(p)]
            else:
                raise FileNotFoundError(f"no input {part}: give a file, a directory or a glob")
    return files


def check_output(out: Path) -> None:
    """Hadoop refuses to write into an output directory that exists; fogwheel allows an
    empty one."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"output directory {out} already exists: remove it or give another -output"
        )


def run_streaming(
    client: Client,
    job: Streaming,
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    split_mb: float | None = None,
    progress: Progress | None = None,
    backups: bool = True,
) -> Result:
    """Run `job` over `inputs` (files, directories, globs) on the fog; write
    `output/part-00000`… and `output/_SUCCESS`.

    Splits are about `split_mb` MB of whole lines (default: 16, less for a small input, so
    that every slot of the live nodes gets two). Raises `JobFailed` when a task fails (a
    command's non-zero exit, with its stderr), FileNotFoundError for a missing input,
    FileExistsError when `output` exists and is not empty."""
    paths = input_files(inputs)
    out = Path(output)
    check_output(out)
    report = progress or (lambda phase, done, total: None)
    shipped = {shipped_name(f): client.put_blob(f) for f in job.files}
    total_bytes = sum(p.stat().st_size for p in paths)
    if split_mb is None:
        split_mb = default_split_mb(total_bytes, live_slots(client))
    seconds: dict[str, float] = {}
    with timed(seconds, "split"):
        pieces = line_splits(paths, max(1, int(split_mb * 1024 * 1024)))
        splits = upload_splits(client, pieces, total_bytes, report)

    def phase(name: str, fn: Any, inputs: list[dict[str, Blob]], outs: list[str]) -> Any:
        with timed(seconds, name):
            futures = client.submit_many(
                fn,
                [((), {}) for _ in inputs],
                name=f"{job.describe()}: {name}",
                inputs=inputs,
                outputs=outs,
                memory_mb=job.memory_mb,
                wall_s=job.wall_s,
                backups=backups,
                # a command's failure is rebuilt from its message: plain text, safe to trust
                trusted_types=(StreamingCommandFailed,),
            )
            return collect(client, name, futures, report), futures[0].job_id

    r_count = job.partitions
    names = [part_name(r) for r in range(r_count)] or ["out"]
    combiner = None if job.combiner is None else argv_of("combiner", job.combiner)
    mapper = StreamingMap(argv_of("mapper", job.mapper), combiner, r_count, tuple(shipped))
    maps, map_job = phase("map", mapper, [{**shipped, "split": s} for s in splits], names)
    reduce_job = None
    if r_count == 0:
        outputs = [res.files["out"] for res in maps]
    else:
        reducer = None if job.reducer is None else argv_of("reducer", job.reducer)
        # reduce task r reads partition r of every map task (an empty one adds nothing)
        reduce_inputs = [
            {
                **shipped,
                **{
                    f"in-{m:05d}": res.files[names[r]]
                    for m, res in enumerate(maps)
                    if res.files[names[r]].size
                },
            }
            for r in range(r_count)
        ]
        task = StreamingReduce(reducer, tuple(shipped))
        reduces, reduce_job = phase("reduce", task, reduce_inputs, ["out"])
        outputs = [res.files["out"] for res in reduces]
    with timed(seconds, "output"):
        written = fetch_parts(client, outputs, out, report)
    return Result(
        paths=written,
        splits=len(splits),
        partitions=r_count,
        input_bytes=total_bytes,
        output_bytes=sum(b.size for b in outputs),
        seconds=seconds,
        map_job=map_job,
        reduce_job=reduce_job,
    )
