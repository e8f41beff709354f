"""What a node runs for a Hadoop Streaming job: the user's commands over stdin and stdout, the
sort between them, and the partitions (Hadoop's PipeMapper and PipeReducer).

A map task pipes its split (the file `split`) into the mapper and reads the mapper's stdout as
lines. Map-only, those lines are the output, byte for byte. Otherwise each line's key is what
precedes its first tab (the whole line when it has none); the lines are sorted by key, ties by
the whole line, in byte order (Hadoop's sort by key; `sort` with LC_ALL=C for any key without a
byte below tab), optionally piped through the combiner and sorted again, and written, still
sorted, to `part-r` for r = crc32(key) mod R: the same partition in every process. A reduce
task merges its sorted `in-*` files (one per map task) into the reducer's stdin, never whole in
memory, and the reducer's stdout is its output.

Commands run without a shell, split like a shell would split them (`shlex`, as Hadoop splits
its -mapper string), in the task's working directory inside the node's sandbox, with the
environment a command task gets. A command named by a file shipped with `-file` is run from
the working directory. A sort holds at most RUN_LINES lines (RUN_BYTES) in memory: longer
outputs are sorted in runs on disk and merged, FAN_IN runs at a time. A line is at most
MAX_LINE bytes.
"""

from __future__ import annotations

import heapq
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MAX_LINE = 64 << 20  # bytes in one line of a command's output
RUN_LINES = 200_000  # lines sorted in memory before they spill to a run file…
RUN_BYTES = 32 << 20  # …or bytes of lines, whichever comes first
FAN_IN = 32  # run files merged at once
STDERR_TAIL = 4000  # characters of a failed command's stderr in its error
ENV_KEPT = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ")
WORK_DIR = ".streaming"  # spilled runs, inside the task's scratch directory


class StreamingCommandFailed(Exception):
    """A mapper, combiner or reducer exited with a non-zero status (or could not start)."""


def key_of(line: bytes) -> bytes:
    """Hadoop Streaming's key of an output line: what precedes the first tab, or the whole
    line (without its newline) when it has no tab."""
    tab = line.find(b"\t")
    return line[:tab] if tab >= 0 else line.rstrip(b"\n")


def order(line: bytes) -> tuple[bytes, bytes]:
    """The sort order of map output: by key, ties by the whole line without its newline, in
    byte order (`sort` compares lines without their newlines too)."""
    return key_of(line), line[:-1] if line.endswith(b"\n") else line


def partition_for(key: bytes, partitions: int) -> int:
    """The reduce task of `key`: CRC-32, the same in every process (Python's `hash` is salted)."""
    return zlib.crc32(key) % partitions


def read_lines(stream: IO[bytes], what: str) -> Iterator[bytes]:
    """The lines of `stream`, each ending in a newline (one is added to a last line without),
    each at most MAX_LINE bytes."""
    while True:
        line = stream.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE:
            raise StreamingCommandFailed(f"{what} has a line longer than {MAX_LINE} bytes")
        yield line if line.endswith(b"\n") else line + b"\n"


def sorted_lines(lines: Iterable[bytes], work: Path) -> Iterator[bytes]:
    """`lines` in `order`, holding at most RUN_LINES of them (RUN_BYTES) in memory: longer
    inputs are sorted in runs written under `work` and merged."""
    runs: list[Path] = []
    batch: list[bytes] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if len(batch) >= RUN_LINES or size >= RUN_BYTES:
            runs.append(_spill(sorted(batch, key=order), work))
            batch, size = [], 0
    batch.sort(key=order)
    if not runs:
        yield from batch
        return
    runs.append(_spill(batch, work))
    del batch
    while len(runs) > FAN_IN:
        runs = [_merge_runs(runs[:FAN_IN], work), *runs[FAN_IN:]]
    yield from merged(runs)
    for run in runs:
        run.unlink(missing_ok=True)


def merged(paths: Sequence[Path]) -> Iterator[bytes]:
    """The lines of sorted files, merged in `order`, each file read a line at a time."""
    with ExitStack() as files:
        streams = [read_lines(files.enter_context(open(p, "rb")), p.name) for p in paths]
        yield from heapq.merge(*streams, key=order)


def _spill(lines: Iterable[bytes], work: Path) -> Path:
    work.mkdir(exist_ok=True)
    fd, name = tempfile.mkstemp(dir=work, prefix="run-")
    with os.fdopen(fd, "wb") as f:
        f.writelines(lines)
    return Path(name)


def _merge_runs(runs: Sequence[Path], work: Path) -> Path:
    out = _spill(merged(runs), work)
    for run in runs:
        run.unlink()
    return out


# -- running a command ------------------------------------------------------------------------


def command_argv(argv: Sequence[str], shipped: Sequence[str]) -> list[str]:
    """The argv to execute: a program named by a shipped file runs from the working directory
    (made executable, or run by the interpreter its `#!` line names when it cannot be)."""
    program, rest = argv[0], list(argv[1:])
    if "/" in program or program not in shipped or not os.path.isfile(program):
        return [program, *rest]
    try:
        os.chmod(program, 0o755)
        return [f"./{program}", *rest]
    except OSError:
        pass
    with open(program, "rb") as f:
        first = f.readline(4096)
    if first.startswith(b"#!"):
        return [*first[2:].decode("utf-8", "replace").split(), f"./{program}", *rest]
    return [f"./{program}", *rest]


