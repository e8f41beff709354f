"""The bubblewrap mounts that make an unpacked program image the guest's `/`.

The new root is an empty tmpfs; each top-level entry of the image is bound into it read-only
(a top-level symlink, `bin -> usr/bin` say, is made again as a symlink, never bound: bwrap
would resolve it on the host). The sandbox's own things live under `/.fogwheel`, a name no
image may hold (core/images.RESERVED): the task's scratch dir at `/.fogwheel/task` (the
guest's working directory and $HOME), and the host's Python at `/.fogwheel/host/...`,
read-only, for the launcher that sets the rlimits and drops to the guest uid before it execs
the guest (sandbox.LAUNCHER). The image has no Python of its own to run it, so the launcher is
started through the host's dynamic loader (`ld.so --library-path DIRS python`) with every path
under `/.fogwheel/host`: the image's own /lib and /usr are never touched, and once the
launcher has exec'd the guest nothing of the host's Python is mapped in it.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from fogwheel.core.images import RESERVED

TOP = f"/{RESERVED}"
TASK_DIR = f"{TOP}/task"  # the scratch dir as the guest sees it
HOST = f"{TOP}/host"  # where the host's interpreter is shown, read-only
_SKIP = {RESERVED, "proc", "dev", "sys", ".meta"}  # made by bwrap itself, or not the image's


@dataclass(frozen=True)
class Runtime:
    """The host's Python as the launcher runs it inside an image."""

    loader: str  # the host's dynamic loader (ld-linux-*.so.*), a real path
    library_dirs: tuple[str, ...]  # where the interpreter's shared libraries are
    python: str  # the interpreter, a real path
    prefix: str  # its installation (the standard library), a real path

    def binds(self) -> list[str]:
        """Host directories to show under HOST: the loader's and libraries' dirs, the prefix."""
        dirs = {os.path.dirname(self.loader), *self.library_dirs, self.prefix}
        if not self.python.startswith(self.prefix + "/"):
            dirs.add(os.path.dirname(self.python))
        out: list[str] = []
        for d in sorted(dirs, key=len):
            if not any(d == o or d.startswith(o + "/") for o in out):
                out.append(d)
        return out

    def argv(self) -> list[str]:
        """The command line, as seen in the sandbox, that starts the interpreter."""
        libs = ":".join(HOST + d for d in self.library_dirs)
        return [HOST + self.loader, "--library-path", libs, HOST + self.python]


@functools.cache
def host_runtime() -> Runtime | None:
    """This process's interpreter, its loader and library dirs (from /proc/self/maps); None
    where they cannot be found (a static interpreter, no /proc): images cannot run here."""
    python = os.path.realpath(sys.executable)
    loader = None
    libs: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(maxsplit=5)[-1].strip() if line.count(" ") >= 5 else ""
                if not path.startswith("/"):
                    continue
                name = os.path.basename(path)
                real = os.path.realpath(path)
                if name.startswith(("ld-linux", "ld-musl", "ld64.so", "ld.so")):
                    loader = real
                if name.startswith(("libc.", "libm.", "libpython", "libpthread.", "libdl.")):
                    d = os.path.dirname(real)
                    if d not in libs:
                        libs.append(d)
    except OSError:
        return None
    if loader is None or not os.path.exists(python):
        return None
    prefix = os.path.realpath(sys.base_prefix)
    return Runtime(loader, tuple(libs), python, prefix)


def image_mounts(image: Path, scratch: Path, runtime: Runtime) -> list[str]:
    """bwrap arguments that build `/` from `image`, with scratch and the launcher's runtime."""
    args = ["--tmpfs", "/"]
    with os.scandir(image) as entries:
        for e in sorted(entries, key=lambda e: e.name):
            if e.name in _SKIP:
                continue
            dest = "/" + e.name
            if e.is_symlink():
                args += ["--symlink", os.readlink(e.path), dest]
            elif e.is_dir(follow_symlinks=False) or e.is_file(follow_symlinks=False):
                args += ["--ro-bind", e.path, dest]
    args += ["--perms", "0755", "--dir", TOP, "--perms", "0755", "--dir", HOST]
    made = {TOP, HOST}
    for d in runtime.binds():
        dest = HOST + d
        for parent in reversed(Path(dest).parents):
            p = str(parent)
            if p.startswith(HOST + "/") and p not in made:
                args += ["--perms", "0755", "--dir", p]
                made.add(p)
        args += ["--ro-bind", d, dest]
    args += ["--bind", str(scratch), TASK_DIR]
    return args
