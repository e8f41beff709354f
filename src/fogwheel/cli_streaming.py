"""`fogwheel mapreduce streaming`: Hadoop Streaming's command line on the fog.

Hadoop's own single-dash options (`-input`, `-output`, `-mapper`, `-reducer`, `-combiner`,
`-file`, `-numReduceTasks`), each also with two dashes; `mapreduce.streaming` does the work.
docs/mapreduce.md ("Hadoop Streaming") tells the whole story.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

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
)
from fogwheel.cli_mapreduce import (
    BackupsOpt,
    JsonOpt,
    SplitOpt,
    _plural,
    _summary,
    mapreduce_app,
    phase_bars,
)


def _hadoop(name: str) -> list[str]:
    """Hadoop's single-dash spelling, and the usual two-dash one."""
    return [f"-{name}", f"--{name}"]


@mapreduce_app.command("streaming")
def mr_streaming(
    inputs: Annotated[
        list[str],
        typer.Option(
            *_hadoop("input"),
            metavar="PATH",
            help="Input: a file, a directory (its files) or a glob; repeat it, or join "
            "several with commas, as in Hadoop.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            *_hadoop("output"),
            metavar="DIR",
            help="Output directory, new or empty: part-00000… and _SUCCESS.",
        ),
    ],
    mapper: Annotated[
        str,
        typer.Option(
            *_hadoop("mapper"),
            metavar="CMD",
            help="Reads input lines on stdin, writes key<TAB>value lines (no tab: all key).",
        ),
    ],
    reducer: Annotated[
        str | None,
        typer.Option(
            *_hadoop("reducer"),
            metavar="CMD",
            help="Reads key<TAB>value lines sorted by key; its stdout is a part file. "
            "Default: none (the sorted map output itself); NONE: map-only.",
        ),
    ] = None,
    combiner: Annotated[
        str | None,
        typer.Option(
            *_hadoop("combiner"),
            metavar="CMD",
            help="Run on each map task's sorted output before the shuffle (like the reducer).",
        ),
    ] = None,
    files: Annotated[
        list[Path] | None,
        typer.Option(
            *_hadoop("file"),
            exists=True,
            dir_okay=False,
            metavar="FILE",
            help="A file placed in every task's working directory (a script the commands "
            "run, a dictionary); repeat it.",
        ),
    ] = None,
    reduce_tasks: Annotated[
        int | None,
        typer.Option(
            *_hadoop("numReduceTasks"),
            min=0,
            max=100,
            metavar="N",
            help="Reduce tasks, one part file each (default 1); 0: map-only, a part file per "
            "map task.",
        ),
    ] = None,
    defines: Annotated[
        list[str] | None,
        typer.Option(
            "-D",
            metavar="KEY=VALUE",
            help="Hadoop's settings: mapreduce.job.reduces (or mapred.reduce.tasks; "
            "-numReduceTasks wins), mapreduce.job.name (or mapred.job.name).",
        ),
    ] = None,
    memory: Annotated[
        int, typer.Option(min=16, help="Memory limit of a task and its commands, MB.")
    ] = 256,
    wall: Annotated[
        float, typer.Option(min=1.0, help="Wall-time limit of a map or reduce task, seconds.")
    ] = 3600.0,
    split_mb: SplitOpt = None,
    backups: BackupsOpt = True,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    local: LocalOpt = 0,
    replicas: ReplicasOpt = "adaptive",
    max_cost: MaxCostOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Hadoop Streaming: your mapper and reducer commands over stdin and stdout, on the fog.

    With one reduce task the output equals `cat INPUT | mapper | LC_ALL=C sort | reducer`.
    Commands are split like a shell splits words (no shell runs them) and run in the nodes'
    sandbox.

    Example: fogwheel mapreduce streaming -input book.txt -output counts -mapper mapper.py
    -reducer reducer.py -file mapper.py -file reducer.py --local 2
    """
    from fogwheel.errors import FogwheelError
    from fogwheel.mapreduce import Streaming, run_streaming
    from fogwheel.mapreduce.streaming import hadoop_settings

    try:
        settings, notes = hadoop_settings(defines or [])
        if reduce_tasks is not None:
            settings["reduce_tasks"] = reduce_tasks
        job = Streaming(
            mapper,
            reducer,
            combiner,
            files=tuple(files or ()),
            memory_mb=memory,
            wall_s=wall,
            **settings,
        )
    except ValueError as e:
        raise _fail(str(e), 2) from None
    for note in notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    failed: str | None = None
    with _client(coordinator, api_key, local, _replicas(replicas)) as client, phase_bars() as bar:
        try:
            result = run_streaming(
                client, job, inputs, output, split_mb=split_mb, progress=bar, backups=backups
            )
        except (FogwheelError, ValueError, OSError) as e:
            failed = str(e)  # said once the progress bars are gone
    if failed is not None:
        first, _, stderr = failed.partition("\n")
        exit_ = _fail(first)
        if stderr.strip():  # the end of a command's stderr, as it wrote it, after the error
            sys.stderr.write(stderr if stderr.endswith("\n") else stderr + "\n")
        raise exit_
    _summary(job.describe(), result, f"{output}/ ({_plural(len(result.paths), 'part file')})")
    if as_json:
        figures = {
            "job": job.describe(),
            "input_bytes": result.input_bytes,
            "output_bytes": result.output_bytes,
            "splits": result.splits,
            "reduce_tasks": result.partitions,
            "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
            "paths": [str(p) for p in result.paths],
        }
        print(json.dumps(figures), flush=True)