def command_env() -> dict[str, str]:
    """The environment of a streaming command: a command task's (the sandbox's PATH, HOME and
    TMPDIR), without the worker's own settings such as PYTHONPATH."""
    return {k: os.environ[k] for k in ENV_KEPT if k in os.environ}


class Running:
    """One command of a task, started with its stdin and stdout given; `finish` waits for it
    and raises StreamingCommandFailed, with its stderr's tail, unless it exited with 0."""

    def __init__(
        self,
        role: str,
        argv: Sequence[str],
        shipped: Sequence[str],
        *,
        stdin: int | IO[bytes],
        stdout: int | IO[bytes],
    ) -> None:
        self.role = role
        self.shown = " ".join(argv)
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()
        try:
            self.proc = subprocess.Popen(
                command_argv(argv, shipped),
                stdin=stdin,
                stdout=stdout,
                stderr=self.stderr,
                env=command_env(),
                close_fds=True,
            )
        except OSError as e:
            self.stderr.close()
            raise StreamingCommandFailed(
                f"the {role} `{self.shown}` could not start: {e.strerror or e}"
            ) from None

    def lines(self) -> Iterator[bytes]:
        """Its stdout (started with stdout=PIPE) as lines; once they end, `finish`."""
        assert self.proc.stdout is not None
        try:
            yield from read_lines(self.proc.stdout, f"the {self.role}'s output")
        except BaseException:
            self.proc.kill()
            self.finish(check=False)
            raise
        self.proc.stdout.close()
        self.finish()

    def finish(self, check: bool = True) -> None:
        code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.seek(0, os.SEEK_END)
        size = self.stderr.tell()
        self.stderr.seek(max(0, size - STDERR_TAIL))
        tail = self.stderr.read().decode("utf-8", "replace")
        self.stderr.close()
        if code != 0 and check:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            said = f"; its stderr ends:\n{tail}" if tail.strip() else " (no stderr)"
            raise StreamingCommandFailed(f"the {self.role} `{self.shown}` {how}{said}")


def feed(proc: subprocess.Popen[bytes], lines: Iterable[bytes]) -> None:
    """Write `lines` to the command's stdin and close it; a command that stops reading early
    (`head`) ends the feeding, as in a shell pipeline: its exit status decides."""
    assert proc.stdin is not None
    try:
        for line in lines:
            proc.stdin.write(line)
    except BrokenPipeError:
        pass
    finally:
        with suppress(BrokenPipeError):
            proc.stdin.close()


# -- the tasks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamingMap:
    """Every map task of a streaming job: `split` through the mapper (and the combiner) into
    `out` (map-only, `partitions` 0) or `part-00000`… sorted by key."""

    mapper: tuple[str, ...]
    combiner: tuple[str, ...] | None
    partitions: int
    shipped: tuple[str, ...] = ()

    def __call__(self) -> dict[str, int]:
        work = Path(WORK_DIR)
        with open("split", "rb") as split:
            if not self.partitions:
                with open("out", "wb") as out:
                    Running("mapper", self.mapper, self.shipped, stdin=split, stdout=out).finish()
                return {"bytes_out": Path("out").stat().st_size}
            pipe = subprocess.PIPE
            mapper = Running("mapper", self.mapper, self.shipped, stdin=split, stdout=pipe)
            ordered = sorted_lines(mapper.lines(), work)
            if self.combiner is not None:
                # sorted to a file first: the combiner's stdin never waits on its own stdout
                with open(_spill(ordered, work), "rb") as sorted_in:
                    combiner = Running(
                        "combiner", self.combiner, self.shipped, stdin=sorted_in, stdout=pipe
                    )
                    ordered = sorted_lines(combiner.lines(), work)
                    lines = self._write_parts(ordered)
            else:
                lines = self._write_parts(ordered)
        shutil.rmtree(work, ignore_errors=True)
        return {"lines_out": lines}

    def _write_parts(self, ordered: Iterable[bytes]) -> int:
        """Write sorted lines to their partitions (each stays sorted); how many lines."""
        n = 0
        with ExitStack() as files:
            parts = [
                files.enter_context(open(f"part-{r:05d}", "wb")) for r in range(self.partitions)
            ]
            for line in ordered:
                parts[partition_for(key_of(line), self.partitions)].write(line)
                n += 1
        return n


@dataclass(frozen=True)
class StreamingReduce:
    """Every reduce task of a streaming job: the sorted `in-*` files merged into the reducer's
    stdin (no reducer: the merged lines themselves, Hadoop's identity reducer) and its stdout
    into `out`."""

    reducer: tuple[str, ...] | None
    shipped: tuple[str, ...] = ()

    def __call__(self) -> dict[str, int]:
        inputs = sorted(p for p in Path(".").glob("in-*") if p.name not in self.shipped)
        with open("out", "wb") as out:
            if self.reducer is None:
                out.writelines(merged(inputs))
            else:
                reducer = Running(
                    "reducer", self.reducer, self.shipped, stdin=subprocess.PIPE, stdout=out
                )
                try:
                    feed(reducer.proc, merged(inputs))
                finally:
                    reducer.finish()
        return {"inputs": len(inputs), "bytes_out": Path("out").stat().st_size}
