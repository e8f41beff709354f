"""What a render is, decided from POV-Ray's resolved options: size, frames, bands, file names.

Pure: the caller has read the files (`povray_options.read_arguments`) and resolved the paths.

Why bands give the same pixels as one whole-frame render (POV-Ray 3.7,
`source/backend/render/tracetask.cpp`): POV-Ray traces the image in render blocks
(`Render_Block_Size`, `+BS`, 32 pixels square by default), laid out from the render area's
top-left corner, and each block is traced on its own. Antialiasing method 1 compares a pixel
with its left and upper neighbours *inside the block* (it traces the row above and the column
left of the block afresh and never supersamples them), so a block's pixels depend on where
the block edges are: a band that starts mid-block comes out different along its first and
last rows. Method 2 subdivides each pixel from its own corners, and jitter is a function of
the sample's position (`Jitter2d`), so neither depends on the neighbours. Bands here
therefore start on block boundaries (`plan_bands(..., block)`): each band is made of exactly
the blocks of the whole frame, traced the same way, and every pixel is the same. Scene features
that share state between blocks (radiosity's cache, `crand`) are not covered by this argument;
`--bands 1` renders each frame whole on one node.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from fogwheel.workloads.povray_options import (
    ALPHA,
    OptionError,
    Resolved,
    Setting,
    forwarded,
    is_on,
    number,
)

Band = tuple[int, int]  # (first row, last row), 1-based and inclusive as POV-Ray counts them

DEFAULT_WIDTH, DEFAULT_HEIGHT = 160, 120  # POV-Ray 3.7's own, when no INI file sets them
DEFAULT_BLOCK = 32  # POV-Ray 3.7's Render_Block_Size
INCLUDE_DIR = "include"  # where `--include DIR` lands in a node's scratch directory
# The Library_Path entries of POV-Ray's own installation (its default INI names them, e.g.
# /usr/share/povray-3.7/include, or /opt/homebrew/share/povray-3.7/include on a Mac): a node
# reads its own copy of the standard files, where Debian or a source build put them (POV-Ray
# skips a library folder that does not exist).
INSTALLED_LIBRARY = re.compile(r"^/(?:[A-Za-z0-9._-]+/)*share/povray-3\.7(/include|/ini)?/?$")
NODE_INSTALLS = ("/usr/share/povray-3.7", "/usr/local/share/povray-3.7")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_PIXELS = 16384 * 16384


@dataclass(frozen=True)
class RenderPlan:
    """Everything a render needs, decided once on the customer's machine."""

    scene: str  # the scene as the customer named it (a local path)
    width: int
    height: int
    block: int  # Render_Block_Size: bands start on multiples of it from the first row
    rows: Band  # the rows rendered (Start_Row, End_Row): all of them unless told otherwise
    depth: int  # bits per colour channel of the PNG written: 8 or 16
    alpha: bool  # Output_Alpha: an RGBA PNG (8 bits only)
    file_gamma: float | None  # None: sRGB (POV-Ray 3.7's default)
    frames: list[int | None]  # frame numbers, or [None] for a still
    final_frame: int  # Final_Frame: the width of the numbers in frame names
    output: str | None  # Output_File_Name, if any (a local path, never sent to a node)
    node_options: list[str]  # `Keyword=value` arguments for every node's POV-Ray

    @property
    def animated(self) -> bool:
        return self.frames != [None]


