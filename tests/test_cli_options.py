"""Every option of every `fogwheel` command is unique, and every help text reaches the user.

The walk covers the whole command tree as Click sees it (groups, commands, and those that
cli_*.py modules register), so a new command with a clashing short form, like `kmer`'s old
`-k` that was also `--api-key`, fails here instead of silently taking the wrong value.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from fogwheel.cli import app

ROOT = typer.main.get_command(app)


# Typer builds on its own copy of Click (typer._click), so the walk goes by what a command
# has, not by its class.
Command = Any


def walk(cmd: Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path under `cmd`, groups included, the root as ()."""
    yield path
    if hasattr(cmd, "commands"):
        for name, sub in sorted(cmd.commands.items()):
            yield from walk(sub, (*path, name))


def command_at(path: tuple[str, ...]) -> Command:
    cmd = ROOT
    for name in path:
        cmd = cmd.commands[name]
    return cmd


PATHS = list(walk(ROOT))


def option_names(cmd: Command) -> list[str]:
    """Each name a user can type for one of `cmd`'s options (`--serve/--no-serve`: both)."""
    names: list[str] = []
    for param in cmd.params:
        if param.param_type_name == "option":
            names += [*param.opts, *param.secondary_opts]
    names += cmd.get_help_option_names(
        cmd.make_context(cmd.name, ["--help"], resilient_parsing=True)
    )
    return names


def test_the_walk_reaches_commands_that_modules_register() -> None:
    found = {" ".join(p) for p in PATHS}
    assert {"kmer", "keys create", "keys revoke", "nodes revoke", "tokens revoke"} <= found
    assert len(found) > 25


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "fogwheel")
def test_no_command_has_two_options_of_one_name(path: tuple[str, ...]) -> None:
    names = option_names(command_at(path))
    clashes = sorted(n for n, count in Counter(names).items() if count > 1)
    assert not clashes, f"`fogwheel {' '.join(path)}` has {clashes} more than once"


def test_kmer_k_is_the_kmer_length_and_api_key_has_no_short_form() -> None:
    kmer = command_at(("kmer",))
    by_name = {n: p for p in kmer.params for n in getattr(p, "opts", [])}
    assert by_name["-k"] is by_name["--kmer-length"]
    assert by_name["-k"].name == "k"
    for path in PATHS:
        for param in command_at(path).params:
            if "--api-key" in getattr(param, "opts", []):
                assert param.opts == ["--api-key"], f"fogwheel {' '.join(path)}: {param.opts}"


BRACKETED = re.compile(r"\[[^\]\s]+\]")


def written_help(cmd: Command) -> str:
    """The help texts as written in the code: the command's and each option's."""
    parts = [cmd.help or "", cmd.short_help or ""]
    parts += [getattr(p, "help", None) or "" for p in cmd.params]
    return "\n".join(parts)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "fogwheel")
def test_help_shows_every_bracketed_word_as_written(path: tuple[str, ...]) -> None:
    """Rich markup eats `[ml]` unless it is escaped; what the code says, `--help` shows."""
    cmd = command_at(path)
    wanted = {m.replace("\\[", "[") for m in BRACKETED.findall(written_help(cmd))}
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    missing = sorted(w for w in wanted if w not in res.output)
    assert not missing, f"`fogwheel {' '.join(path)} --help` lost {missing}:\n{res.output}"


def test_train_help_names_the_ml_extra() -> None:
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "[ml]" in res.output and "Needs the  extra" not in res.output
