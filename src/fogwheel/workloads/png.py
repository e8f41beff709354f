"""PNG reading and writing with the standard library, for rendered frames (8 and 16 bits).

Only what a render needs: non-interlaced, non-paletted images of 8 or 16 bits per sample
(W3C PNG, 2nd edition, §11.2.2 IHDR and §9 filtering). A frame is decoded to compare pixels
with POV-Ray's own output and encoded to write the stitched frame, tagged with the gamma
POV-Ray tags its own PNGs with.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
KEPT_CHUNKS = (b"gAMA", b"sRGB", b"cHRM", b"sBIT")  # colour information a decoded PNG keeps
MAX_PIXELS = 1 << 28  # a decoded image larger than this is refused (bounded work)


class PngError(ValueError):
    """An image this module cannot read (interlaced, paletted, odd depth) or a short band."""


@dataclass(frozen=True)
class Image:
    """Decoded pixels: `rows[y]` is one row of `width * channels * depth / 8` bytes
    (16-bit samples big-endian, as PNG and PPM both store them)."""

    width: int
    channels: int
    colour_type: int
    rows: list[bytes]
    extra: list[tuple[bytes, bytes]]  # colour chunks to keep (type, data)
    depth: int = 8

    @property
    def height(self) -> int:
        return len(self.rows)


def colour_chunks(file_gamma: float | None, depth: int) -> list[tuple[bytes, bytes]]:
    """The colour chunks POV-Ray 3.7 writes: `gAMA` (100000 / gamma), `sRGB` when the file
    gamma is sRGB (`None`), `sBIT` for 16-bit files."""
    gamma = 2.2 if file_gamma is None else file_gamma
    chunks = [(b"gAMA", struct.pack(">I", round(100000 / gamma)))]
    if file_gamma is None:
        chunks.append((b"sRGB", b"\x00"))
    if depth == 16:
        chunks.append((b"sBIT", b"\x10\x10\x10"))
    return chunks


def decode_png(data: bytes) -> Image:
    """Decode a non-interlaced 8- or 16-bit PNG into rows of raw samples (all five filters)."""
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
    if depth not in (8, 16) or colour not in CHANNELS or interlace:
        raise PngError(
            f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}"
        )
    if width * height > MAX_PIXELS:
        raise PngError(f"a {width}x{height} PNG is larger than this reader accepts")
    bpp = CHANNELS[colour] * depth // 8
    stride = width * bpp
    expected = height * (stride + 1)
    inflater = zlib.decompressobj()
    raw = inflater.decompress(b"".join(idat), expected + 1)
    if len(raw) != expected:
        raise PngError(f"PNG pixel data is {len(raw)} bytes, expected {expected}")
    rows: list[bytes] = []
    prior = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        row = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), prior, bpp)
        rows.append(row)
        prior = row
    return Image(width, CHANNELS[colour], colour, rows, extra, depth)


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
    header = struct.pack(
        ">IIBBBBB", image.width, image.height, image.depth, image.colour_type, 0, 0, 0
    )
    raw = b"".join(b"\x00" + row for row in image.rows)
    chunks = [(b"IHDR", header), *image.extra, (b"IDAT", zlib.compress(raw, 9)), (b"IEND", b"")]
    out = [PNG_SIGNATURE]
    for kind, body in chunks:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc))
    return b"".join(out)
