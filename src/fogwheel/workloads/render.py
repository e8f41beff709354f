"""Distributed POV-Ray rendering: POV-Ray's own options, frames split into row bands, stitched.

The options are read as POV-Ray 3.7 reads them (`povray_options`: its default INI file, then
switches, INI settings and INI files in order) and planned (`render_plan`). Each band of each
frame is one command task for a node that advertises `povray` (`needs=["povray"]`): POV-Ray
with the vetted options, the frame (`+SF`/`+EF`) and the band's rows (`+SR`/`+ER`, 1-based,
inclusive, starting on a render-block boundary so the pixels equal a whole-frame render's:
see `render_plan`). The node's POV-Ray reads no INI file of the node's owner (`POVINI` names
an empty one) and its home is the task's scratch directory, so the owner's settings change
no pixel and the scene's file I/O stays in the scratch (POV-Ray's `povray.conf` permits
`%HOME%` and `.`, and the sandbox the rest).

POV-Ray 3.7 writes a full-size image for a band, the rows outside it black, and stamps every
file with its render date (PNG `tIME`, PPM comments). Replicas are compared byte for byte, so
a band is rendered as a PPM (8 or 16 bits, the same samples as POV-Ray's PNG; an uncompressed
Targa with `+UA`, whose BGRA samples are those of POV-Ray's RGBA PNG), POV-Ray's console
output goes to a log, and the task cuts the band's own rows out (`tail -c | head -c`): the
same bytes on every node, and only the band's rows travel back.
`stitch` joins the bands into one PNG per frame, named as POV-Ray names its frames.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

from fogwheel.workloads.png import Image, PngError, colour_chunks, decode_png, encode_png
from fogwheel.workloads.povray_options import (
    OptionError,
    Setting,
    read_arguments,
    read_ini_text,
    resolve,
)
from fogwheel.workloads.render_plan import (
    INCLUDE_DIR,
    SAFE_NAME,
    Band,
    RenderPlan,
    band_unsafe_features,
    frame_name,
    plan_bands,
    plan_render,
)

__all__ = [
    "BAND_FILE",
    "Image",
    "OptionError",
    "PngError",
    "RenderPlan",
    "decode_png",
    "encode_png",
    "include_files",
    "output_paths",
    "plan_bands",
    "plan_from_arguments",
    "render",
    "render_planned",
    "scene_warnings",
    "stitch",
]

BAND_FILE = "band.rgb"  # the band's rows, raw RGB samples, top to bottom
MEMORY_MB = 512  # POV-Ray 3.7 cannot start under a 256 MB address-space limit
POVLIBDIR = "/usr/share/povray-3.7"  # Debian's; POV-Ray adds its include/ when no INI is found
TGA_HEADER = 18  # bytes before the pixels of POV-Ray's uncompressed Targa (no image id)
INCLUDE_MAX_FILES = 2000  # an --include folder with more files is refused
INCLUDE_MAX_BYTES = 1 << 30


# -- reading the options (the customer's machine) --------------------------------------------


def default_ini(env: Mapping[str, str], cwd: Path) -> Path | None:
    """The INI file POV-Ray 3.7 on Unix reads before the command line (`vfe/unix/
    unixoptions.cpp`, `Process_povray_ini`): $POVINI, ./povray.ini, the user's, the system's."""
    home = env.get("HOME", "")
    candidates = [env["POVINI"]] if env.get("POVINI") else []
    candidates += [str(cwd / "povray.ini")]
    if home:
        candidates.append(f"{home}/.povray/3.7/povray.ini")
    candidates += ["/etc/povray/3.7/povray.ini", "/usr/local/etc/povray/3.7/povray.ini"]
    if home:
        candidates.append(f"{home}/.povrayrc")
    return next((Path(c) for c in candidates if Path(c).is_file()), None)


def plan_from_arguments(
    arguments: Sequence[str],
    include: str | os.PathLike[str] | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> RenderPlan:
    """Read POV-Ray's arguments (`scene.pov +A0.3 opts.ini[Hi] Declare=R=2`) after POV-Ray's
    default INI file, and plan the render; an `OptionError` says what is refused and why."""
    cwd = cwd or Path.cwd()
    env = os.environ if env is None else env

    def read_text(name: str) -> str:
        # POV-Ray looks for an INI file where it is named, then in its own ini/ folder
        found = [cwd / name] + ([Path(POVLIBDIR, "ini", name)] if "/" not in name else [])
        path = next((p for p in found if p.is_file()), found[0])
        try:
            if path.stat().st_size > 1 << 20:
                raise OptionError(f"the INI file {name} is larger than 1 MiB")
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise OptionError(f"cannot read the INI file {name}: {e.strerror}") from None

    ini = default_ini(env, cwd)
    if ini is not None:
        settings = read_ini_text(read_text(str(ini)), str(ini), None, read_text)
    else:
        settings = [Setting("Library_Path", f"{POVLIBDIR}/include", "POV-Ray's default")]
    settings += read_arguments(arguments, read_text)
    folder = None if include is None else str((cwd / include).resolve())
    plan = plan_render(resolve(settings), folder, str(cwd.resolve()))
    _check_scene(cwd / plan.scene)
    return plan


def _check_scene(scene: Path) -> None:
    """The scene must be a file whose name can travel (it keeps its name on the node)."""
    if not scene.is_file():
        raise OptionError(f"no scene file {scene}: name a .pov file that exists")
    if not SAFE_NAME.match(scene.name):
        raise OptionError(
            f"the scene's file name {scene.name!r} cannot be shipped: use letters, digits, "
            "'.', '_' and '-' only, starting with a letter or digit"
        )


def include_files(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """The files of an `--include` folder by the names they get on a node (`include/...`)."""
    root = Path(folder)
    if not root.is_dir():
        raise OptionError(f"--include {folder}: not a folder")
    files: dict[str, Path] = {}
    total = 0
    for top, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(top, name)
            rel = path.relative_to(root).as_posix()
            if not path.is_file():
                continue
            if not all(SAFE_NAME.match(part) for part in rel.split("/")) or len(rel) > 180:
                raise OptionError(
                    f"--include {folder}: the file name {rel!r} cannot be shipped "
                    "(letters, digits, '.', '_' and '-' only, starting with a letter or digit)"
                )
            total += path.stat().st_size
            files[f"{INCLUDE_DIR}/{rel}"] = path
            if len(files) > INCLUDE_MAX_FILES or total > INCLUDE_MAX_BYTES:
                raise OptionError(
                    f"--include {folder}: more than {INCLUDE_MAX_FILES} files or 1 GiB; "
                    "ship only the folder the scene reads"
                )
    return files


def output_paths(plan: RenderPlan, out: str | os.PathLike[str] | None, cwd: Path) -> list[Path]:
    """Where each frame goes (relative to `cwd` when named so), named as POV-Ray 3.7 names
    them: `--out` or `Output_File_Name` (a folder when it ends in `/` or is one), else the
    scene's name beside the scene."""
    scene = Path(plan.scene)
    base = os.fspath(out) if out is not None else plan.output
    if base is None:
        folder, name = scene.parent, scene.stem
    elif base.endswith("/") or (cwd / base).is_dir():
        folder, name = Path(base), scene.stem
    else:
        folder, name = Path(base).parent, Path(base).name
    return [folder / frame_name(name, f, plan.final_frame) for f in plan.frames]


