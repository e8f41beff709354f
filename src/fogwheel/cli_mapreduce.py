"""`fogwheel mapreduce wordcount|grep|run`, and the progress bars `fogwheel kmer` uses too.

`run FILE.py:NAME` loads the job with `mapreduce.loader` (definitions only: the file's own
top-level work never runs here). `mapreduce streaming` is cli_streaming.py's.
docs/mapreduce.md tells the whole story.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from fogwheel import cli_waits as waits
from fogwheel.cli import (
    ApiKeyOpt,
    CoordinatorOpt,
    LocalOpt,
    MaxCostOpt,
    ReplicasOpt,
    _client,
    _fail,
    _replicas,
    err,
    out,
)

mapreduce_app = typer.Typer(
    help="MapReduce on the fog: built-in wordcount and grep, your own job, or Hadoop "
    "Streaming's mapper and reducer commands.",
    no_args_is_help=True,
)

InputsArg = Annotated[
    list[Path], typer.Argument(exists=True, dir_okay=False, help="Input text files.")
]
SplitOpt = Annotated[float, typer.Option(min=0.01, help="Split size, MB: one map task a split.")]
PartitionsOpt = Annotated[
    int | None,
    typer.Option(min=1, max=100, help="Reduce tasks (default: one a slot of the live nodes)."),
]
BackupsOpt = Annotated[
    bool,
    typer.Option(help="Near the end of a phase, run backup copies of straggling tasks."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="End with one JSON line of figures.")]
PHASE_LABELS = {
    "split": "splitting and uploading",
    "map": "map",
    "reduce": "reduce",
    "output": "fetching the output",
}


def register(app: typer.Typer) -> None:
    from fogwheel import cli_streaming  # noqa: F401 - adds `mapreduce streaming`

    app.add_typer(mapreduce_app, name="mapreduce")


@contextlib.contextmanager
def phase_bars() -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar per phase on stderr; yields the `progress(phase, done, total)` to give
    `mapreduce.run` or `run_streaming`."""
    from rich.progress import BarColumn, Progress, TimeElapsedColumn

    with Progress(
        "{task.description:<26}",
        BarColumn(),
        "{task.fields[count]}",
        TimeElapsedColumn(),
        waits.notice.column(),  # why it waits, while it does (cli_waits.py)
        console=err,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(PHASE_LABELS.get(phase, phase), total=total, count="")
            if phase in ("split", "output"):
                count = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB"
            else:
                count = f"{done}/{total} tasks"
            bar.update(tasks[phase], completed=done, total=total, count=count)

        yield progress


def _summary(what: str, result: Any, where: str) -> None:
    mb = result.input_bytes / 1e6
    secs = result.total_seconds
    jobs = [j for j in (result.map_job, result.reduce_job) if j is not None]
    out.print(
        f"{what}: {mb:.1f} MB in {secs:.1f} s ({mb / max(secs, 1e-9):.1f} MB/s), "
        f"{_plural(result.splits, 'map task')}, {_plural(result.partitions, 'reduce task')} "
        f"({'job' if len(jobs) == 1 else 'jobs'} {' and '.join(map(str, jobs))})",
        highlight=False,
        markup=False,
    )
    out.print(f"wrote {where}", highlight=False, soft_wrap=True, markup=False)


def _run_mapreduce(
    job: Any,
    inputs: list[Path],
    out_path: Path,
    *,
    split_mb: float | None,
    partitions: int | None,
    backups: bool,
    coordinator: str | None,
    api_key: str | None,
    local: int,
    replicas: str,
    as_json: bool,
) -> Any:
    """Run `job` with a progress bar per phase; print where the output went."""
    from fogwheel import mapreduce
    from fogwheel.errors import FogwheelError

    with _client(coordinator, api_key, local, _replicas(replicas)) as client, phase_bars() as bar:
        try:
            result = mapreduce.run(
                client,
                job,
                inputs,
                out_path,
                partitions=partitions,
                split_mb=split_mb,
                progress=bar,
                backups=backups,
            )
        except (FogwheelError, ValueError, OSError) as e:
            raise _fail(str(e)) from None
    where = out_path if job.output == "file" else f"{out_path}/ ({len(result.paths)} part files)"
    _summary(job.describe(), result, str(where))
    if as_json:
        print(
            json.dumps(
                {
                    "job": job.describe(),
                    "input_bytes": result.input_bytes,
                    "output_bytes": result.output_bytes,
                    "splits": result.splits,
                    "partitions": result.partitions,
                    "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
                    "paths": [str(p) for p in result.paths],
                }
            ),
            flush=True,
        )
    return result


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _top_lines(paths: list[Path], n: int) -> None:
    """The `n` most frequent keys of `key<TAB>count` part files."""
    import heapq

    def rows() -> Iterator[tuple[int, str]]:
        for p in paths:
            with open(p, "rb") as f:
                for line in f:
                    key, _, count = line.rstrip(b"\n").rpartition(b"\t")
                    yield int(count), key.decode("utf-8", "replace")

    top = heapq.nlargest(n, rows())
    if top:
        table = Table(title=f"top {len(top)}")
        table.add_column("key")
        table.add_column("count", justify="right")
        for count, key in top:
            table.add_row(Text(key), str(count))
        out.print(table)


@mapreduce_app.command("wordcount")
def mr_wordcount(
    inputs: InputsArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path(
        "wordcount-out"
    ),
    top: Annotated[int, typer.Option(min=0, help="Print the N most frequent words.")] = 10,
    split_mb: SplitOpt = None,
    partitions: PartitionsOpt = None,
    backups: BackupsOpt = True,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    local: LocalOpt = 0,
    replicas: ReplicasOpt = "adaptive",
    max_cost: MaxCostOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Count every whitespace-separated word of the inputs: `word<TAB>count` part files.

    Example: fogwheel mapreduce wordcount examples/pydocs.txt --out counts --local 2
    """
    from fogwheel.mapreduce import WordCount

    result = _run_mapreduce(
        WordCount(),
        inputs,
        out_dir,
        split_mb=split_mb,
        partitions=partitions,
        backups=backups,
        coordinator=coordinator,
        api_key=api_key,
        local=local,
        replicas=replicas,
        as_json=as_json,
    )
    if top and not as_json:
        _top_lines(result.paths, top)


@mapreduce_app.command("grep")
def mr_grep(
    pattern: Annotated[str, typer.Argument(help="A Python regular expression.")],
    inputs: InputsArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path(
        "grep-out"
    ),
    ignore_case: Annotated[bool, typer.Option("--ignore-case", "-i")] = False,
    top: Annotated[int, typer.Option(min=0, help="Print the N most frequent matches.")] = 10,
    split_mb: SplitOpt = None,
    partitions: PartitionsOpt = None,
    backups: BackupsOpt = True,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    local: LocalOpt = 0,
    replicas: ReplicasOpt = "adaptive",
    max_cost: MaxCostOpt = None,
) -> None:
    """Count every distinct match of PATTERN in the inputs: `match<TAB>count` (Hadoop's grep).

    Example: fogwheel mapreduce grep 'colou?r' examples/pydocs.txt --out colours --local 2
    """
    from fogwheel.mapreduce import Grep

    try:
        job = Grep(pattern, ignore_case=ignore_case)
    except ValueError as e:
        raise _fail(str(e)) from None
    result = _run_mapreduce(
        job,
        inputs,
        out_dir,
        split_mb=split_mb,
        partitions=partitions,
        backups=backups,
        coordinator=coordinator,
        api_key=api_key,
        local=local,
        replicas=replicas,
        as_json=False,
    )
    if top:
        _top_lines(result.paths, top)


@mapreduce_app.command("run")
def mr_run(
    job_ref: Annotated[
        str,
        typer.Argument(
            metavar="FILE.py:NAME",
            help="A Python file and the name of the job in it (a fogwheel.mapreduce.Job). "
            "Only the file's imports, definitions, constant assignments and NAME = … run "
            "here; its other top-level code (a main loop) never does.",
        ),
    ],
    inputs: InputsArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output directory or file.")] = (
        Path("mapreduce-out")
    ),
    split_mb: SplitOpt = None,
    partitions: PartitionsOpt = None,
    backups: BackupsOpt = True,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    local: LocalOpt = 0,
    replicas: ReplicasOpt = "adaptive",
    max_cost: MaxCostOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run your own MapReduce job, defined in a Python file.

    Example: fogwheel mapreduce run examples/mapreduce_wordlengths.py:job examples/words.txt
    """
    from fogwheel.mapreduce import Job

    job = _load_job(job_ref)
    if not isinstance(job, Job):
        raise _fail(f"{job_ref} is a {type(job).__name__}, not a fogwheel.mapreduce.Job")
    _run_mapreduce(
        job,
        inputs,
        out_dir,
        split_mb=split_mb,
        partitions=partitions,
        backups=backups,
        coordinator=coordinator,
        api_key=api_key,
        local=local,
        replicas=replicas,
        as_json=as_json,
    )


def _load_job(ref: str) -> Any:
    """NAME of FILE.py, by `mapreduce.loader` (its definitions only), or the CLI's error."""
    from fogwheel.mapreduce import loader

    path, _, name = ref.rpartition(":")
    if not path or not name:
        raise _fail(f"expected FILE.py:NAME, got {ref!r}")
    file = Path(path)
    if not file.is_file():
        raise _fail(f"no such file: {file}")
    try:
        return loader.load(file, name)
    except loader.Refused as e:
        raise _fail(str(e)) from None
    except SyntaxError as e:
        raise _fail(f"{file} line {e.lineno} is not Python: {e.msg}") from None
    except KeyError:
        raise _fail(
            f'{file} has no {name!r} (outside `if __name__ == "__main__":`): define it '
            "there, or name another as FILE.py:NAME"
        ) from None
    except Exception as e:
        raise _fail(f"{file} failed to load: {type(e).__name__}: {e}") from None
