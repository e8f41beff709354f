"""POV-Ray 3.7's options read as POV-Ray reads them, and vetted before a node sees them.

The sources, in POV-Ray's order (POV-Ray 3.7 reference, "Command-line Options" and "Using INI
Files"): the default INI file (`render.default_ini`), then each command-line argument left to
right: a switch (`+W320`, `-J`, `+A0.3`), an INI setting (`Declare=R=2`), an INI file (`opts.ini`
or `anim.ini[Low]`: its unlabelled lines, then the named section's) or the scene itself (a name
ending in `.pov`). A later setting overrides an earlier one, except `Library_Path` and
`Declare`, which accumulate. Switches and settings may also be lines of an INI file.

The scene and the options are a customer's, and a node is someone's home computer: an option
goes to a node only when it is on the allow-list below, and these are refused with the reason:
shell-outs (`*_Command`) run programs; `Create_Ini`, the `*_File` text streams and the
radiosity cache files write files a node's owner never asked for; `Continue_Trace` reads a
partial image on the node; `Library_Path` and `Include_Header` outside the `--include` folder
would read the node's disk. `Output_File_Name` only names the file written on the customer's
machine: a node is never given an output path; `Start_Row`/`End_Row` are planned into bands.
The display, console and thread options change no pixel and are dropped. Anything else is
refused as unknown rather than passed on blindly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath

INI_NESTING = 10  # INI files including INI files deeper than this are refused
INI_MAX_LINES = 10_000  # one INI file longer than this is refused (bounded work)


class OptionError(ValueError):
    """A POV-Ray option fogwheel refuses or cannot read; the message says which and why."""


@dataclass(frozen=True)
class Setting:
    """One option as POV-Ray's INI keyword and text value, and where it was read."""

    key: str
    value: str
    source: str


# -- the keywords -------------------------------------------------------------------------------

FORWARD = "forward"  # sent to the node unchanged
LOCAL = "local"  # read by fogwheel on the customer's machine, never sent as is
DROP = "drop"  # changes no pixel (display, console, threads): dropped

SHELL = "runs a shell command on the node, which is someone's home computer"
WRITES = "writes a file on the node that the node's owner never asked for"
ALPHA = "fogwheel stitches images with an alpha channel at 8 bits only (+UA with +FN8)"


def _names(text: str) -> list[str]:
    """POV-Ray keywords written as one string, for a table that reads like the manual's."""
    return text.split()


KEYWORDS: dict[str, str] = {
    # image: size, quality, antialiasing, bounding
    **dict.fromkeys(
        _names(
            "Width Height Quality Antialias Antialias_Threshold Antialias_Depth "
            "Antialias_Gamma Sampling_Method Jitter Jitter_Amount Render_Block_Size "
            "Render_Block_Step Render_Pattern High_Reproducibility Version Bounding "
            "Bounding_Threshold Bounding_Method Light_Buffer Vista_Buffer Remove_Bounds "
            "Split_Unions File_Gamma Display_Gamma Declare Preview_Start_Size "
            "Preview_End_Size Field_Render Odd_Field Clock Initial_Frame Final_Frame "
            "Initial_Clock Final_Clock Cyclic_Animation Clockless_Animation Frame_Step "
            "Start_Column End_Column"
        ),
        FORWARD,
    ),
    **dict.fromkeys(
        _names(
            "Input_File_Name Output_File_Name Output_File_Type Bits_Per_Color Output_to_File "
            "Output_Alpha Library_Path Include_Header Subset_Start_Frame Subset_End_Frame "
            "Include_Ini Start_Row End_Row"
        ),
        LOCAL,
    ),
    **dict.fromkeys(
        _names(
            "Display Verbose Pause_When_Done Work_Threads Test_Abort Test_Abort_Count "
            "Video_Mode Palette Draw_Vistas Buffer_Output Buffer_Size Max_Image_Buffer_Memory "
            "All_Console Debug_Console Fatal_Console Render_Console Statistic_Console "
            "Warning_Console Radiosity_Vain_Pretrace"
        ),
        DROP,
    ),
}
REFUSED: dict[str, str] = {
    **{
        f"{when}_{what}": SHELL
        for when in (
            "Pre_Scene",
            "Pre_Frame",
            "Post_Scene",
            "Post_Frame",
            "User_Abort",
            "Fatal_Error",
        )
        for what in ("Command", "Return")
    },
    **dict.fromkeys(
        ["All_File", "Debug_File", "Fatal_File", "Render_File", "Statistic_File", "Warning_File"],
        WRITES,
    ),
    "Create_Ini": WRITES,
    "Radiosity_File_Name": WRITES,
    "Radiosity_From_File": "reads a radiosity cache file on the node; fogwheel does not ship one",
    "Radiosity_To_File": WRITES,
    "Continue_Trace": "continues a partial image on the node, and a node has none",
}
CANONICAL = {k.lower(): k for k in [*KEYWORDS, *REFUSED]}

