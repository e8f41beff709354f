"""POV-Ray's options are read as POV-Ray 3.7 reads them, and what could harm a node is refused."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fogwheel.workloads.povray_options import (
    OptionError,
    Setting,
    read_arguments,
    read_switch,
    resolve,
)
from fogwheel.workloads.render import band_command, default_ini, output_paths
from fogwheel.workloads.render_plan import (
    RenderPlan,
    band_unsafe_features,
    frame_name,
    plan_bands,
    plan_render,
)


def no_files(name: str) -> str:
    raise OptionError(f"cannot read the INI file {name}")


def settings(*args: str, files: dict[str, str] | None = None) -> list[tuple[str, str]]:
    read = (lambda name: files[name]) if files else no_files
    return [(s.key, s.value) for s in read_arguments(args, read)]


def plan(*args: str, include: str | None = None, cwd: str = "/work") -> RenderPlan:
    return plan_render(resolve(read_arguments(["scene.pov", *args], no_files)), include, cwd)


# -- switches and settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("switch", "expected"),
    [
        ("+W320", [("Width", "320")]),
        ("+H240", [("Height", "240")]),
        ("+A", [("Antialias", "on")]),
        ("+A0.3", [("Antialias", "on"), ("Antialias_Threshold", "0.3")]),
        ("-A0.3", [("Antialias", "off"), ("Antialias_Threshold", "0.3")]),
        ("+AM1", [("Sampling_Method", "1")]),
        ("+am2", [("Sampling_Method", "2")]),  # switches are not case sensitive
        ("+R3", [("Antialias_Depth", "3")]),
        ("-J", [("Jitter", "off")]),
        ("+J0.5", [("Jitter", "on"), ("Jitter_Amount", "0.5")]),
        ("+Q9", [("Quality", "9")]),
        ("+KFI1", [("Initial_Frame", "1")]),  # the longest letters win over +K
        ("+KFF24", [("Final_Frame", "24")]),
        ("+KI0.5", [("Initial_Clock", "0.5")]),
        ("+KF2", [("Final_Clock", "2")]),
        ("+KC", [("Cyclic_Animation", "on")]),
        ("+K0.25", [("Clock", "0.25")]),
        ("+SF3", [("Subset_Start_Frame", "3")]),
        ("+BS16", [("Render_Block_Size", "16")]),
        ("+FN16", [("Output_to_File", "on"), ("Output_File_Type", "N16")]),
        ("+HR", [("High_Reproducibility", "on")]),
        ("+HIheader.inc", [("Include_Header", "header.inc")]),
        ("-D", [("Display", "off")]),
        ("+GA", [("All_Console", "on")]),
        ("+GAlog.txt", [("All_File", "log.txt")]),
        ("+Ofoo.png", [("Output_File_Name", "foo.png")]),
    ],
)
def test_a_switch_stands_for_povrays_ini_keywords(
    switch: str, expected: list[tuple[str, str]]
) -> None:
    assert [(s.key, s.value) for s in read_switch(switch)] == expected


def test_settings_are_ini_keywords_case_insensitive_with_quotes_and_spaces() -> None:
    assert settings('library_path = "/usr/share/povray-3.7/include"', "DECLARE=R=2") == [
        ("Library_Path", "/usr/share/povray-3.7/include"),
        ("Declare", "R=2"),
    ]


def test_a_pov_file_on_the_command_line_is_the_scene() -> None:
    assert settings("spheres.pov", "+W64") == [("Input_File_Name", "spheres.pov"), ("Width", "64")]


def test_an_ini_file_is_read_in_place_its_unlabelled_lines_then_the_section_asked_for() -> None:
    res = """; RES.INI, as in POV-Ray's documentation