def scene_warnings(plan: RenderPlan, include: str | os.PathLike[str] | None, cwd: Path) -> str:
    """A sentence for the user when the scene uses what bands cannot render exactly, else ''."""
    texts = []
    for path in [cwd / plan.scene, *(include_files(cwd / include).values() if include else [])]:
        if path.suffix.lower() in (".pov", ".inc", ".mcr") and path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace")[: 1 << 22])
    found = band_unsafe_features(texts)
    if not found:
        return ""
    return (
        f"the scene uses {' and '.join(found)}, whose pixels depend on how the frame is split: "
        "bands may differ from one whole-frame render; --bands 1 renders each frame whole"
    )


# -- the task (a node) ------------------------------------------------------------------------


def band_command(plan: RenderPlan, scene: str, band: Band, frame: int | None) -> list[str]:
    """The command line that renders one band of one frame and leaves its rows in `BAND_FILE`."""
    first, last = band
    povray = ["povray", f"+I{scene}", *plan.node_options]
    if frame is not None:
        povray += [f"+SF{frame}", f"+EF{frame}"]
    povray += [f"+SR{first}", f"+ER{last}", "-D", "-P", "+WT1"]
    row = plan.width * (4 if plan.alpha else 3) * plan.depth // 8
    length = (last - first + 1) * row
    if plan.alpha:  # uncompressed Targa: an 18-byte header, BGRA rows from the top, a footer
        povray += ["+FT", "+UA", "+Ofogwheel-band.tga"]
        take = f'tail -c +{TGA_HEADER + (first - 1) * row + 1} "$1" | head -c {length}'
    else:  # PPM: a header, then the rows, which end the file
        povray += [f"+FP{plan.depth}", "+Ofogwheel-band.ppm"]
        take = f'tail -c {(plan.height - first + 1) * row} "$1" | head -c {length}'
    # POV-Ray's console output carries timings, and replicas must agree on stdout and stderr
    # too: it goes to a log that only a failure shows.
    run = (
        ': >fogwheel-empty.ini && HOME="$PWD" POVINI=fogwheel-empty.ini '
        f"{shlex.join(povray)} >fogwheel-povray.log 2>&1 "
        "|| { s=$?; tail -n 40 fogwheel-povray.log >&2; exit $s; }"
    )
    cut = f"set -- fogwheel-band*; {take} >{BAND_FILE}"
    return ["sh", "-c", f"{run}; {cut}"]