# Switches: (letters, keyword, kind), longest letters first so `+KFI` is not read as `+K`.
# kind: "bool" (+X on, -X off), "value" (+Xv or -Xv set v), "both" (+X on, +Xv on and v to
# the second keyword, -Xv off and v), "type" (+F: output type), "stream" (+GA: a console,
# with a file name refused).
SWITCHES: list[tuple[str, str, str, str]] = [
    ("KFI", "Initial_Frame", "value", ""), ("KFF", "Final_Frame", "value", ""),
    ("KLA", "Clockless_Animation", "bool", ""), ("KC", "Cyclic_Animation", "bool", ""),
    ("KI", "Initial_Clock", "value", ""), ("KF", "Final_Clock", "value", ""),
    ("K", "Clock", "value", ""), ("STP", "Frame_Step", "value", ""),
    ("SF", "Subset_Start_Frame", "value", ""), ("EF", "Subset_End_Frame", "value", ""),
    ("SR", "Start_Row", "value", ""), ("ER", "End_Row", "value", ""),
    ("SC", "Start_Column", "value", ""), ("EC", "End_Column", "value", ""),
    ("SP", "Preview_Start_Size", "value", ""), ("EP", "Preview_End_Size", "value", ""),
    ("SU", "Split_Unions", "bool", ""), ("HI", "Include_Header", "value", ""),
    ("HR", "High_Reproducibility", "bool", ""), ("W", "Width", "value", ""),
    ("H", "Height", "value", ""), ("AM", "Sampling_Method", "value", ""),
    ("AG", "Antialias_Gamma", "value", ""), ("A", "Antialias", "both", "Antialias_Threshold"),
    ("RP", "Render_Pattern", "value", ""), ("RS", "Render_Block_Step", "value", ""),
    ("R", "Antialias_Depth", "value", ""), ("J", "Jitter", "both", "Jitter_Amount"),
    ("Q", "Quality", "value", ""), ("BS", "Render_Block_Size", "value", ""),
    ("BM", "Bounding_Method", "value", ""), ("B", "Buffer_Output", "both", "Buffer_Size"),
    ("MB", "Bounding", "both", "Bounding_Threshold"), ("MV", "Version", "value", ""),
    ("MI", "Max_Image_Buffer_Memory", "value", ""), ("UA", "Output_Alpha", "bool", ""),
    ("UF", "Field_Render", "bool", ""), ("UO", "Odd_Field", "bool", ""),
    ("UL", "Light_Buffer", "bool", ""), ("UV", "Vista_Buffer", "bool", ""),
    ("UR", "Remove_Bounds", "bool", ""), ("UD", "Draw_Vistas", "bool", ""),
    ("WT", "Work_Threads", "value", ""), ("D", "Display", "both", "Video_Mode"),
    ("P", "Pause_When_Done", "bool", ""), ("V", "Verbose", "bool", ""),
    ("X", "Test_Abort", "both", "Test_Abort_Count"), ("C", "Continue_Trace", "bool", ""),
    ("I", "Input_File_Name", "value", ""), ("O", "Output_File_Name", "value", ""),
    ("L", "Library_Path", "value", ""), ("F", "Output_to_File", "type", "Output_File_Type"),
    ("GI", "Create_Ini", "value", ""), ("GA", "All", "stream", ""),
    ("GD", "Debug", "stream", ""), ("GF", "Fatal", "stream", ""),
    ("GR", "Render", "stream", ""), ("GS", "Statistic", "stream", ""),
    ("GW", "Warning", "stream", ""),
]  # fmt: skip
SWITCHES.sort(key=lambda s: -len(s[0]))
TRUE = {"on", "true", "yes", "1"}
FALSE = {"off", "false", "no", "0"}
SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.+\-=/]*$")  # what a forwarded value may hold