def plan_render(resolved: Resolved, include: str | None = None, cwd: str = "/") -> RenderPlan:
    """The plan for `resolved` options, `include` the absolute `--include` folder (if any)."""
    last = resolved.last
    scene = last.get("Input_File_Name")
    if scene is None or not scene.value:
        raise OptionError("no scene: name a .pov file, or an INI file with Input_File_Name=")
    if scene.value == "-":
        raise OptionError(f"{scene.source}: a scene from standard input cannot be shipped")
    width = int(number(last.get("Width"), DEFAULT_WIDTH, integer=True))
    height = int(number(last.get("Height"), DEFAULT_HEIGHT, integer=True))
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        culprit = last.get("Width" if width < 1 or "Height" not in last else "Height")
        where = f"{culprit.source}: " if culprit else ""
        raise OptionError(f"{where}an image of {width}x{height} pixels is not one fogwheel renders")
    block = int(number(last.get("Render_Block_Size"), DEFAULT_BLOCK, integer=True))
    if block < 4:
        raise OptionError(
            f"{last['Render_Block_Size'].source}: POV-Ray refuses render blocks under 4 pixels"
        )
    rows = _rows(last.get("Start_Row"), last.get("End_Row"), height)
    depth = _output_depth(last)
    alpha = "Output_Alpha" in last and is_on(last["Output_Alpha"].value)
    if alpha and depth != 8:
        raise OptionError(f"{last['Output_Alpha'].source}: {ALPHA}")
    options = forwarded(resolved)
    options += _library_options(resolved.library_paths, include, cwd)
    if "Include_Header" in last:
        options.append(f"Include_Header={_header(last['Include_Header'])}")
    frames, final = _frames(last)
    gamma = last.get("File_Gamma")
    file_gamma = None if gamma is None or gamma.value.lower() == "srgb" else number(gamma, 2.2)
    output = last["Output_File_Name"].value if "Output_File_Name" in last else None
    return RenderPlan(
        scene.value, width, height, block, rows, depth, alpha, file_gamma, frames, final,
        output, options,
    )  # fmt: skip


def _rows(start: Setting | None, end: Setting | None, height: int) -> Band:
    """The 1-based rows of the render area as POV-Ray 3.7 reads `+SR`/`+ER`: a row number,
    or a fraction of the height when between 0 and 1 (`+SR0.25` on 48 rows: row 13 on)."""
    first, last = 1, height
    if start is not None:
        v = number(start, 1)
        first = int(height * _single(v)) + 1 if 0 < v < 1 else int(v)
    if end is not None:
        v = number(end, height)
        last = int(height * _single(v)) if 0 < v < 1 else min(int(v), height)
    if not 1 <= first <= last <= height:
        culprit = end or start
        where = f"{culprit.source}: " if culprit else ""
        raise OptionError(f"{where}rows {first} to {last} are not rows of a {height}-row image")
    return first, last


def _single(value: float) -> float:
    """`value` rounded to single precision, as POV-Ray keeps a fraction of the image
    (`+ER0.9` on 50 rows ends at row 44: 0.9 in single precision is just under 0.9)."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


def _output_depth(last: Mapping[str, Setting]) -> int:
    """8 or 16 bits per channel, from `Output_File_Type` (+FN, +FN16) and `Bits_Per_Color`."""
    to_file = last.get("Output_to_File")
    if to_file is not None and not is_on(to_file.value):
        raise OptionError(f"{to_file.source}: with no output file there is nothing to bring back")
    kind = last.get("Output_File_Type")
    bits = last.get("Bits_Per_Color")
    depth = int(number(bits, 8, integer=True))
    if kind is not None and kind.value:
        match = re.fullmatch(r"[Nn](\d*)", kind.value.strip())
        if match is None:
            raise OptionError(
                f"{kind.source}: fogwheel writes PNG files only (+FN or +FN16), "
                f"not Output_File_Type={kind.value}"
            )
        depth = int(match.group(1)) if match.group(1) else depth
    if depth not in (8, 16):
        culprit = kind or bits
        where = f"{culprit.source}: " if culprit else ""
        raise OptionError(
            f"{where}fogwheel writes 8- or 16-bit PNG files, not {depth} bits per colour"
        )
    return depth


def _library_options(paths: list[Setting], include: str | None, cwd: str) -> list[str]:
    """`Library_Path` for the node: POV-Ray's installed folders as they are, folders inside the
    shipped `--include` folder mapped into the node's scratch, anything else refused."""
    out = []
    for s in paths:
        value = s.value.rstrip("/") or "/"
        installed = INSTALLED_LIBRARY.match(s.value)
        if installed:
            out += [f"Library_Path={root}{installed.group(1) or ''}" for root in NODE_INSTALLS]
            continue
        path = PurePosixPath(_normal(PurePosixPath(cwd) / value))
        inside = include is not None and (
            path == PurePosixPath(include) or PurePosixPath(include) in path.parents
        )
        if not inside:
            raise OptionError(
                f"{s.source}: Library_Path={s.value} is refused: a node reads only the folder "
                "shipped with --include DIR and POV-Ray's own include folder; "
                f"ship it with --include {s.value}"
            )
        assert include is not None
        mapped = PurePosixPath(INCLUDE_DIR, path.relative_to(include))
        if not all(SAFE_NAME.match(part) for part in mapped.parts):
            raise OptionError(
                f"{s.source}: Library_Path={s.value!r} holds characters fogwheel refuses"
            )
        out.append(f"Library_Path={mapped}")
    if include is not None:
        out.append(f"Library_Path={INCLUDE_DIR}")
    return list(dict.fromkeys(out))  # each folder once, in the order first named


