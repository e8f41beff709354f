"""A POV-Ray render on the fog, with POV-Ray's own options, equals `povray`'s own render.

Every reference here is POV-Ray itself, run once on this machine over the whole frame with
the same arguments; the comparison is of decoded pixel arrays.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fogwheel import Client
from fogwheel.localfog import LocalFog
from fogwheel.workloads.render import (
    BAND_FILE,
    Image,
    PngError,
    band_command,
    decode_png,
    encode_png,
    plan_from_arguments,
    render,
    stitch,
)
from fogwheel.workloads.render_plan import plan_bands

SCENES = Path(__file__).resolve().parents[1] / "examples" / "scenes"
SIZE = ["+W64", "+H48"]  # two render blocks tall: two bands at POV-Ray's default +BS32

needs_povray = pytest.mark.skipif(shutil.which("povray") is None, reason="povray not installed")


@pytest.fixture
def scenes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of examples/scenes as the working directory (POV-Ray writes beside the scene)."""
    shutil.copytree(SCENES, tmp_path / "scenes")
    monkeypatch.chdir(tmp_path / "scenes")
    monkeypatch.delenv("POVINI", raising=False)
    return tmp_path / "scenes"


def povray_alone(where: Path, *arguments: str) -> dict[str, list[bytes]]:
    """The reference: `povray ARGUMENTS` run once, whole frames, in a copy of `where`;
    the pixel rows of every PNG it wrote, by file name."""
    alone = where.parent / f"alone-{len(list(where.parent.iterdir()))}"
    shutil.copytree(where, alone)
    before = set(alone.rglob("*.png"))
    env = {k: v for k, v in os.environ.items() if k != "POVINI"}
    subprocess.run(
        ["povray", *arguments, "-D"], cwd=alone, check=True, capture_output=True, env=env
    )
    written = sorted(set(alone.rglob("*.png")) - before)
    assert written, "povray wrote nothing"
    return {p.name: decode_png(p.read_bytes()).rows for p in written}


def pixels(paths: list[Path]) -> dict[str, list[bytes]]:
    return {p.name: decode_png(p.read_bytes()).rows for p in paths}


@pytest.fixture(scope="module")
def fog() -> Iterator[LocalFog]:
    with LocalFog(2) as fog:
        yield fog


# -- exact on the fog -----------------------------------------------------------------------------


@needs_povray
@pytest.mark.parametrize(
    "options",
    [
        [],  # POV-Ray's defaults: no antialiasing
        ["+A0.3"],  # method 1: compares neighbours, so not safe for any split
        ["+A0.3", "+AM2", "+R3"],  # method 2, recursion depth 3
        ["+A0.1", "+AM1", "+J", "+R4", "+BS8"],  # jitter; eight-row blocks, so six bands
        ["+A0.2", "+AM2", "-J", "+Q9", "Declare=Unused=2", "+FN16"],  # 16 bits per channel
        ["+UA", "+A0.3"],  # an alpha channel where the background shows
        ["+SR10", "+ER40", "+SC5", "+EC60", "+A0.3", "+BS8"],  # a partial render
        ["+SR0.3", "+ER0.9", "+UA", "+A0.3", "+BS4"],  # rows as fractions, with alpha
    ],
    ids=[
        "defaults",
        "aa-method-1",
        "aa-method-2-depth-3",
        "jitter-blocks-8",
        "16-bit",
        "alpha",
        "partial",
        "partial-alpha",
    ],
)
def test_a_frame_rendered_in_bands_on_the_fog_equals_povrays_own_render(
    fog: LocalFog, scenes: Path, options: list[str]
) -> None:
    arguments = ["spheres.pov", *SIZE, *options]
    reference = povray_alone(scenes, *arguments)
    seen: list[tuple[int, int]] = []
    with Client(fog.url, fog.api_key) as client:
        paths = render(client, arguments, bands=8, progress=lambda d, t: seen.append((d, t)))
    assert paths == [Path("spheres.png")]  # named and placed as POV-Ray names and places it
    assert pixels(paths) == reference
    plan = plan_from_arguments(arguments)
    bands = len(plan_bands(plan.rows[1], 8, plan.block, plan.rows[0]))
    assert bands > 1 and seen[0] == (0, bands) and seen[-1] == (bands, bands)


