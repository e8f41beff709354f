"""Distributed POV-Ray rendering: a frame split into row bands, one command task each, stitched.

Each band is rendered by `povray` on a node that advertises it (`needs=["povray"]`) with
POV-Ray's start/end row options (`+SR`/`+ER`, 1-based and inclusive). POV-Ray 3.7 writes a
full-size image for a band, the rows outside it black, and stamps every file with its render
date (PNG `tIME` and `tEXt` chunks, PPM and TGA comments). Verification compares output
files, stdout and stderr byte for byte, so a band is rendered as an 8-bit PPM, POV-Ray's
console output goes to a log, and the task cuts the band's own rows of raw RGB off the PPM's
end (`tail -c | head -c`): the same bytes on every node, and only the band's
rows travel back. `stitch` joins the bands into one PNG, written with the standard library.

The stitched frame equals a single-process render pixel for pixel, with one catch that
decides the antialiasing method: POV-Ray's default `+AM1` (adaptive, non-recursive) decides
whether to supersample a pixel by comparing it with neighbours already traced, so the rows at
a band's edge come out differently than in a whole-frame render. `+AM2` (adaptive recursive)
gives identical rows however the frame is split (checked for 2 to 64 bands), so every render
here uses `+A0.3 +AM2`.
"""

from __future__ import annotations

import shlex
import struct
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Band = tuple[int, int]  # (first row, last row), 1-based and inclusive as POV-Ray counts them

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BAND_FILE = "band.rgb"  # the band's rows, raw 8-bit RGB, top to bottom
MEMORY_MB = 512  # POV-Ray 3.7 cannot start under a 256 MB address-space limit
CHANNELS = {0: 1, 2: 3, 6: 4}  # PNG colour type -> samples per pixel (8-bit only)
KEPT_CHUNKS = (b"gAMA", b"sRGB", b"cHRM")  # colour information a decoded PNG keeps
SRGB_CHUNKS = [(b"gAMA", struct.pack(">I", 45455)), (b"sRGB", b"\x00")]  # as POV-Ray tags PNGs


class PngError(ValueError):
    """An image this module cannot read (interlaced, 16-bit, paletted PNG) or a short band."""


# -- planning (pure) --------------------------------------------------------------------------


def plan_bands(height: int, n: int) -> list[Band]:
    """Split rows 1..height into at most `n` contiguous bands whose sizes differ by at most one."""
    if height < 1 or n < 1:
        raise ValueError(f"need a height and a band count of at least 1, not {height} and {n}")
    n = min(n, height)
    size, extra = divmod(height, n)
    bands, start = [], 1
    for i in range(n):
        end = start + size + (1 if i < extra else 0) - 1
        bands.append((start, end))
        start = end + 1
    return bands


def frame_clocks(frames: int) -> list[float | None]:
    """The `clock` of each frame: none for a still, else 0 to 1 inclusive (as `+KFI1 +KFFN`)."""
    if frames < 1:
        raise ValueError(f"need at least one frame, not {frames}")
    if frames == 1:
        return [None]
    return [k / (frames - 1) for k in range(frames)]


def povray_options(
    width: int, height: int, clock: float | None = None, fmt: str = "+FN"
) -> list[str]:
    """The options every band and every reference render share: no display, `+AM2`
    antialiasing (band-safe: see the module docstring), one thread (a task has one core)."""
    opts = [f"+W{width}", f"+H{height}", fmt, "-D", "-P", "+A0.3", "+AM2", "+WT1"]
    if clock is not None:
        opts.append(f"+K{clock!r}")
    return opts


def band_command(scene: str, width: int, height: int, band: Band, clock: float | None) -> list[str]:
    """The command line that renders one band of `scene` and leaves its rows in `BAND_FILE`."""
    first, last = band
    povray = ["povray", f"+I{scene}", "+Oband.ppm", *povray_options(width, height, clock, "+FP8")]
    povray += [f"+SR{first}", f"+ER{last}"]
    from_end = (height - first + 1) * width * 3  # the pixels are the file's last bytes
    length = (last - first + 1) * width * 3
    # POV-Ray's console output carries timings, and replicas must agree on stdout and stderr
    # too: it goes to a log that only a failure shows.
    run = (
        f"{shlex.join(povray)} >povray.log 2>&1 || {{ s=$?; tail -n 40 povray.log >&2; exit $s; }}"
    )
    cut = f"tail -c {from_end} band.ppm | head -c {length} >{BAND_FILE}"
    return ["sh", "-c", f"{run}; {cut}"]


def frame_paths(out: Path, frames: int) -> list[Path]:
    """Where the frames go: `out` for a still, `out-001.png`, `out-002.png`, … for an animation."""
    if frames == 1:
        return [out]
    suffix = out.suffix or ".png"
    return [out.with_name(f"{out.stem}-{k:03d}{suffix}") for k in range(1, frames + 1)]