def _normal(path: PurePosixPath) -> str:
    """`path` with `.` and `..` folded away (lexically, as no file is read here)."""
    parts: list[str] = []
    for part in path.parts[1:]:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


def _header(s: Setting) -> str:
    """An `Include_Header` file: a plain relative name, found in the scratch or library path."""
    name = s.value
    if name.startswith("/") or ".." in PurePosixPath(name).parts or not name:
        raise OptionError(
            f"{s.source}: Include_Header={name} is refused: name a file in the scene's folder "
            "or in the --include folder, without '/' at the start or '..'"
        )
    if not all(SAFE_NAME.match(p) for p in PurePosixPath(name).parts):
        raise OptionError(f"{s.source}: Include_Header={name!r} holds characters fogwheel refuses")
    return name


def _frames(last: Mapping[str, Setting]) -> tuple[list[int | None], int]:
    """The frame numbers POV-Ray would render (Initial/Final_Frame, the subset, Frame_Step)."""
    initial = int(number(last.get("Initial_Frame"), 1, integer=True))
    final = int(number(last.get("Final_Frame"), 1, integer=True))
    if final == initial:
        return [None], final
    if final < initial:
        raise OptionError(
            f"{last['Final_Frame'].source}: Final_Frame {final} comes before "
            f"Initial_Frame {initial}"
        )
    step = int(number(last.get("Frame_Step"), 1, integer=True))
    if step < 1:
        raise OptionError(f"Frame_Step must be 1 or more, not {step}")
    start = _subset(last.get("Subset_Start_Frame"), initial)
    end = _subset(last.get("Subset_End_Frame"), final)
    frames: list[int | None] = [f for f in range(initial, final + 1, step) if start <= f <= end]
    if not frames:
        raise OptionError(f"the subset {start} to {end} holds none of frames {initial} to {final}")
    if len(frames) > 100_000:
        raise OptionError(f"{len(frames)} frames is more than fogwheel renders in one go")
    return frames, final


def _subset(s: Setting | None, default: int) -> int:
    if s is None:
        return default
    return int(number(s, default, integer=True))


# -- bands and names ----------------------------------------------------------------------------


def plan_bands(height: int, n: int, block: int = 1, first: int = 1) -> list[Band]:
    """Split rows first..height into at most `n` bands of whole `block`-row blocks counted
    from `first` (the last one may be short), their block counts differing by at most one."""
    if height < first or n < 1 or block < 1 or first < 1:
        raise ValueError(f"need rows {first} to {height}, n and block of at least 1: {n}, {block}")
    blocks = math.ceil((height - first + 1) / block)
    n = min(n, blocks)
    size, extra = divmod(blocks, n)
    bands, start = [], first
    for i in range(n):
        count = size + (1 if i < extra else 0)
        end = min(start + count * block - 1, height)
        bands.append((start, end))
        start = end + 1
    return bands


BAND_UNSAFE = {"radiosity": "radiosity", "crand": "crand"}  # scene keyword -> what it is


def band_unsafe_features(texts: Iterable[str]) -> list[str]:
    """The scene features named in `texts` (the scene and its include files) that carry
    state from block to block, so bands may differ from a whole frame (see the docstring)."""
    found: set[str] = set()
    for text in texts:
        found |= {name for word, name in BAND_UNSAFE.items() if re.search(rf"\b{word}\b", text)}
    return sorted(found)


def frame_name(base: str, frame: int | None, final_frame: int) -> str:
    """The file POV-Ray 3.7 writes for `frame` when told `+O{base}`: `.png` added unless the
    name ends with it, the frame number zero-padded to the digits of `Final_Frame` before it
    (`+Oorbit.png +KFF12` -> `orbit03.png`; a folder, ending in `/`, is the caller's)."""
    stem = base[:-4] if base.endswith(".png") else base
    if frame is None:
        return f"{stem}.png"
    return f"{stem}{frame:0{len(str(final_frame))}d}.png"