@needs_povray
def test_an_animation_gives_each_frame_as_povray_names_it_each_equal_to_povrays(
    fog: LocalFog, scenes: Path
) -> None:
    arguments = ["orbit.pov", *SIZE, "+KFI1", "+KFF4", "+A0.3"]
    reference = povray_alone(scenes, *arguments)
    with Client(fog.url, fog.api_key) as client:
        paths = render(client, arguments, bands=2, out="frames/")
    assert [p.name for p in paths] == ["orbit1.png", "orbit2.png", "orbit3.png", "orbit4.png"]
    assert all(p.parent == Path("frames") for p in paths)
    assert pixels(paths) == reference
    assert reference["orbit1.png"] != reference["orbit2.png"]  # the moon moved


@needs_povray
def test_a_scenes_own_include_folder_is_shipped_and_read_through_the_library_path(
    fog: LocalFog, scenes: Path
) -> None:
    reference = povray_alone(scenes, "crate.pov", *SIZE, "+Lcrate-parts")
    with Client(fog.url, fog.api_key) as client:
        paths = render(client, ["crate.pov", *SIZE], include="crate-parts")
    assert pixels(paths) == reference
    # without the folder, the node's POV-Ray cannot find crate.inc and says so
    from fogwheel.errors import CommandFailed

    with Client(fog.url, fog.api_key) as client, pytest.raises(CommandFailed) as e:
        render(client, ["crate.pov", *SIZE])
    assert e.value.result is not None and "crate.inc" in e.value.result.stderr


@needs_povray
def test_an_ini_file_gives_the_same_frame_as_povray_given_the_same_ini(
    fog: LocalFog, scenes: Path
) -> None:
    (scenes / "still.ini").write_text(
        "Input_File_Name=spheres.pov\n+W64 +H48\n[Fine]\nAntialias=on\nAntialias_Threshold=0.2\n"
    )
    reference = povray_alone(scenes, "still.ini[Fine]")
    with Client(fog.url, fog.api_key) as client:
        paths = render(client, ["still.ini[Fine]"])
    assert pixels(paths) == reference


# -- why bands start on render-block boundaries (no fog needed) -----------------------------------


def bands_rendered_here(
    where: Path,
    arguments: list[str],
    bands: list[tuple[int, int]],
    node_env: dict[str, str] | None = None,
) -> bytes:
    """The frame stitched from `bands`, each rendered by its node command in a scratch dir
    (with `node_env` as the node's environment)."""
    plan = plan_from_arguments(arguments, cwd=where)
    parts = []
    for band in bands:
        scratch = Path(tempfile.mkdtemp(dir=where.parent, prefix="scratch-"))
        shutil.copy(where / plan.scene, scratch)
        command = band_command(plan, plan.scene, band, None)
        env = {**os.environ, **(node_env or {})}
        subprocess.run(command, cwd=scratch, check=True, capture_output=True, env=env)
        parts.append((band, (scratch / BAND_FILE).read_bytes()))
    return stitch(parts, plan.width, plan.height)


@needs_povray
def test_method_1_bands_that_start_mid_block_differ_from_povrays_frame_and_aligned_ones_do_not(
    scenes: Path,
) -> None:
    arguments = ["spheres.pov", *SIZE, "+A0.3", "+AM1"]
    [reference] = povray_alone(scenes, *arguments).values()
    mid_block = bands_rendered_here(scenes, arguments, [(1, 20), (21, 48)])
    assert decode_png(mid_block).rows != reference  # the trap plan_bands avoids
    aligned = bands_rendered_here(scenes, arguments, plan_bands(48, 8, 32))
    assert decode_png(aligned).rows == reference