def read_switch(arg: str, source: str = "the command line") -> list[Setting]:
    """The settings one `+X`/`-X` switch stands for (POV-Ray 3.7 "Command-line Options")."""
    sign, body = arg[:1], arg[1:]
    at = f"{arg} ({source})"
    for letters, key, kind, second in SWITCHES:
        if not body.upper().startswith(letters):
            continue
        value = body[len(letters) :]
        on = "on" if sign == "+" else "off"
        if kind == "bool":
            if value:
                raise OptionError(f"{at}: {sign}{letters} takes no value")
            return [Setting(key, on, at)]
        if kind == "value":
            if not value:
                raise OptionError(f"{at}: {sign}{letters} needs a value, e.g. {sign}{letters}1")
            return [Setting(key, value, at)]
        if kind == "both":
            return [Setting(key, on, at)] + ([Setting(second, value, at)] if value else [])
        if kind == "type":
            return [Setting(key, on, at)] + ([Setting(second, value, at)] if value else [])
        return [Setting(f"{key}_File" if value else f"{key}_Console", value or on, at)]
    raise OptionError(f"{at}: not a POV-Ray 3.7 switch that fogwheel knows")


def split_ini_reference(text: str) -> tuple[str, str | None]:
    """`anim.ini[Low Res]` -> (`anim.ini`, `low res`); labels are not case sensitive."""
    match = re.fullmatch(r"(.+?)\[([^\]]*)\]", text.strip())
    if match:
        return match.group(1), match.group(2).strip().lower()
    return text.strip(), None


def ini_lines(text: str, label: str | None) -> Iterable[tuple[int, str]]:
    """The numbered lines POV-Ray reads from an INI file: the unlabelled ones before the
    first `[label]`, then those of the section `label` (if one was asked for)."""
    section: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if number > INI_MAX_LINES:
            raise OptionError(f"an INI file longer than {INI_MAX_LINES} lines is refused")
        line = _strip_comment(raw).strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            continue
        if section is None or section == label:
            yield number, line


def _strip_comment(line: str) -> str:
    """A line without its `;` or `//` comment (a `;` inside double quotes stays)."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif not quoted and (ch == ";" or line.startswith("//", i)):
            return line[:i]
    return line


def read_setting(text: str, source: str) -> Setting:
    """`Keyword=value` (spaces around `=` allowed, value optionally in double quotes)."""
    key, _, value = text.partition("=")
    canonical = CANONICAL.get(key.strip().lower())
    if canonical is None:
        raise OptionError(f"{source}: {key.strip()} is not a POV-Ray 3.7 option fogwheel knows")
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return Setting(canonical, value, source)


def read_arguments(
    args: Iterable[str], read_text: Callable[[str], str], depth: int = 0, origin: str = ""
) -> list[Setting]:
    """Every setting in `args` (command-line arguments or INI lines), INI files read through
    `read_text(name)` and expanded in place; a `.pov` name becomes `Input_File_Name`."""
    if depth > INI_NESTING:
        raise OptionError(f"INI files nested deeper than {INI_NESTING} ({origin}): a loop?")
    out: list[Setting] = []
    for arg in args:
        source = origin or "the command line"
        if arg[:1] in "+-" and len(arg) > 1:
            out += read_switch(arg, source)
        elif "=" in arg:
            setting = read_setting(arg, f"{arg} ({source})")
            if setting.key == "Include_Ini":
                out += read_ini_file(setting.value, read_text, depth + 1)
            else:
                out.append(setting)
        elif arg.lower().endswith(".pov"):
            out.append(Setting("Input_File_Name", arg, source))
        else:
            out += read_ini_file(arg, read_text, depth + 1)
    return out


def read_ini_file(reference: str, read_text: Callable[[str], str], depth: int = 1) -> list[Setting]:
    """The settings of one INI file named as POV-Ray names them (`.ini` added if missing)."""
    name, label = split_ini_reference(reference)
    if not PurePath(name).suffix:
        name += ".ini"
    return read_ini_text(read_text(name), name, label, read_text, depth)


def read_ini_text(
    text: str, name: str, label: str | None, read_text: Callable[[str], str], depth: int = 1
) -> list[Setting]:
    """The settings of an INI file's text: its unlabelled lines, then section `label`'s."""
    out: list[Setting] = []
    for number, line in ini_lines(text, label):
        origin = f"{name} line {number}"
        out += read_arguments(_line_arguments(line), read_text, depth, origin)
    return out


def _line_arguments(line: str) -> list[str]:
    """An INI line's arguments: a setting is one (its value may hold spaces), switches split."""
    if line[:1] in "+-":
        return line.split()
    return [line]


