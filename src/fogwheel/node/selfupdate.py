"""The node agent changes its own version when a roll-out asks: fetch, check, unpack, try, re-exec.

A sync answer may carry an offer (`SyncOut.agent`, docs/rollouts.md). Nothing of it runs before
every check passed, in this order:
1. the offer's signature is the pinned coordinator key's over (version, SHA-256, size)
   (agent_release.py): a coordinator impostor or a proxy cannot offer a wheel;
2. the wheel is fetched into the data dir, never more than the signed size, and its bytes hash
   to the signed SHA-256;
3. it is unpacked by hand, not by pip: only regular files under `fogwheel/` and one
   `fogwheel-*.dist-info/`, no absolute names, no `..`, no links, bounded in count and bytes;
4. a child Python with the unpacked tree first on its path must import the agent and say the
   offered version (a wheel that cannot start is found here, not after the re-exec).
Then the agent stops as on SIGTERM — what runs finishes and is reported, what is queued is
handed back, so no work is lost — and the process re-executes itself (same pid, same argv) with
the new tree first on PYTHONPATH. An offer without a SHA-256 asks the node to go back to the
version it was installed with (FOGWHEEL_AGENT_BASE_VERSION, set at the first re-exec): the
re-exec then leaves the unpacked trees off its path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fogwheel import __version__, agent_release

log = logging.getLogger("fogwheel.node")

BASE_ENV = "FOGWHEEL_AGENT_BASE_VERSION"  # the version the node was installed with
DIR_ENV = "FOGWHEEL_AGENT_DIR"  # the unpacked tree this process runs from, if any
MAX_WHEEL_BYTES = 64 << 20
MAX_UNPACKED_BYTES = 256 << 20
MAX_FILES = 5000
TRY_TIMEOUT_S = 120.0
MARK = ".fogwheel-release"  # in an unpacked tree: the SHA-256 it was unpacked from


class UpdateRefused(Exception):
    """An offer that is not taken: the sentence says which check it failed."""


class DoesNotStart(UpdateRefused):
    """The offered version, checked and unpacked, cannot start here: its own failure."""


@dataclass(frozen=True, slots=True)
class Target:
    """What to re-exec into: `path` first on PYTHONPATH, or None for the installed version."""

    version: str
    path: Path | None


def running_version() -> str:
    """The version of the agent in this process (what its syncs report)."""
    return __version__


def base_version() -> str:
    """The version this node was installed with (this one, unless it re-executed)."""
    return os.environ.get(BASE_ENV) or __version__


def prepare(
    offer: dict[str, Any],
    *,
    public_key: str,
    data_dir: Path,
    fetch: Callable[[str, Path, int], None],
) -> Target:
    """Check and unpack the offered version; UpdateRefused with the reason when it fails.

    `fetch(version, dest, max_bytes)` writes the wheel's bytes to `dest`."""
    version, sha, size, signature = (offer.get(k) for k in ("version", "sha", "size", "signature"))
    if not isinstance(version, str) or not agent_release.VERSION.match(version):
        raise UpdateRefused(f"offer of version {str(version)[:64]!r}: not a version")
    if sha is None:
        if version != base_version():
            raise UpdateRefused(
                f"asked to go back to {version}, but this node was installed with "
                f"{base_version()} and has no wheel of {version}"
            )
        return Target(version, None)
    if not (isinstance(size, int) and 0 < size <= MAX_WHEEL_BYTES and isinstance(signature, str)):
        raise UpdateRefused(f"offer of {version}: size or signature missing or out of bounds")
    if not isinstance(sha, str) or not agent_release.verify_release(
        public_key, version, sha, size, signature
    ):
        raise UpdateRefused(f"offer of {version}: its signature is not the coordinator's")
    root = data_dir / "agent"
    dest = root / version
    if (dest / MARK).is_file() and (dest / MARK).read_text().strip() == sha:
        try_tree(dest, version)
        return Target(version, dest)
    root.mkdir(parents=True, exist_ok=True)
    wheel = root / f"{version}.whl.part"
    try:
        fetch(version, wheel, size)
        got = _sha256_file(wheel)
        if wheel.stat().st_size != size or got != sha:
            raise UpdateRefused(
                f"the wheel of {version} fetched is not the one signed "
                f"({wheel.stat().st_size} bytes, {got[:12]}…; signed {size}, {sha[:12]}…)"
            )
        tmp = root / f".{version}.unpacking"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            unpack(wheel, tmp)
            (tmp / MARK).write_text(sha + "\n")
            try_tree(tmp, version)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone when renamed; a refused one too
    finally:
        wheel.unlink(missing_ok=True)
    try_tree(dest, version)  # where it will run from (paths inside it are absolute)
    return Target(version, dest)


