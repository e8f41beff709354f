"""The running agent's local control channel: a pause file the owner writes, a status file the
agent writes, both in the node's data dir.

Why files and not a unix socket: a paused device must stay paused across a crash, a
`Restart=on-failure` and a reboot (the owner took it back; a restart must not give it away
again), and a file is that decision written down. The agent listens on nothing new, so no local
user can talk to it who cannot already write its data dir (under systemd /var/lib/fogwheel,
mode 0750, owned by the service's user: root or that user). The agent only ever asks whether
`paused` exists and reads at most `MAX_READ` bytes of it (a hostile or broken file pauses it
with the default, never crashes it); the owner's side reads `status.json` the same bounded way.
A thread looks every `POLL_S` (one stat) and wakes the agent's loop on a change, so a pause is
acted on within a second even while the node sleeps between syncs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAUSE_FILE = "paused"
STATUS_FILE = "status.json"
MAX_READ = 4096  # bytes of a pause file, 64 KiB of a status file
POLL_S = 1.0
STATUS_EVERY_S = 1.0  # the agent rewrites its status at most this often (and on a pause)


@dataclass(frozen=True, slots=True)
class PauseOrder:
    """The owner's pause: `finish` lets running tasks finish first."""

    finish: bool = False
    at: float = 0.0  # wall clock when it was asked for


def read_pause(data_dir: Path) -> PauseOrder | None:
    """The pause in force, or None. A file that cannot be read as ours still pauses."""
    path = data_dir / PAUSE_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:
        return PauseOrder()  # there, but not for us to read (a symlink, say): paused anyway
    try:
        raw = os.read(fd, MAX_READ)
    except OSError:
        raw = b""
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
        finish, at = data.get("finish"), data.get("at")
        return PauseOrder(
            finish=finish is True,
            at=float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0,
        )
    except (ValueError, AttributeError, OverflowError):
        return PauseOrder()


def write_pause(data_dir: Path, finish: bool, now: float) -> Path:
    """Pause the node whose data dir this is (persists until `clear_pause`)."""
    path = data_dir / PAUSE_FILE
    _atomic_write(path, json.dumps({"finish": finish, "at": now}).encode(), 0o644)
    return path


def clear_pause(data_dir: Path) -> bool:
    """Resume: True when the node was paused."""
    try:
        (data_dir / PAUSE_FILE).unlink()
        return True
    except FileNotFoundError:
        return False


def write_status(data_dir: Path, status: dict[str, Any]) -> None:
    """The agent's status for `fogwheel node status` (no secret in it)."""
    _atomic_write(data_dir / STATUS_FILE, json.dumps(status).encode(), 0o644)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The agent's last status, or None when there is none or it is not a status."""
    try:
        fd = os.open(data_dir / STATUS_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        raw = os.read(fd, 16 * MAX_READ)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class PauseWatcher:
    """Looks at the pause file every `POLL_S` and calls `on_change` when it comes or goes."""

    def __init__(self, data_dir: Path, on_change: Callable[[], None]) -> None:
        self.data_dir = data_dir
        self._on_change = on_change
        self._stop = threading.Event()
        self.order = read_pause(data_dir)
        self._thread = threading.Thread(target=self._watch, name="pause-watch", daemon=True)

    def start(self) -> PauseWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            order = read_pause(self.data_dir)
            if order != self.order:
                self.order = order
                self._on_change()


class StatusWriter:
    """Writes the agent's status at most every `STATUS_EVERY_S`, and at once when it pauses,
    resumes or stops; a full disk costs a status, never the agent."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._last = 0.0
        self._last_key: tuple[Any, ...] = ()

    def maybe_write(self, status: dict[str, Any], *, force: bool = False) -> None:
        now = time.monotonic()
        key = tuple(status.get(k) for k in ("state", "running", "queued", "handing_back"))
        if not force and key == self._last_key and now - self._last < STATUS_EVERY_S:
            return
        self._last, self._last_key = now, key
        with contextlib.suppress(OSError):
            write_status(self.data_dir, {**status, "updated_at": time.time()})
