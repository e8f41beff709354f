"""Size-limited scratch: a tmpfs of its own under each slot, mounted by the agent.

A task's scratch directory is its only writable place; without a bound, one task fills the
device's disk. A root agent mounts a tmpfs of `--scratch-mb` at each slot's scratch directory
before the sandbox starts, so the guest sees it through its bind mount and the agent can still
read the outputs after the guest is gone (a tmpfs that bubblewrap made would vanish with it).
A full tmpfs answers ENOSPC, and the slot reports "scratch quota of N MB exceeded".

The agent first moves into a mount namespace of its own (`private_mounts`, before it starts
any thread), so these mounts are invisible to the host and vanish with the agent, even when
it is killed with SIGKILL: nothing is left mounted in its data dir.

A tmpfs lives in memory: what a task keeps in scratch is charged to its slot's memory group,
so its memory limit covers its scratch files too (the error says how much they held).
Agents that cannot mount (not root) keep scratch on disk, bounded per file by RLIMIT_FSIZE,
and say so at start.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("fogwheel.node")

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
CLONE_NEWNS = 0x00020000

_libc = ctypes.CDLL(None, use_errno=True)


def mount_tmpfs(path: Path, size_bytes: int) -> None:
    """Mount a tmpfs of `size_bytes` at `path` (nosuid, nodev); OSError if it cannot."""
    options = f"size={size_bytes},mode=0755".encode()
    rc = _libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV, options)
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot mount a tmpfs at {path}: {os.strerror(code)}")


def unmount(path: Path) -> None:
    """Detach every mount at `path` (nothing when there is none)."""
    for _ in range(16):
        if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
            return


def private_mounts() -> bool:
    """Move this process into a mount namespace of its own whose mounts do not propagate to
    the host's; whether it could (root only, and only while the process has one thread)."""
    if os.geteuid() != 0:
        return False
    if _libc.unshare(CLONE_NEWNS) != 0:
        log.debug("no mount namespace of our own: %s", os.strerror(ctypes.get_errno()))
        return False
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        log.debug("cannot make our mounts private: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def can_mount() -> bool:
    """Whether this agent can give slots a tmpfs scratch (root, with mount allowed)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory(prefix="fogwheel-tmpfs-probe-") as tmp:
        try:
            mount_tmpfs(Path(tmp), 1 << 20)
        except OSError as e:
            log.debug("no tmpfs scratch: %s", e)
            return False
        unmount(Path(tmp))
    return True


def used_bytes(path: Path) -> int:
    with contextlib.suppress(OSError):
        st = os.statvfs(path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize
    return 0


def is_full(path: Path, size_bytes: int) -> bool:
    """Whether the scratch at `path` (of `size_bytes`) is (nearly) out of space."""
    with contextlib.suppress(OSError):
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize < max(64 << 10, size_bytes // 200)
    return False


def is_no_space(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