@needs_povray
def test_a_node_owners_own_povray_ini_changes_no_pixel(scenes: Path, tmp_path: Path) -> None:
    arguments = ["spheres.pov", *SIZE]
    [reference] = povray_alone(scenes, *arguments).values()
    owner = tmp_path / "owner"
    (owner / ".povray" / "3.7").mkdir(parents=True)
    meddling = "Antialias=on\nAntialias_Threshold=0.0\nJitter=on\nQuality=0\n"
    (owner / ".povray" / "3.7" / "povray.ini").write_text(meddling)
    (owner / "meddling.ini").write_text(meddling)
    node_env = {"HOME": str(owner), "POVINI": str(owner / "meddling.ini")}
    frame = bands_rendered_here(scenes, arguments, plan_bands(48, 2, 32), node_env)
    assert decode_png(frame).rows == reference


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["Pre_Scene_Command=touch /tmp/owned"], "runs a shell command on the node"),
        (["--", "+L/home"], "Library_Path=/home is refused"),
        (["--", "-A0.3", "+GAlog.txt"], "writes a file on the node"),
        (["+BS2"], "POV-Ray refuses render blocks under 4 pixels"),
        (["nosuch.pov"], "no scene file"),
        (["+FJ"], "PNG files only"),
    ],
)
def test_fogwheel_render_refuses_harmful_options_before_starting_anything(
    scenes: Path, arguments: list[str], says: str
) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "fogwheel", "render", "--local", "2", "spheres.pov", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert says in res.stderr and "Traceback" not in res.stderr


@needs_povray
def test_fogwheel_render_local_takes_povrays_switches_and_says_where_it_wrote(
    scenes: Path,
) -> None:
    arguments = ["spheres.pov", *SIZE, "+A0.3", "+AM2"]
    reference = povray_alone(scenes, *arguments, "-J")
    res = subprocess.run(
        [sys.executable, "-m", "fogwheel", "render", *arguments, "--local", "2", "--", "-J"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "wrote spheres.png" in res.stdout  # as the user named the scene: beside it
    assert pixels([scenes / "spheres.png"]) == reference


# -- a node lost mid-render -----------------------------------------------------------------------


@needs_povray
def test_a_node_killed_mid_render_loses_no_band(scenes: Path, tmp_path: Path) -> None:
    arguments = ["spheres.pov", *SIZE, "+BS4", "+A0.3"]
    reference = povray_alone(scenes, *arguments)
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
        LocalFog(3, lease_seconds=2.0, workdir=tmp_path / "fog") as fog,
        Client(fog.url, fog.api_key) as client,
    ):
        paths = render(client, arguments, bands=12, progress=kill_a_busy_node)
        job = client.jobs(limit=1)[0]
        tasks = client.tasks(job["id"], limit=100)
    assert killed, "no node held a band after the first one finished"
    assert pixels(paths) == reference
    assert len(tasks) == 12 and all(t["state"] == "done" for t in tasks)
    assert any(h["outcome"] == "lost" for t in tasks for h in t["history"])


# -- stitching and PNG (pure) ---------------------------------------------------------------------


def test_stitch_puts_each_bands_raw_rows_in_place_and_writes_a_png() -> None:
    top, bottom = bytes([10] * 6) * 2, bytes([20] * 6) * 2  # 2 pixels wide, 2 rows each
    png = stitch([((3, 4), bottom), ((1, 2), top)], width=2, height=4)
    assert decode_png(png).rows == [bytes([10] * 6)] * 2 + [bytes([20] * 6)] * 2


def test_stitch_refuses_a_short_band_or_a_gap() -> None:
    with pytest.raises(PngError, match="band 1-2"):
        stitch([((1, 2), bytes(6))], width=2, height=2)
    with pytest.raises(PngError, match="rows \\[2\\]"):
        stitch([((1, 1), bytes(6))], width=2, height=2)


def test_stitch_turns_targas_bgra_rows_into_pngs_rgba() -> None:
    bgra = bytes([1, 2, 3, 4, 5, 6, 7, 8])  # two pixels
    png = stitch([((1, 1), bgra)], width=2, height=1, alpha=True)
    image = decode_png(png)
    assert (image.colour_type, image.rows) == (6, [bytes([3, 2, 1, 4, 7, 6, 5, 8])])


@pytest.mark.parametrize(("colour_type", "depth"), [(0, 8), (2, 8), (6, 8), (2, 16), (6, 16)])
def test_png_rows_survive_encoding_and_decoding(colour_type: int, depth: int) -> None:
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    stride = 5 * channels * depth // 8
    rows = [bytes((x * 7 + y * 13) % 256 for x in range(stride)) for y in range(3)]
    image = Image(5, channels, colour_type, rows, [], depth)
    assert decode_png(encode_png(image)).rows == rows