def unpack(wheel: Path, dest: Path) -> None:
    """Unpack a pure-Python fogwheel wheel by hand: regular files of the package only."""
    dest.mkdir(parents=True)
    total = 0
    with zipfile.ZipFile(wheel) as zf:
        members = zf.infolist()
        if len(members) > MAX_FILES:
            raise UpdateRefused(f"the wheel holds {len(members)} files, over {MAX_FILES}")
        for m in members:
            name = m.filename
            parts = name.split("/")
            top = parts[0]
            if (
                name.startswith("/")
                or "\\" in name
                or any(p in ("", ".", "..") for p in parts[:-1])
                or parts[-1] in (".", "..")
                or not (
                    top == "fogwheel"
                    or (top.startswith("fogwheel-") and top.endswith(".dist-info"))
                )
            ):
                raise UpdateRefused(f"the wheel holds {name[:100]!r}: not a file of the package")
            if m.is_dir():
                continue
            mode = (m.external_attr >> 16) & 0o170000
            if mode and mode != stat.S_IFREG:
                raise UpdateRefused(f"the wheel's {name[:100]!r} is not a regular file")
            total += m.file_size
            if total > MAX_UNPACKED_BYTES:
                raise UpdateRefused(f"the wheel unpacks to over {MAX_UNPACKED_BYTES >> 20} MiB")
            out = dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(out, "xb") as f:
                left = m.file_size
                while chunk := src.read(min(1 << 20, left + 1)):
                    left -= len(chunk)
                    if left < 0:
                        raise UpdateRefused(f"the wheel's {name[:100]!r} is longer than it says")
                    f.write(chunk)
            out.chmod(0o644)
    if not (dest / "fogwheel" / "__init__.py").is_file():
        raise UpdateRefused("the wheel holds no fogwheel package")


def try_tree(path: Path, version: str) -> None:
    """A child Python with `path` first must import the agent and report `version`."""
    code = "import fogwheel, fogwheel.node.agent, fogwheel.cli; print(fogwheel.__version__)"
    env = {**_env_without_agent(), "PYTHONPATH": _path_with(path)}
    try:
        r = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=path,
            capture_output=True,
            text=True,
            timeout=TRY_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DoesNotStart(
            f"version {version} did not start within {TRY_TIMEOUT_S:.0f} s"
        ) from None
    said = r.stdout.strip().splitlines()[-1:] if r.returncode == 0 else []
    if said != [version]:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise DoesNotStart(f"version {version} does not start here ({why}; said {said})")


def _env_without_agent() -> dict[str, str]:
    """This process's environment without the unpacked tree it may run from."""
    env = dict(os.environ)
    env.pop(DIR_ENV, None)
    here = os.environ.get(DIR_ENV)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    else:
        env.pop("PYTHONPATH", None)
    return env


def _path_with(path: Path) -> str:
    rest = _env_without_agent().get("PYTHONPATH")
    return os.pathsep.join([str(path), *([rest] if rest else [])])


def exec_into(target: Target) -> None:
    """Replace this process with the agent of `target` (same pid, same arguments)."""
    env = _env_without_agent()
    env[BASE_ENV] = base_version()
    if target.path is not None:
        env["PYTHONPATH"] = _path_with(target.path)
        env[DIR_ENV] = str(target.path)
    argv = [sys.executable, "-m", "fogwheel", *sys.argv[1:]]
    log.warning("agent %s: re-executing as %s", __version__, target.version)
    for h in logging.getLogger().handlers:
        h.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


RETRY_REFUSED_S = 600.0  # an offer that failed a check is not tried again sooner
TRYING = "trying"  # in data_dir/agent: the version re-executed into, until it syncs once


