"""A seccomp filter for guest code, built with libseccomp (through ctypes) for bubblewrap.

bubblewrap's `--seccomp FD` loads a compiled BPF program just before it runs the guest. The
program allows every system call but those a guest has no business making: new namespaces
(`unshare`, `setns`, and `clone` with any CLONE_NEW* flag; `clone3`, whose flags the filter
cannot read, answers ENOSYS so that the C library falls back to `clone`), mounting, tracing
other processes, the kernel keyring, BPF, perf events, loading kernels or modules, and a few
more. Each answers EPERM, so a guest sees an ordinary refusal.

libseccomp (`libseccomp.so.2`, Debian's libseccomp2) is opened with ctypes: the Python binding
is often not importable from the interpreter the agent runs under. Without it, `compile_filter`
answers None and the agent says at start that guests run without a syscall filter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import tempfile
from functools import cache

log = logging.getLogger("fogwheel.node")

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7  # enum scmp_compare: (arg & datum_a) == datum_b

# Each answers EPERM inside a sandbox.
DENIED = (
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "lookup_dcookie",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "syslog",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "clock_adjtime",
    "sethostname",
    "setdomainname",
    "vhangup",
    "nfsservctl",
)
CLONE_NEW = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080,
}


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)  # SCMP_ACT_ERRNO(code)


def _library() -> ctypes.CDLL | None:
    for name in ("libseccomp.so.2", ctypes.util.find_library("seccomp")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        lib.seccomp_export_bpf.restype = ctypes.c_int
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        return lib
    return None


@cache
def compile_filter() -> bytes | None:
    """The BPF program (for bubblewrap's --seccomp), or None where libseccomp is missing."""
    lib = _library()
    if lib is None:
        log.warning("no libseccomp (libseccomp.so.2): guests run without a syscall filter")
        return None
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        return None
    try:
        eperm = _errno_action(errno.EPERM)
        for name in DENIED:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a system call on this architecture
            if lib.seccomp_rule_add_array(ctx, eperm, nr, 0, None) != 0:
                raise OSError(f"seccomp_rule_add({name}) failed")
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        for flag in CLONE_NEW.values():
            cmp = _ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag)
            if lib.seccomp_rule_add_array(ctx, eperm, clone, 1, ctypes.byref(cmp)) != 0:
                raise OSError("seccomp_rule_add(clone) failed")
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0:
            lib.seccomp_rule_add_array(ctx, _errno_action(errno.ENOSYS), clone3, 0, None)
        with tempfile.TemporaryFile() as f:
            if lib.seccomp_export_bpf(ctx, f.fileno()) != 0:
                raise OSError("seccomp_export_bpf failed")
            f.seek(0)
            return f.read()
    except OSError as e:
        log.warning("cannot build the seccomp filter (%s): guests run without one", e)
        return None
    finally:
        lib.seccomp_release(ctx)


def filter_fd(program: bytes) -> int:
    """A readable file descriptor holding `program`, to hand to bubblewrap (caller closes)."""
    fd = os.memfd_create("fogwheel-seccomp", 0)  # not CLOEXEC: the child inherits it
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