# -- PNG (pure) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """Decoded 8-bit pixels: `rows[y]` is one row of `width * channels` bytes."""

    width: int
    channels: int
    colour_type: int
    rows: list[bytes]
    extra: list[tuple[bytes, bytes]]  # colour chunks to keep (type, data)

    @property
    def height(self) -> int:
        return len(self.rows)


def decode_png(data: bytes) -> Image:
    """Decode an 8-bit non-interlaced PNG into rows of raw samples (all five row filters)."""
    if not data.startswith(PNG_SIGNATURE):
        raise PngError("not a PNG file")
    pos, header, idat, extra = len(PNG_SIGNATURE), b"", [], []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind in KEPT_CHUNKS:
            extra.append((kind, body))
        elif kind == b"IEND":
            break
    if len(header) != 13:
        raise PngError("PNG without a header chunk")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in CHANNELS or interlace:
        raise PngError(
            f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}"
        )
    bpp = CHANNELS[colour]
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != height * (stride + 1):
        raise PngError(f"PNG pixel data is {len(raw)} bytes, expected {height * (stride + 1)}")
    rows: list[bytes] = []
    prior = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        row = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), prior, bpp)
        rows.append(row)
        prior = row
    return Image(width, bpp, colour, rows, extra)


def _unfilter(kind: int, row: bytearray, prior: bytes, bpp: int) -> bytes:
    """Undo one row's PNG filter (RFC 2083 §6: None, Sub, Up, Average, Paeth)."""
    n = len(row)
    if kind == 0:
        pass
    elif kind == 1:
        for i in range(bpp, n):
            row[i] = (row[i] + row[i - bpp]) & 0xFF
    elif kind == 2:
        for i in range(n):
            row[i] = (row[i] + prior[i]) & 0xFF
    elif kind == 3:
        for i in range(n):
            left = row[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + ((left + prior[i]) >> 1)) & 0xFF
    elif kind == 4:
        for i in range(n):
            a = row[i - bpp] if i >= bpp else 0
            b = prior[i]
            c = prior[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            row[i] = (row[i] + pred) & 0xFF
    else:
        raise PngError(f"unknown PNG row filter {kind}")
    return bytes(row)


def encode_png(image: Image) -> bytes:
    """Write `image` as a PNG (filter None on every row; zlib does the compressing)."""
    header = struct.pack(">IIBBBBB", image.width, image.height, 8, image.colour_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in image.rows)
    chunks = [(b"IHDR", header), *image.extra, (b"IDAT", zlib.compress(raw, 9)), (b"IEND", b"")]
    out = [PNG_SIGNATURE]
    for kind, body in chunks:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc))
    return b"".join(out)


def stitch(parts: Sequence[tuple[Band, bytes]], width: int, height: int) -> bytes:
    """Join bands of raw 8-bit RGB rows (`BAND_FILE`s) into one PNG frame."""
    rows: list[bytes | None] = [None] * height
    stride = width * 3
    for (first, last), data in parts:
        if len(data) != (last - first + 1) * stride:
            raise PngError(f"band {first}-{last} is {len(data)} bytes, not {last - first + 1} rows")
        for y in range(first, last + 1):
            rows[y - 1] = data[(y - first) * stride : (y - first + 1) * stride]
    missing = [y + 1 for y, row in enumerate(rows) if row is None]
    if missing:
        raise PngError(f"no band covers rows {missing[:5]}{'…' if len(missing) > 5 else ''}")
    return encode_png(Image(width, 3, 2, [row for row in rows if row is not None], SRGB_CHUNKS))


# -- on the fog -------------------------------------------------------------------------------


def render(
    client: Any,
    scene_path: str | Path,
    width: int,
    height: int,
    bands: int,
    out: str | Path,
    frames: int = 1,
    progress: Callable[[int, int], None] | None = None,
    wall_s: float = 600.0,
) -> list[Path]:
    """Render `scene_path` on the fog, `bands` row bands per frame, and write the frames.

    One job of `frames * bands` command tasks goes to nodes that have `povray`; each finished
    band calls `progress(done, total)`. Returns the written paths (see `frame_paths`). A band
    that fails raises the client's `CommandFailed` with POV-Ray's output.
    """
    scene = Path(scene_path)
    plan = plan_bands(height, bands)
    clocks = frame_clocks(frames)
    work = [(f, band) for f in range(frames) for band in plan]
    futures = client.run_many(
        [band_command(scene.name, width, height, band, clocks[f]) for f, band in work],
        inputs=[{scene.name: scene} for _ in work],
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
    paths = frame_paths(Path(out), frames)
    for f, path in enumerate(paths):
        parts = [(band, done[i]) for i, (g, band) in enumerate(work) if g == f]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(stitch(parts, width, height))
    return paths
