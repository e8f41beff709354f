"""A POV-Ray frame rendered in row bands across the fog equals the same frame rendered whole."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fogwheel import Client
from fogwheel.localfog import LocalFog
from fogwheel.workloads.render import (
    Image,
    PngError,
    decode_png,
    encode_png,
    frame_clocks,
    frame_paths,
    plan_bands,
    povray_options,
    render,
    stitch,
)

SCENES = Path(__file__).resolve().parents[1] / "examples" / "scenes"
STILL = SCENES / "spheres.pov"
ANIMATED = SCENES / "orbit.pov"
W, H = 96, 64

needs_povray = pytest.mark.skipif(shutil.which("povray") is None, reason="povray not installed")


def povray_alone(scene: Path, out: Path, clock: float | None = None) -> Image:
    """The reference: POV-Ray's own single-process render of the whole frame."""
    subprocess.run(
        ["povray", f"+I{scene}", f"+O{out}", *povray_options(W, H, clock)],
        check=True,
        capture_output=True,
        cwd=out.parent,
    )
    return decode_png(out.read_bytes())


def pixels(path: Path) -> list[bytes]:
    return decode_png(path.read_bytes()).rows


# -- planning and stitching (pure) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "n", "bands"),
    [
        (64, 1, [(1, 64)]),
        (64, 4, [(1, 16), (17, 32), (33, 48), (49, 64)]),
        (10, 3, [(1, 4), (5, 7), (8, 10)]),
        (3, 8, [(1, 1), (2, 2), (3, 3)]),  # never more bands than rows
        (1, 1, [(1, 1)]),
    ],
)
def test_bands_cover_every_row_once_in_order_and_differ_by_at_most_one_row(
    height: int, n: int, bands: list[tuple[int, int]]
) -> None:
    assert plan_bands(height, n) == bands


@pytest.mark.parametrize("height", [1, 7, 64, 1080])
@pytest.mark.parametrize("n", [1, 2, 5, 16, 100])
def test_band_plans_tile_the_frame(height: int, n: int) -> None:
    bands = plan_bands(height, n)
    rows = [y for first, last in bands for y in range(first, last + 1)]
    assert rows == list(range(1, height + 1))
    sizes = {last - first + 1 for first, last in bands}
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("height", "n"), [(0, 1), (10, 0)])
def test_an_empty_frame_or_no_bands_is_refused(height: int, n: int) -> None:
    with pytest.raises(ValueError):
        plan_bands(height, n)


def test_animation_clocks_run_from_zero_to_one_and_frames_get_numbered_names() -> None:
    assert frame_clocks(1) == [None]
    assert frame_clocks(3) == [0.0, 0.5, 1.0]
    assert frame_paths(Path("out/img.png"), 1) == [Path("out/img.png")]
    assert frame_paths(Path("out/img.png"), 2) == [Path("out/img-001.png"), Path("out/img-002.png")]


def test_stitch_puts_each_bands_raw_rows_in_place_and_writes_a_png() -> None:
    top, bottom = bytes([10] * 6) * 2, bytes([20] * 6) * 2  # 2 pixels wide, 2 rows each
    png = stitch([((3, 4), bottom), ((1, 2), top)], width=2, height=4)
    assert decode_png(png).rows == [bytes([10] * 6)] * 2 + [bytes([20] * 6)] * 2


def test_stitch_refuses_a_short_band_or_a_gap() -> None:
    with pytest.raises(PngError, match="band 1-2"):
        stitch([((1, 2), bytes(6))], width=2, height=2)
    with pytest.raises(PngError, match="rows \\[2\\]"):
        stitch([((1, 1), bytes(6))], width=2, height=2)


@pytest.mark.parametrize("colour_type", [0, 2, 6])
def test_png_rows_survive_encoding_and_decoding(colour_type: int) -> None:
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    rows = [bytes((x * 7 + y * 13) % 256 for x in range(5 * channels)) for y in range(3)]
    image = Image(5, channels, colour_type, rows, [])
    assert decode_png(encode_png(image)).rows == rows


# -- on a real fog ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fog() -> Iterator[LocalFog]:
    with LocalFog(2) as fog:
        yield fog


@needs_povray
@pytest.mark.parametrize("bands", [3, 7])
def test_a_frame_rendered_in_bands_on_the_fog_equals_povrays_whole_frame_render(
    fog: LocalFog, tmp_path: Path, bands: int
) -> None:
    reference = povray_alone(STILL, tmp_path / "whole.png")
    seen: list[tuple[int, int]] = []
    with Client(fog.url, fog.api_key) as client:
        [out] = render(
            client,
            STILL,
            W,
            H,
            bands,
            tmp_path / "fog.png",
            progress=lambda d, t: seen.append((d, t)),
        )
    assert out == tmp_path / "fog.png"
    assert pixels(out) == reference.rows
    assert seen[0] == (0, bands) and seen[-1] == (bands, bands)


@needs_povray
def test_an_animation_gives_one_png_per_frame_each_equal_to_its_whole_frame_render(
    fog: LocalFog, tmp_path: Path
) -> None:
    with Client(fog.url, fog.api_key) as client:
        paths = render(client, ANIMATED, W, H, 2, tmp_path / "orbit.png", frames=3)
    assert [p.name for p in paths] == ["orbit-001.png", "orbit-002.png", "orbit-003.png"]
    for path, clock in zip(paths, [0.0, 0.5, 1.0], strict=True):
        assert pixels(path) == povray_alone(ANIMATED, tmp_path / f"whole-{clock}.png", clock).rows
    assert pixels(paths[0]) != pixels(paths[1])  # the moon moved


@needs_povray
def test_a_node_killed_mid_render_loses_no_band(tmp_path: Path) -> None:
    reference = povray_alone(STILL, tmp_path / "whole.png")
    killed: list[int] = []

    def kill_a_busy_node(done: int, total: int) -> None:
        if killed or done == 0:
            return
        deadline = time.monotonic() + 10
        while not killed and time.monotonic() < deadline:
            for n in client.nodes():
                i = int(n["name"].split("-")[1])
                if n["held"] > 0 and fog.nodes[i] is not None and fog.nodes[i].poll() is None:
                    fog.kill_node(i, signal.SIGKILL)
                    killed.append(i)
                    break

    with (
        LocalFog(3, lease_seconds=2.0, workdir=tmp_path) as fog,
        Client(fog.url, fog.api_key) as client,
    ):
        [out] = render(client, STILL, W, H, 12, tmp_path / "fog.png", progress=kill_a_busy_node)
        job = client.jobs(limit=1)[0]
        tasks = client.tasks(job["id"], limit=100)
    assert killed, "no node held a band after the first one finished"
    assert pixels(out) == reference.rows
    assert len(tasks) == 12 and all(t["state"] == "done" for t in tasks)
    assert any(h["outcome"] == "lost" for t in tasks for h in t["history"])


@needs_povray
def test_fogwheel_render_local_writes_the_png_and_says_where(tmp_path: Path) -> None:
    out = tmp_path / "cli.png"
    res = subprocess.run(
        [sys.executable, "-m", "fogwheel", "render", str(STILL), "--width", str(W),
         "--height", str(H), "--bands", "4", "--out", str(out), "--local", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert pixels(out) == povray_alone(STILL, tmp_path / "whole.png").rows
    assert str(out) in res.stdout
