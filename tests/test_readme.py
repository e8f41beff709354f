"""Every command block of README.md runs as written, and says what the README shows.

The README is read when the tests are collected, so a block someone adds is covered from then
on. Each fenced block tagged ```sh, ```bash, ```shell, ```console or ```python is a test case:

- ```sh, ```bash, ```shell: the block is one bash script (`set -eo pipefail`); it must exit 0.
- ```console: the lines that start with `$ ` are the commands (a line ending in `\\` goes on
  on the next); the other lines are the output the README shows, and are not run.
- ```python: the block runs as a script in a fresh interpreter.

Every block runs in a copy of the repository's examples/ (its cwd holds `examples/`, as the
repository root does), with FOGWHEEL_COORDINATOR, FOGWHEEL_API_KEY and FOGWHEEL_ADMIN_KEY
naming a throwaway fog of real processes (LocalFog: a coordinator and 2 node agents) shared by
the blocks; a command with `--local N` starts a fog of its own, as it does for a user.

HTML comments right before a block (only blank lines between) say more about it:

    <!-- readme-test: skip (why) -->      not run; the reason is required and shows in the report
    <!-- readme-test: expect TEXT -->     TEXT must appear in what the block prints (whitespace
                                          runs count as one space); in a ```console block it
                                          must also be part of the output the README shows
    <!-- readme-test: only expect -->     in a ```console block, check only the expect lines
                                          (else every shown line without a digit is checked too:
                                          counts, sizes, times and ids vary, words should not)
    <!-- readme-test: needs PROGRAM -->   skipped, saying so, where PROGRAM is not installed
                                          (fails instead if FOGWHEEL_REQUIRE_PROGRAM=1, as CI
                                          sets for jellyfish; .ci/run installs povray)
    <!-- readme-test: nodes N -->         the block gets a fog of N nodes of its own
    <!-- readme-test: timeout S -->       seconds the block may take (default 400)

An unknown marker fails, and so does a block of shell commands without a tag (it would never
run). The slowest blocks render 24 frames and start their own small fogs: the whole file takes
a few minutes on 2 cores (marked `slow`, which `pytest` and so `.ci/run` still run).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fogwheel.localfog import LocalFog

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_TAGS = {"sh", "bash", "shell", "console", "python"}
DEFAULT_NODES = 2
DEFAULT_TIMEOUT = 400.0  # seconds a block may run (pytest-timeout allows the test 600)
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<body>.*?)\s*-->$")
BOX_OR_ELISION = re.compile(r"[\u2500-\u257f …]+")  # table rules, `…`
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<tag>[\w+-]*)\s*$")

pytestmark = pytest.mark.slow


@dataclass
class Block:
    line: int  # the README line of the opening fence, 1-based
    tag: str
    body: str
    skip: str | None = None
    expect: list[str] = field(default_factory=list)
    nodes: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    problems: list[str] = field(default_factory=list)  # malformed markers
    only_expect: bool = False  # a ```console block's other shown lines go unchecked
    needs: list[str] = field(default_factory=list)  # programs it runs that may be missing

    @property
    def commands(self) -> list[str]:
        """The commands of a ```console block (a trailing backslash joins the next line)."""
        cmds: list[str] = []
        lines = iter(self.body.splitlines())
        for line in lines:
            if not line.startswith("$ "):
                continue
            cmd = line[2:]
            while cmd.endswith("\\"):
                cmd = cmd + "\n" + next(lines, "")
            cmds.append(cmd)
        return cmds

    @property
    def shown_output(self) -> str:
        """What a ```console block shows as output: every line that is no command."""
        shown: list[str] = []
        continued = False
        for line in self.body.splitlines():
            if line.startswith("$ ") or continued:
                continued = line.endswith("\\")
                continue
            shown.append(line)
        return "\n".join(shown)

    @property
    def must_print(self) -> list[str]:
        """The expect lines and, in a ```console block, every shown line with no digit in it
        (counts, sizes, times and ids vary; words do not), but for rules and elisions."""
        shown: list[str] = []
        if self.tag == "console" and not self.only_expect:
            for line in self.shown_output.splitlines():
                text = _normal(line)
                if text and not re.search(r"\d", text) and not BOX_OR_ELISION.fullmatch(text):
                    shown.append(text)
        return [*self.expect, *shown]

    @property
    def script(self) -> str:
        if self.tag == "python":
            return self.body
        commands = self.commands if self.tag == "console" else [self.body]
        trap = "trap 'echo \"readme-test: failed (exit $?): $BASH_COMMAND\" >&2' ERR\n"
        return "set -eo pipefail\n" + trap + "\n".join(commands) + "\n"


def _apply_marker(block: Block, body: str) -> None:
    word, _, rest = body.partition(" ")
    rest = rest.strip()
    if word == "skip":
        reason = rest.strip("()").strip()
        if not reason:
            block.problems.append("a skip marker must give its reason: skip (why)")
        block.skip = reason or "?"
    elif word == "expect" and rest:
        block.expect.append(rest)
    elif word == "needs" and re.fullmatch(r"[\w.-]+( [\w.-]+)*", rest):
        block.needs += rest.split()
    elif word == "only" and rest == "expect":
        block.only_expect = True
    elif word == "nodes" and rest.isdigit():
        block.nodes = int(rest)
    elif word == "timeout" and re.fullmatch(r"\d+(\.\d+)?", rest):
        block.timeout = float(rest)
    else:
        block.problems.append(
            f"unknown readme-test marker {body!r}: use skip (why), expect TEXT, only expect, "
            "needs PROGRAM, nodes N or timeout S"
        )


def parse_readme(text: str) -> list[Block]:
    """Every fenced block of `text`, with the readme-test markers just above it."""
    blocks: list[Block] = []
    markers: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        marker = MARKER.match(line.strip())
        if marker:
            markers.append(marker.group("body"))
        elif fence:
            opening, indent, body_lines = i + 1, fence.group("indent"), []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body_lines.append(lines[i].removeprefix(indent))
                i += 1
            block = Block(line=opening, tag=fence.group("tag"), body="\n".join(body_lines))
            for body in markers:
                _apply_marker(block, body)
            markers = []
            blocks.append(block)
        elif line.strip():
            markers = []  # markers belong to the block right after them
        i += 1
    return blocks


def _normal(text: str) -> str:
    return " ".join(text.split())


BLOCKS = parse_readme(README.read_text())


def _block_id(block: Block) -> str:
    """`line190-fogwheel-kmer`: where the block is, and what it runs first."""
    lines = block.commands if block.tag == "console" else block.body.splitlines()
    first = next((x for x in lines if x.strip() and not x.lstrip().startswith("#")), "")
    words = re.findall(r"[\w.-]+", first)[:2] if block.tag != "python" else ["python"]
    return "-".join([f"line{block.line}", *words])


def test_readme_has_command_blocks_and_markers_parse() -> None:
    """The parser finds the README's blocks, and a marker mistake or an untagged command
    block is reported rather than silently never run."""
    runnable = [b for b in BLOCKS if b.tag in RUN_TAGS]
    assert len(runnable) >= 5, [_block_id(b) for b in BLOCKS]
    problems = [f"README.md:{b.line}: {p}" for b in BLOCKS for p in b.problems]
    for b in BLOCKS:
        if b.tag in RUN_TAGS:
            continue
        first = next((x.strip() for x in b.body.splitlines() if x.strip()), "")
        if first.startswith(("$ ", "fogwheel ", "pip ", "python ")):
            problems.append(
                f"README.md:{b.line}: a block of commands without a tag: write ```console "
                "(commands with `$ ` and their output) or ```sh, so that tests/test_readme.py "
                "runs it"
            )
        if b.skip or b.expect:
            problems.append(f"README.md:{b.line}: readme-test markers on a block that never runs")
    for b in runnable:
        if b.tag == "console" and not b.commands and not b.skip:
            problems.append(f"README.md:{b.line}: a ```console block with no `$ ` command")
        if b.tag == "console" and not b.skip:
            shown = _normal(b.shown_output)
            problems += [
                f"README.md:{b.line}: expect {e!r} is not in the output the README shows"
                for e in b.expect
                if _normal(e) not in shown
            ]
    assert not problems, "\n".join(problems)


