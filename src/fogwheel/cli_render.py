"""`fogwheel render SCENE [-- POVRAY_OPTIONS…]`: POV-Ray on the fog, with POV-Ray's options.

The arguments are POV-Ray's own, read as `povray` reads them (after its default INI file):
a scene (`scene.pov`), switches (`+W640 +H480 +A0.3 +AM2 +R3 -J +KFI1 +KFF24`), settings
(`Declare=R=2`) and INI files (`scene.ini`, `anim.ini[Low]`). Switches that start with `-`
come after `--`, so that they are not read as fogwheel's options. The frames written equal
what `povray` writes on one machine with the same arguments, named as it names them.
docs/render.md says which options are refused and why.
"""

from __future__ import annotations

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
    out,
)
from fogwheel.cli import waits as waits

USAGE_ERROR = 2  # as Click exits on a bad command line


def render(
    arguments: Annotated[
        list[str],
        typer.Argument(
            help="POV-Ray's arguments: the scene (.pov) or an INI file, then switches "
            "(+W640 +A0.3 +AM2 +R3 +KFI1 +KFF24), settings (Declare=R=2) and INI files "
            "(opts.ini, anim.ini[Low]); put switches that start with '-' after '--'.",
            show_default=False,
        ),
    ],
    bands: Annotated[
        int,
        typer.Option(
            min=1,
            help="Row bands per frame, one task each (at most one per render block, "
            "+BS, 32 rows by default).",
        ),
    ] = 8,
    image: Annotated[
        str | None,  # a str keeps the '/' that says "a folder"
        typer.Option(
            "--out",
            "-o",
            help="The PNG to write, or a folder ending in '/' (default: as POV-Ray names it, "
            "beside the scene; frames get numbers as POV-Ray numbers them: scene01.png …).",
            show_default=False,
        ),
    ] = None,
    include: Annotated[
        Path | None,
        typer.Option(
            "--include",
            exists=True,
            file_okay=False,
            help="A folder of the scene's own #include files, textures and height fields, "
            "shipped to the nodes and read there through POV-Ray's library path.",
            show_default=False,
        ),
    ] = None,
    width: Annotated[
        int | None, typer.Option(min=1, help="Image width in pixels, as +W (wins over +W).")
    ] = None,
    height: Annotated[
        int | None, typer.Option(min=1, help="Image height in pixels, as +H (wins over +H).")
    ] = None,
    frames: Annotated[
        int | None,
        typer.Option(min=1, help="Animation frames, as +KFI1 +KFFN: `clock` runs from 0 to 1."),
    ] = None,
    wall: Annotated[float, typer.Option(help="Wall-time limit per band, seconds.")] = 600.0,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    local: LocalOpt = 0,
    replicas: ReplicasOpt = "adaptive",
    max_cost: MaxCostOpt = None,
) -> None:
    """Render a POV-Ray scene on the fog's nodes that have povray, as povray would here.

    Examples: fogwheel render examples/scenes/spheres.pov +W640 +H480 +A0.3 --out s.png;
    fogwheel render scene.ini --include scene-parts/ -- +KFI1 +KFF24 -J
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from fogwheel.errors import CommandFailed, FogwheelError
    from fogwheel.workloads import render as rendering

    extra = [f"Width={width}"] * (width is not None) + [f"Height={height}"] * (height is not None)
    if frames is not None:
        extra += ["Initial_Frame=1", f"Final_Frame={frames}"]
    try:
        plan = rendering.plan_from_arguments([*arguments, *extra], include)
        warning = rendering.scene_warnings(plan, include, Path.cwd()) if bands > 1 else ""
    except rendering.OptionError as e:
        raise _fail(str(e), USAGE_ERROR) from None
    if warning:
        err.print(f"note: {warning}", highlight=False, soft_wrap=True, markup=False)
    with _client(coordinator, api_key, local, _replicas(replicas)) as client:
        columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        columns += (waits.notice.column(),)  # why it waits, while it does (cli_waits.py)
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(f"rendering {Path(plan.scene).name}", total=None)
            try:
                paths = rendering.render_planned(
                    client,
                    plan,
                    bands,
                    image,
                    include,
                    wall_s=wall,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            except CommandFailed as e:
                if e.result is not None:
                    sys.stderr.write(e.result.stderr[-2000:] or e.result.stdout[-2000:])
                raise _fail(f"a band failed: {e}") from None
            except rendering.OptionError as e:
                raise _fail(str(e), USAGE_ERROR) from None
            except (FogwheelError, rendering.PngError) as e:
                raise _fail(str(e)) from None
    for path in paths:
        out.print(f"wrote {path}", highlight=False, soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    """Add `fogwheel render` to the app."""
    app.command()(render)
