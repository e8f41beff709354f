"""`pip install -e .` alone (no extras) runs the demo: nothing on its path needs an extra.

PostgreSQL's driver (psycopg, the `[postgres]` extra), PyTorch (`[ml]`) and Dask (`[bench]`)
are blocked in a fresh interpreter, which then imports everything `fogwheel demo` and a
SQLite coordinator load. A module that imports one of them at its top fails here, as it would
on a machine that ran only the README's first command.
"""

from __future__ import annotations

import subprocess
import sys

EXTRAS = ("psycopg", "torch", "dask", "distributed")
MODULES = (
    "fogwheel",
    "fogwheel.cli",
    "fogwheel.demo",
    "fogwheel.localfog",
    "fogwheel.coordinator.server",
    "fogwheel.node.agent",
)


def test_the_demo_and_a_sqlite_coordinator_import_without_any_extra() -> None:
    block = "".join(f"sys.modules[{m!r}] = None; " for m in EXTRAS)  # import then fails
    code = f"import sys; {block}" + "; ".join(f"import {m}" for m in MODULES)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    help_ = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; {block}from fogwheel.cli import main; main()",
            "--help",
        ],
        capture_output=True,
        text=True,
    )
    assert help_.returncode == 0 and "demo" in help_.stdout, help_.stderr[-2000:]