def test_parser_on_a_sample() -> None:
    sample = "\n".join(
        [
            "<!-- readme-test: skip (installs packages) -->",
            "```sh",
            "pip install x",
            "```",
            "text",
            "<!-- readme-test: expect wrote a -->",
            "<!-- readme-test: needs jellyfish povray -->",
            "",
            "```console",
            "$ echo a \\",
            "  b",
            "wrote a",
            "$ true",
            "┏━━━━┓  ",
            "…",
            "took 3.1 s",
            "┃ a  b ┃",
            "```",
            "<!-- readme-test: nonsense -->",
            "```python",
            "print(1)",
            "```",
        ]
    )
    skipped, console, python = parse_readme(sample)
    assert (skipped.skip, skipped.line, skipped.tag) == ("installs packages", 2, "sh")
    assert console.commands == ["echo a \\\n  b", "true"]
    assert console.shown_output.splitlines()[0] == "wrote a"
    assert console.expect == ["wrote a"] and console.line == 9
    assert console.needs == ["jellyfish", "povray"]
    assert console.must_print == ["wrote a", "wrote a", "┃ a b ┃"]  # no digits, rules, `…`
    assert python.problems and python.skip is None


def test_the_sample_data_is_what_make_samples_makes() -> None:
    """examples/ holds exactly what examples/make_samples.py makes (seeded, so repeatable)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_samples.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> LocalFog:
    with LocalFog(DEFAULT_NODES, workdir=tmp_path_factory.mktemp("readme-fog")) as f:
        yield f


def _environment(fog: LocalFog, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("FOGWHEEL_"):
            del env[name]
    bindir = str(Path(sys.executable).parent)  # `fogwheel` and `python3` of this interpreter
    env.update(
        FOGWHEEL_COORDINATOR=fog.url,
        FOGWHEEL_API_KEY=fog.api_key,
        FOGWHEEL_ADMIN_KEY=fog.admin_key,
        PATH=bindir + os.pathsep + env.get("PATH", ""),
        HOME=str(home),  # `~/.fogwheel/…` in a block lands in the throwaway directory
        COLUMNS="200",  # the same lines whatever terminal runs the tests
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _run_block(block: Block, fog: LocalFog, workdir: Path) -> subprocess.CompletedProcess[str]:
    shutil.copytree(ROOT / "examples", workdir / "examples")
    home = workdir / "home"
    home.mkdir()
    if block.tag == "python":
        (workdir / "readme_block.py").write_text(block.script)
        cmd = [sys.executable, "readme_block.py"]
    else:
        cmd = ["bash", "-c", block.script]
    try:
        return subprocess.run(
            cmd,
            cwd=workdir,
            env=_environment(fog, home),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=block.timeout,
        )
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        pytest.fail(
            f"README.md:{block.line}: the block ran past {block.timeout:g} s; its output:\n"
            + output[-3000:]
        )


def test_a_failing_command_fails_its_block(fog: LocalFog, tmp_path: Path) -> None:
    """The harness itself: a console block stops at its first failing command and says which;
    a Python block's exception is its exit status; the fog's variables reach a block."""
    (console,) = parse_readme("```console\n$ true\n$ false\n$ echo never\n```")
    proc = _run_block(console, fog, tmp_path / "console")
    assert proc.returncode != 0 and "never" not in proc.stdout
    assert "readme-test: failed (exit 1): false" in proc.stderr
    (python,) = parse_readme(
        "```python\nimport os\nprint(os.environ['FOGWHEEL_COORDINATOR'])\nraise SystemExit(3)\n```"
    )
    proc = _run_block(python, fog, tmp_path / "python")
    assert proc.returncode == 3 and proc.stdout.strip() == fog.url


@pytest.mark.timeout(600)
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.tag in RUN_TAGS], ids=_block_id)
def test_readme_block(block: Block, fog: LocalFog, tmp_path: Path) -> None:
    if block.skip:
        pytest.skip(f"README.md:{block.line}: {block.skip}")
    assert not block.problems, block.problems
    for program in block.needs:
        if shutil.which(program) is None:
            if os.environ.get(f"FOGWHEEL_REQUIRE_{program.upper()}") == "1":
                pytest.fail(f"README.md:{block.line} needs {program}, which is not installed")
            pytest.skip(f"README.md:{block.line}: {program} is not installed")
    if block.nodes:
        with LocalFog(block.nodes, workdir=tmp_path / "fog") as own:
            proc = _run_block(block, own, tmp_path / "work")
    else:
        proc = _run_block(block, fog, tmp_path / "work")
    printed = proc.stdout + proc.stderr
    context = (
        f"README.md:{block.line} ({block.tag}):\n{block.script}\n"
        f"--- exit {proc.returncode}; stdout:\n{proc.stdout[-4000:]}\n--- stderr:\n"
        f"{proc.stderr[-4000:]}"
    )
    assert proc.returncode == 0, context
    missing = [e for e in block.must_print if _normal(e) not in _normal(printed)]
    assert not missing, f"not printed: {missing}\n{context}"