# -- stitching (pure) -------------------------------------------------------------------------


def stitch(
    parts: Sequence[tuple[Band, bytes]],
    width: int,
    height: int,
    depth: int = 8,
    file_gamma: float | None = None,
    alpha: bool = False,
    area: Band | None = None,
) -> bytes:
    """Join bands of raw rows (`BAND_FILE`s: RGB, or Targa's BGRA with `alpha`) into one PNG;
    rows outside the render `area` are black (and opaque), as POV-Ray writes them."""
    stride = width * (4 if alpha else 3) * depth // 8
    first, last = area or (1, height)
    outside = b"\x00\x00\x00\xff" * width if alpha else bytes(stride)  # black, opaque
    rows: list[bytes | None] = [None] * height
    rows[: first - 1] = [outside] * (first - 1)
    rows[last:] = [outside] * (height - last)
    for (top, bottom), data in parts:
        if len(data) != (bottom - top + 1) * stride:
            raise PngError(f"band {top}-{bottom} is {len(data)} bytes, not {bottom - top + 1} rows")
        for y in range(top, bottom + 1):
            rows[y - 1] = data[(y - top) * stride : (y - top + 1) * stride]
    missing = [y + 1 for y, row in enumerate(rows) if row is None]
    if missing:
        raise PngError(f"no band covers rows {missing[:5]}{'…' if len(missing) > 5 else ''}")
    chunks = colour_chunks(file_gamma, depth)
    full = [
        row if not alpha or first - 1 > y or y >= last else _rgba(row)
        for y, row in enumerate(rows)
        if row is not None
    ]
    return encode_png(Image(width, 4 if alpha else 3, 6 if alpha else 2, full, chunks, depth))


def _rgba(bgra: bytes) -> bytes:
    """A Targa row (blue, green, red, alpha) in PNG's order (red, green, blue, alpha)."""
    out = bytearray(bgra)
    out[0::4], out[2::4] = bgra[2::4], bgra[0::4]
    return bytes(out)


# -- on the fog -------------------------------------------------------------------------------


def render_planned(
    client: Any,
    plan: RenderPlan,
    bands: int = 8,
    out: str | os.PathLike[str] | None = None,
    include: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    wall_s: float = 600.0,
    cwd: Path | None = None,
) -> list[Path]:
    """Render `plan` on the fog, up to `bands` row bands per frame, and write the frames.

    One job of (frames times bands) command tasks goes to nodes that have `povray`; each finished
    band calls `progress(done, total)`. Returns the paths written (`output_paths`). A band
    that fails raises the client's `CommandFailed` with POV-Ray's output.
    """
    cwd = cwd or Path.cwd()
    scene = cwd / plan.scene
    _check_scene(scene)
    paths = output_paths(plan, out, cwd)
    inputs: dict[str, Path] = {scene.name: scene}
    if include is not None:
        inputs |= include_files(cwd / include)
    first, last = plan.rows
    planned = plan_bands(last, bands, plan.block, first)
    work = [(f, band) for f in plan.frames for band in planned]
    futures = client.run_many(
        [band_command(plan, scene.name, band, frame) for frame, band in work],
        inputs=[inputs for _ in work],
        outputs=[BAND_FILE],
        needs=["povray"],
        memory_mb=MEMORY_MB,
        wall_s=wall_s,
        name=f"render {scene.name}",
    )
    index = {fut: i for i, fut in enumerate(futures)}
    done: dict[int, bytes] = {}
    if progress:
        progress(0, len(work))
    for fut in as_completed(futures):
        done[index[fut]] = fut.result().outputs[BAND_FILE]
        if progress:
            progress(len(done), len(work))
    for frame, path in zip(plan.frames, paths, strict=True):
        parts = [(band, done[i]) for i, (f, band) in enumerate(work) if f == frame]
        (cwd / path).parent.mkdir(parents=True, exist_ok=True)
        png = stitch(
            parts, plan.width, plan.height, plan.depth, plan.file_gamma, plan.alpha, plan.rows
        )
        (cwd / path).write_bytes(png)
    return paths


def render(
    client: Any,
    arguments: Sequence[str],
    bands: int = 8,
    out: str | os.PathLike[str] | None = None,
    include: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    wall_s: float = 600.0,
) -> list[Path]:
    """Render with POV-Ray's own arguments (`["scene.pov", "+W640", "+H480", "+A0.3"]`) on
    the fog, as `povray` would on this machine; returns the PNGs written."""
    cwd = Path.cwd()
    plan = plan_from_arguments(arguments, include, cwd)
    return render_planned(client, plan, bands, out, include, progress, wall_s, cwd)