+W120 +H100   ; this section has no label
Antialias=on  // nor this line
[Low]
+W80 +H60
[High]
Width = 640
"""
    files = {"res.ini": res}
    assert settings("+W1", "res", files=files) == [
        ("Width", "1"),
        ("Width", "120"),
        ("Height", "100"),
        ("Antialias", "on"),
    ]
    assert settings("res.ini[high]", files=files)[-1] == ("Width", "640")  # labels: any case
    assert ("Width", "80") in settings("res.ini[Low]", files=files)


def test_ini_files_include_ini_files_by_name_or_include_ini_and_a_loop_is_refused() -> None:
    files = {"a.ini": "b.ini\n+W10", "b.ini": "Include_Ini=c.ini\n+H20", "c.ini": "+Q5"}
    assert settings("a.ini", files=files) == [("Quality", "5"), ("Height", "20"), ("Width", "10")]
    with pytest.raises(OptionError, match="nested deeper"):
        settings("loop.ini", files={"loop.ini": "loop.ini"})


def test_the_last_setting_wins_while_library_paths_and_declares_accumulate() -> None:
    given = read_arguments(
        [
            "+W10",
            "Width=20",
            "+L/usr/share/povray-3.7/include",
            "Declare=A=1",
            "Declare=B=2",
            "Declare=A=3",
            "+Linc",
        ],
        no_files,
    )
    resolved = resolve(given)
    assert resolved.last["Width"].value == "20"
    assert [s.value for s in resolved.library_paths] == ["/usr/share/povray-3.7/include", "inc"]
    assert [s.value for s in resolved.declares] == ["B=2", "A=3"]


def test_povrays_default_ini_is_found_where_povray_looks(tmp_path: Path) -> None:
    (tmp_path / "home" / ".povray" / "3.7").mkdir(parents=True)
    user = tmp_path / "home" / ".povray" / "3.7" / "povray.ini"
    user.write_text("+W1\n")
    here = tmp_path / "povray.ini"
    chosen = tmp_path / "chosen.ini"
    chosen.write_text("+W2\n")
    env = {"HOME": str(tmp_path / "home")}
    assert default_ini(env, tmp_path) == user
    here.write_text("+W3\n")
    assert default_ini(env, tmp_path) == here  # ./povray.ini before the user's
    assert default_ini({**env, "POVINI": str(chosen)}, tmp_path) == chosen  # $POVINI first


# -- refused, each with its reason ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "reason"),
    [
        ("Pre_Scene_Command=rm -rf ~", "runs a shell command"),
        ("Post_Frame_Command=curl evil", "runs a shell command"),
        ("User_Abort_Command=x", "runs a shell command"),
        ("Create_Ini=all.ini", "writes a file on the node"),
        ("+GIall.ini", "writes a file on the node"),
        ("All_File=log.txt", "writes a file on the node"),
        ("+GSstats.txt", "writes a file on the node"),
        ("Radiosity_To_File=on", "writes a file on the node"),
        ("Radiosity_File_Name=r.rca", "writes a file on the node"),
        ("+C", "partial image"),
        ("+L/home/owner", "Library_Path=/home/owner is refused"),
        ("Library_Path=../../etc", "is refused"),
        ("Include_Header=/etc/passwd", "Include_Header=/etc/passwd is refused"),
        ("+HI../secret.inc", "is refused"),
        ("+FN16 +UA", "alpha channel at 8 bits only"),
        ("+FT", "PNG files only"),
        ("-F", "nothing to bring back"),
        ("Bits_Per_Color=5", "8- or 16-bit"),
        ("+ZZ", "not a POV-Ray 3.7 switch"),
        ("Histogram_Type=C", "not a POV-Ray 3.7 option"),
        ("Declare=R=red", "declares only numbers"),
        ("Version=3.7$(reboot)", "characters fogwheel does not pass on"),
        ("+W0", "not one fogwheel renders"),
        ("+KFI5 +KFF2", "comes before"),
        ("+SR50 +ER10", "rows 50 to 10 are not rows"),
        ("+BS2", "render blocks under 4 pixels"),
    ],
)
def test_options_that_could_harm_a_node_or_that_fogwheel_cannot_honour_are_refused_saying_why(
    argument: str, reason: str
) -> None:
    args = argument.split(" +")  # "+KFI5 +KFF2" is two switches, "X=rm -rf ~" one setting
    args = [args[0], *("+" + a for a in args[1:])]
    with pytest.raises(OptionError, match=re.escape(reason)) as e:
        plan(*args)
    assert args[-1].split("=")[0] in str(e.value)  # it names the option


def test_a_refused_option_says_where_it_was_read() -> None:
    files = {"evil.ini": "+W64\n\nPre_Frame_Command=sh -c boom\n"}
    with pytest.raises(OptionError, match=r"evil\.ini line 3"):
        resolve(read_arguments(["evil.ini"], lambda n: files[n]))


def test_writing_no_file_of_a_kind_is_not_refused() -> None:
    assert plan("All_File=false", "Radiosity_From_File=off").width == 160


# -- the plan -------------------------------------------------------------------------------------


def test_no_options_are_povrays_own_defaults_no_antialiasing_and_nothing_added() -> None:
    p = plan()
    assert (p.width, p.height, p.block, p.depth, p.frames) == (160, 120, 32, 8, [None])
    assert p.node_options == []  # no +A, no +AM: POV-Ray decides, as it would alone


def test_only_allow_listed_options_reach_a_node_and_never_an_output_path() -> None:
    p = plan("+W64", "+H48", "+A0.3", "-J", "+Oout/me.png", "-D", "+WT8", "+GA", "Declare=R=2")
    assert p.node_options == [
        "Width=64",
        "Height=48",
        "Antialias=on",
        "Antialias_Threshold=0.3",
        "Jitter=off",
        "Declare=R=2",
    ]
    assert p.output == "out/me.png"
    command = band_command(p, "scene.pov", (1, 32), None)[2]
    assert "out/me.png" not in command and "+Ofogwheel-band.ppm" in command
    assert "POVINI=fogwheel-empty.ini" in command  # the node owner's povray.ini is not read


def test_a_library_path_inside_the_include_folder_is_mapped_into_the_nodes_scratch() -> None:
    p = plan("+L/work/parts/textures", "Library_Path=parts", include="/work/parts")
    assert p.node_options[-2:] == ["Library_Path=include/textures", "Library_Path=include"]


@pytest.mark.parametrize(
    "installed",
    ["/usr/share/povray-3.7/include", "/opt/homebrew/share/povray-3.7/include/"],
)
def test_povrays_installed_include_folder_becomes_the_nodes_own(installed: str) -> None:
    assert plan(f"+L{installed}", "+L/usr/local/share/povray-3.7/include").node_options == [
        "Library_Path=/usr/share/povray-3.7/include",
        "Library_Path=/usr/local/share/povray-3.7/include",
    ]


@pytest.mark.parametrize(
    ("args", "frames", "final"),
    [
        ((), [None], 1),
        (("+KFI1", "+KFF4"), [1, 2, 3, 4], 4),
        (("+KFI1", "+KFF12", "+SF3", "+EF5"), [3, 4, 5], 12),
        (("+KFI1", "+KFF9", "Frame_Step=2"), [1, 3, 5, 7, 9], 9),
        (("+KFI0", "+KFF120", "+SF100", "+EF100"), [100], 120),
    ],
)
def test_frames_are_the_ones_povray_renders(
    args: tuple[str, ...], frames: list[int | None], final: int
) -> None:
    p = plan(*args)
    assert (p.frames, p.final_frame) == (frames, final)


@pytest.mark.parametrize(
    ("base", "frame", "final", "name"),  # each as POV-Ray 3.7.0 itself named it
    [
        ("orbit.png", None, 1, "orbit.png"),
        ("x", None, 1, "x.png"),
        ("y.jpg", None, 1, "y.jpg.png"),
        ("orbit", 1, 4, "orbit1.png"),
        ("x.png", 3, 12, "x03.png"),
        ("A.PNG", 3, 12, "A.PNG03.png"),
        ("clk", 100, 120, "clk100.png"),
    ],
)
def test_frames_are_named_as_povray_names_them(
    base: str, frame: int | None, final: int, name: str
) -> None:
    assert frame_name(base, frame, final) == name


def test_output_goes_beside_the_scene_unless_told_a_file_or_folder(tmp_path: Path) -> None:
    p = plan_render(
        resolve(read_arguments(["scenes/orbit.pov", "+KFI1", "+KFF2"], no_files)),
        None,
        str(tmp_path),
    )
    assert output_paths(p, None, tmp_path) == [Path("scenes/orbit1.png"), Path("scenes/orbit2.png")]
    assert output_paths(p, "out/", tmp_path)[0] == Path("out/orbit1.png")
    (tmp_path / "folder").mkdir()
    assert output_paths(p, "folder", tmp_path)[0] == Path("folder/orbit1.png")
    assert output_paths(p, "/abs/f.png", tmp_path)[1] == Path("/abs/f2.png")


@pytest.mark.parametrize(
    ("args", "rows"),  # each as POV-Ray 3.7.0 itself reported the rows it rendered
    [
        (("+H48",), (1, 48)),
        (("+H64", "+SR10", "+ER40"), (10, 40)),
        (("+H48", "+SR0.25", "+ER0.75"), (13, 36)),  # fractions of the height
        (("+H50", "+SR0.3", "+ER0.9"), (16, 44)),  # in single precision, as POV-Ray keeps them
        (("+H64", "+ER100"), (1, 64)),  # past the last row: the last row
    ],
)
def test_a_partial_render_covers_the_rows_povray_renders(
    args: tuple[str, ...], rows: tuple[int, int]
) -> None:
    assert plan(*args).rows == rows


# -- bands ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "n", "block", "bands"),
    [
        (48, 8, 32, [(1, 32), (33, 48)]),  # never more bands than render blocks
        (100, 2, 32, [(1, 64), (65, 100)]),
        (100, 3, 32, [(1, 64), (65, 96), (97, 100)]),
        (48, 12, 4, [(y, y + 3) for y in range(1, 48, 4)]),
        (64, 4, 1, [(1, 16), (17, 32), (33, 48), (49, 64)]),
        (1, 1, 32, [(1, 1)]),
    ],
)
def test_bands_start_on_render_block_boundaries(
    height: int, n: int, block: int, bands: list[tuple[int, int]]
) -> None:
    assert plan_bands(height, n, block) == bands


def test_a_partial_renders_blocks_are_counted_from_its_first_row() -> None:
    assert plan_bands(64, 8, 32, first=20) == [(20, 51), (52, 64)]
    assert plan_bands(40, 3, 8, first=10) == [(10, 25), (26, 33), (34, 40)]


@pytest.mark.parametrize("height", [1, 7, 33, 64, 1080])
@pytest.mark.parametrize("n", [1, 2, 5, 100])
@pytest.mark.parametrize("block", [1, 4, 32])
def test_band_plans_tile_the_frame_in_whole_blocks(height: int, n: int, block: int) -> None:
    bands = plan_bands(height, n, block)
    assert [y for a, b in bands for y in range(a, b + 1)] == list(range(1, height + 1))
    assert all((first - 1) % block == 0 for first, _ in bands)


def test_a_band_command_quotes_what_it_runs() -> None:
    p = plan("+W64", "+H48", "Declare=Size=2")
    script = band_command(p, "scene.pov", (33, 48), None)[2]
    first = script.split(" >fogwheel-povray.log")[0].split("POVINI=fogwheel-empty.ini ")[1]
    assert shlex.split(first)[:2] == ["povray", "+Iscene.pov"]
    assert "+SR33" in first and "+ER48" in first and "Declare=Size=2" in first


def test_a_setting_is_kept_with_where_it_came_from() -> None:
    [s] = read_arguments(["+W64"], no_files)
    assert s == Setting("Width", "64", "+W64 (the command line)")


def test_scene_features_that_bands_cannot_render_exactly_are_named() -> None:
    scene = "global_settings { radiosity { count 50 } }\nfinish { crand 0.2 }"
    assert band_unsafe_features([scene]) == ["crand", "radiosity"]
    assert band_unsafe_features(["// a plain scene, no_radiosity_here\nsphere { 0, 1 }"]) == []
