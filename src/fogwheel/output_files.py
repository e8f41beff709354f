"""Write a task's output files on the customer's machine: only beneath the chosen directory.

The names come from the customer's own request, and the bytes from a device fogwheel does not
own, so a write must never land where the customer did not ask (kubelet's rule for a volume
subPath): a name is relative and has no `..`, `.` or empty part; every directory on the way is
opened relative to its parent with `O_NOFOLLOW` (a symlink planted in the directory, or in one
it creates, is refused rather than followed); the file is written to a fresh temporary name and
renamed into place, so a link at the final name is replaced, never written through; and a file
that is there already is replaced only when the caller says `overwrite=True`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from fogwheel.errors import OutputRefused

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def requested(
    outputs: Mapping[str, object], names: Iterable[str] | None
) -> tuple[dict[str, object], list[str]]:
    """The outputs whose names were requested, and a warning for each that was not (a node
    that reports a file nobody asked for, `.git/hooks/post-checkout` say, gets it dropped)."""
    if names is None:
        return dict(outputs), []
    wanted = set(names)
    kept = {k: v for k, v in outputs.items() if k in wanted}
    dropped = sorted(k for k in outputs if k not in wanted)
    warnings = [
        f"a node reported an output file {name!r} that the task did not request: dropped"
        for name in dropped
    ]
    return kept, warnings


def parts_of(name: str) -> list[str]:
    """The path components of an output name, refusing one that could lead anywhere else."""
    if not name or "\x00" in name or name.startswith("/") or "\\" in name:
        raise OutputRefused(f"output name {name!r} is not a relative path: not written")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise OutputRefused(f"output name {name!r} has an empty, '.' or '..' part: not written")
    return parts


def write_beneath(
    directory: str | os.PathLike[str], name: str, data: bytes, *, overwrite: bool = False
) -> Path:
    """Write `data` as `directory/name` without following any link below `directory`; returns
    the path. Raises OutputRefused when the name or the way there is unsafe, or when a file
    is there already and `overwrite` is not set."""
    parts = parts_of(name)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)  # the customer's own choice of directory
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except (NotADirectoryError, OSError) as e:
                raise OutputRefused(
                    f"output {name!r}: {part!r} under {root} is a link or not a directory "
                    f"({e.strerror}): not written"
                ) from None
            os.close(fd)
            fd = sub
        _write_file(fd, parts[-1], data, overwrite, root / name)
    finally:
        os.close(fd)
    return root / name


def _write_file(dir_fd: int, leaf: str, data: bytes, overwrite: bool, shown: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    # O_EXCL: the name must not exist, not even as a link, so nothing is written through one.
    target = f".{leaf}.fogwheel-{uuid.uuid4().hex[:12]}.part" if overwrite else leaf
    try:
        fd = os.open(target, flags, 0o644, dir_fd=dir_fd)
    except FileExistsError:
        raise OutputRefused(
            f"{shown} exists already: not overwritten (pass overwrite=True to replace it)"
        ) from None
    done = False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if overwrite:  # a rename replaces a link at the name; it never writes through it
            os.rename(target, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target, dir_fd=dir_fd)