class SelfUpdater:
    """The agent's side: takes offers from sync answers, prepares one at a time in a thread,
    and says when the agent should stop to re-execute (`ready` with the Target)."""

    def __init__(
        self,
        data_dir: Path,
        public_key: Callable[[], str],
        request: Callable[..., Any],
        ready: Callable[[Target], None],
        clock: Callable[[], float],
    ) -> None:
        self.data_dir = data_dir
        self.public_key = public_key
        self.request = request  # (method, path, **httpx kwargs) -> a streaming response context
        self.ready = ready
        self.clock = clock
        self.target: Target | None = None
        self._busy = False
        self._refused: dict[tuple[str, str | None], float] = {}
        self._no_version: dict[str, float] = {}  # versions that did not come up here
        self._trying = data_dir / "agent" / TRYING
        self._back: str | None = None  # a version re-executed into that never came up
        self._unconfirmed = self._trying.is_file()
        if self._unconfirmed:
            tried = self._trying.read_text().strip()
            if tried != running_version():  # it re-executed into `tried`, which never synced
                log.warning(
                    "agent %s did not come up on this device last time: not trying it again "
                    "for %.0f min",
                    tried[:64],
                    RETRY_REFUSED_S / 60,
                )
                self._no_version[tried] = clock()
                self._trying.unlink(missing_ok=True)
                self._unconfirmed = False
                self._back = tried  # told to the coordinator after the first answered sync

    def offered(self, offer: object) -> None:
        """A sync answer's `agent` field (None too: an answer came): confirm that this version
        came up, and start preparing an offer unless one is under way or was refused."""
        if self._unconfirmed:  # this version answered the coordinator: it came up
            self._trying.unlink(missing_ok=True)
            self._unconfirmed = False
        if self._back is not None:  # the coordinator counts it as that version's failure
            back, self._back = self._back, None
            threading.Thread(
                target=self.say, args=(back, "back"), name="selfupdate-back", daemon=True
            ).start()
        if not isinstance(offer, dict) or self._busy or self.target is not None:
            return
        key = (
            str(offer.get("version")),
            offer.get("sha") if isinstance(offer.get("sha"), str) else None,
        )
        if self.clock() - self._refused.get(key, -1e18) < RETRY_REFUSED_S:
            return
        if self.clock() - self._no_version.get(key[0], -1e18) < RETRY_REFUSED_S:
            return
        self._busy = True
        threading.Thread(
            target=self._prepare, args=(dict(offer), key), name="selfupdate", daemon=True
        ).start()

    def _prepare(self, offer: dict[str, Any], key: tuple[str, str | None]) -> None:
        try:
            target = prepare(
                offer, public_key=self.public_key(), data_dir=self.data_dir, fetch=self._fetch
            )
        except (UpdateRefused, OSError, zipfile.BadZipFile) as e:
            log.warning("agent update to %s refused: %s", key[0], e)
            self._refused[key] = self.clock()
            self._busy = False
            if isinstance(e, DoesNotStart):  # the version's failure, not the offer's
                self.say(key[0], "failed")
            return
        except Exception as e:  # a bug here must not take the agent down
            log.exception("agent update to %s failed: %s", key[0], e)
            self._refused[key] = self.clock()
            self._busy = False
            return
        log.warning(
            "agent %s ready (roll-out %s): finishing running tasks, then re-executing",
            target.version,
            offer.get("rollout"),
        )
        if target.path is not None:  # confirmed by its first answered sync (`offered`)
            self._trying.write_text(target.version + "\n")
            self.say(target.version, "accepted")  # silent past a bound from now: a failure
        self.target = target
        self._busy = False
        self.ready(target)

    def say(self, version: str, event: str) -> None:
        """Tell the coordinator that this device `accepted` `version` (it re-executes into it
        once its tasks are done), came `back` without it, or found that it `failed` to start
        here (the preflight); best effort: the signed offer
        stands either way, and the coordinator counts what it hears (docs/rollouts.md)."""
        body = {"version": version, "event": event}
        try:
            with self.request("POST", "/v1/nodes/me/agent/switch", json=body) as r:
                r.read()
                if r.status_code != 204:
                    log.info(
                        "agent %s %s: the coordinator answered %d (%s)",
                        version,
                        event,
                        r.status_code,
                        r.text[:200],
                    )
        except Exception as e:  # the network, or a coordinator without the route
            log.warning("agent %s %s: could not tell the coordinator (%s)", version, event, e)

    def _fetch(self, version: str, dest: Path, max_bytes: int) -> None:
        with self.request("GET", f"/v1/nodes/me/agent/{version}") as r:
            if r.status_code != 200:
                r.read()
                raise UpdateRefused(f"the coordinator answered {r.status_code} for the wheel")
            got = 0
            with open(dest, "wb") as f:
                for chunk in r.iter_bytes(1 << 20):
                    got += len(chunk)
                    if got > max_bytes:
                        raise UpdateRefused(
                            f"the wheel is longer than the {max_bytes} bytes signed"
                        )
                    f.write(chunk)
