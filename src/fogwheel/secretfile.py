"""Secrets in files, never on command lines: every local user can read a process's argv.

The format is a shell env file (`NAME=value` lines, `#` comments, an optional `export `), so
the file `fogwheel up` writes can be `source`d and also read back by `--secrets-file` and
`--token-file`. A secrets file must be private to its owner (mode 0600 or stricter): one that
others can read is refused with a sentence that says how to fix it.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

from fogwheel.errors import FogwheelError


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Write `values` as `export NAME='value'` lines, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        for name, value in values.items():
            f.write(f"export {name}={shlex.quote(value)}\n")
    tmp.replace(path)


def read_env_file(path: Path) -> dict[str, str]:
    """The `NAME=value` pairs of a private env file; FogwheelError when it is not private."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise FogwheelError(f"cannot read the secrets file {path}: {e.strerror}") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise FogwheelError(f"the secrets file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise FogwheelError(
                f"the secrets file {path} can be read by other users "
                f"(mode {stat.S_IMODE(st.st_mode):o}): run `chmod 600 {path}`"
            )
        text = f.read(1 << 20)
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        name, sep, value = line.partition("=")
        if not sep:
            out.setdefault("", line)  # a file holding only the secret itself
            continue
        words = shlex.split(value) if value else [""]
        out[name.strip()] = words[0] if words else ""
    return out


def read_token_file(path: Path) -> str:
    """A node's join string from a file: a FOGWHEEL_JOIN_TOKEN= line or the string alone."""
    values = read_env_file(path)
    token = values.get("FOGWHEEL_JOIN_TOKEN") or values.get("")
    if not token:
        raise FogwheelError(f"{path} holds no join token (FOGWHEEL_JOIN_TOKEN=... or the token)")
    return token
