"""File access inside a guest's scratch directory that no link the guest makes can redirect.

Guest code can rename, replace and link anything in its scratch directory while the agent
works there (a thread or process it left behind). So the agent never opens a path under
scratch by name: it opens the scratch directory once, then walks each component of a name
with O_NOFOLLOW relative to the directory before it, refuses `..`, absolute names and links,
opens files O_NONBLOCK (a FIFO cannot hang it), checks with fstat that it got a regular file,
and reads or writes through that descriptor only. New files are created O_EXCL, so an entry
planted in advance fails the task instead of receiving the agent's bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
CHUNK = 1 << 20


class Unsafe(OSError):
    """A name leads outside the directory, through a link, or to something not a plain file."""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (made 0600 if absent): one process at a time on a
    data dir's shared work, a restarted agent's leftover included."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def parts_of(name: str) -> list[str]:
    """The components of a relative name, refusing absolute names, `..` and empty ones."""
    path = PurePosixPath(name)
    parts = [p for p in path.parts if p != "."]
    if path.is_absolute() or not parts or ".." in parts or "\0" in name:
        raise Unsafe(f"file name {name!r} leads outside the task's directory")
    return parts


@contextlib.contextmanager
def opened_dir(path: Path) -> Iterator[int]:
    """A descriptor of `path` (not followed if it is a link)."""
    fd = os.open(path, DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def _walk(base_fd: int, parts: list[str], *, create: bool) -> int:
    """A new descriptor of the directory `parts` names under `base_fd`; `create` makes it."""
    fd = os.dup(base_fd)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                raise Unsafe(f"{part!r} is not a directory inside the task's directory") from e
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_file(base_fd: int, name: str) -> int:
    """A read descriptor of the regular file `name` under `base_fd`; Unsafe otherwise.

    FileNotFoundError when it is not there."""
    parts = parts_of(name)
    dfd = _walk(base_fd, parts[:-1], create=False)
    try:
        try:
            fd = os.open(parts[-1], FILE_FLAGS, dir_fd=dfd)
        except OSError as e:
            if e.errno == 40:  # ELOOP: the last component is a link
                raise Unsafe(f"output {name!r} is a link, not a file") from e
            raise
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Unsafe(f"output {name!r} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def copy_out(base_fd: int, name: str, dst: Path, limit: int) -> int:
    """Copy the regular file `name` under `base_fd` to `dst` (a new file); its size.

    Stops with Unsafe past `limit` bytes (a file that keeps growing)."""
    fd = open_file(base_fd, name)
    try:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        size = 0
        try:
            while chunk := os.read(fd, CHUNK):
                size += len(chunk)
                if size > limit:
                    raise Unsafe(f"output {name!r} is larger than {limit} bytes")
                _write_all(out, chunk)
        finally:
            os.close(out)
        return size
    finally:
        os.close(fd)


def read_file(base_fd: int, name: str, limit: int) -> bytes:
    fd = open_file(base_fd, name)
    try:
        chunks, size = [], 0
        while chunk := os.read(fd, CHUNK):
            size += len(chunk)
            if size > limit:
                raise Unsafe(f"output {name!r} is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def place(base_fd: int, name: str, src: Path) -> None:
    """Copy the agent's file `src` to a new file `name` under `base_fd` (parents made)."""
    parts = parts_of(name)
    dfd = _walk(base_fd, parts[:-1], create=True)
    try:
        out = os.open(
            parts[-1],
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=dfd,
        )
    finally:
        os.close(dfd)
    try:
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                _write_all(out, chunk)
    finally:
        os.close(out)


def place_tree(base_fd: int, name: str, src: Path) -> None:
    """Copy the agent's directory `src` (plain files) to `name` under `base_fd`."""
    for path in sorted(src.rglob("*")):
        if path.is_file() and not path.is_symlink():
            place(base_fd, f"{name}/{path.relative_to(src).as_posix()}", path)
    with contextlib.suppress(OSError):
        os.close(_walk(base_fd, parts_of(name), create=True))


def files_under(base_fd: int, name: str, max_files: int = 100_000) -> Iterator[str]:
    """Names (relative to `base_fd`) of the regular files in directory `name`, links skipped."""
    try:
        top = _walk(base_fd, parts_of(name), create=False)
    except (Unsafe, FileNotFoundError):
        return
    stack: list[tuple[int, str]] = [(top, name)]
    seen = 0
    try:
        while stack:
            dfd, prefix = stack.pop()
            try:
                with os.scandir(dfd) as entries:
                    listing = [
                        (e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
                        for e in entries
                    ]
                for entry, is_dir, is_file in listing:
                    seen += 1
                    if seen > max_files:
                        return
                    if is_file:
                        yield f"{prefix}/{entry}"
                    elif is_dir:
                        with contextlib.suppress(OSError):
                            stack.append(
                                (os.open(entry, DIR_FLAGS, dir_fd=dfd), f"{prefix}/{entry}")
                            )
            finally:
                os.close(dfd)
    finally:
        for dfd, _ in stack:
            os.close(dfd)


def chown_tree(path: Path, uid: int) -> None:
    """Give `path` and everything in it to `uid`, never through a link."""
    top = os.open(path, DIR_FLAGS)
    os.chown(top, uid, uid)
    stack = [top]
    try:
        while stack:
            dfd = stack.pop()
            try:
                with os.scandir(dfd) as entries:
                    names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
                for name, is_dir in names:
                    with contextlib.suppress(OSError):
                        os.chown(name, uid, uid, dir_fd=dfd, follow_symlinks=False)
                    if is_dir:
                        with contextlib.suppress(OSError):
                            stack.append(os.open(name, DIR_FLAGS, dir_fd=dfd))
            finally:
                os.close(dfd)
    finally:
        for dfd in stack:
            os.close(dfd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