# -- the settings resolved --------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """The last word of every setting: `last` for single values, lists for the accumulating."""

    last: Mapping[str, Setting]
    library_paths: list[Setting] = field(default_factory=list)
    declares: list[Setting] = field(default_factory=list)


def resolve(settings: Iterable[Setting]) -> Resolved:
    """Apply settings in order: the last one wins, `Library_Path` and `Declare` accumulate;
    a refused option raises `OptionError` naming where it was read and why."""
    last: dict[str, Setting] = {}
    paths: list[Setting] = []
    declares: dict[str, Setting] = {}
    for s in settings:
        reason = REFUSED.get(s.key)
        if reason and not (s.key.endswith(("_File", "_From_File", "_To_File")) and _off(s.value)):
            raise OptionError(f"{s.source}: {s.key} is refused: it {reason}")
        if s.key == "Library_Path":
            paths.append(s)
        elif s.key == "Declare":
            name, eq, value = s.value.partition("=")
            if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
                raise OptionError(f"{s.source}: Declare needs NAME=FLOAT, not {s.value!r}")
            try:
                float(value)
            except ValueError:
                raise OptionError(
                    f"{s.source}: POV-Ray 3.7 declares only numbers: Declare={s.value} "
                    "is not NAME=FLOAT"
                ) from None
            declares.pop(name.strip(), None)
            declares[name.strip()] = Setting("Declare", f"{name.strip()}={value.strip()}", s.source)
        else:
            last[s.key] = s
    return Resolved(last, paths, list(declares.values()))


def _off(value: str) -> bool:
    return value.strip().lower() in FALSE or value.strip() == ""


def is_on(value: str) -> bool:
    """POV-Ray's reading of a boolean value; anything else is an `OptionError`."""
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise OptionError(f"{value!r} is not on or off (POV-Ray takes on/off, true/false, yes/no, 1/0)")


def number(setting: Setting | None, default: float, *, integer: bool = False) -> float:
    """A setting's number (or `default` when it was never set), refused when not a number."""
    if setting is None:
        return default
    try:
        value = float(setting.value)
    except ValueError:
        raise OptionError(
            f"{setting.source}: {setting.key} needs a number, not {setting.value!r}"
        ) from None
    if integer and value != int(value):
        raise OptionError(
            f"{setting.source}: {setting.key} needs a whole number, not {setting.value}"
        )
    return value


def forwarded(resolved: Resolved) -> list[str]:
    """The `Keyword=value` arguments a node's POV-Ray gets: the allow-listed options only."""
    out = []
    for s in [*resolved.last.values(), *resolved.declares]:
        if KEYWORDS.get(s.key) != FORWARD:
            continue
        if not SAFE_VALUE.fullmatch(s.value) or len(s.value) > 100:
            raise OptionError(
                f"{s.source}: {s.key}={s.value!r} holds characters fogwheel does not pass on"
            )
        out.append(f"{s.key}={s.value}")
    return out
