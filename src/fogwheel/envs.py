"""Python environments that travel to the devices: `Env(pip=[...])` resolved here, installed there.

The customer's machine reaches the package index; devices never do. `build` resolves an Env's
requirements with pip into wheels for the devices' platforms (`pip wheel` for this machine's
own platform, which also builds a local project or an sdist; `pip download --only-binary` for
other platforms or Pythons), hashes every wheel and writes the lock (core/envlock.py) whose
SHA-256 names the environment. `publish` uploads the wheels and the lock as content-addressed
blobs (each sent once: an upload the coordinator holds already sends nothing) and returns that
name, which a job carries (`JobIn.env`) and the coordinator signs into each lease. A device
builds the environment once from those blobs and keeps it (node/envs.py, docs/envs.md).

Resolved environments are cached under `~/.cache/fogwheel/envs` (FOGWHEEL_ENV_CACHE), keyed
by what was asked (requirements, Python, platforms, index, and the bytes of local files), so
the same Env is resolved and downloaded once: the next run builds nothing and, when the
coordinator has the blobs, uploads nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fogwheel.core import envlock
from fogwheel.errors import FogwheelError

if TYPE_CHECKING:
    from fogwheel.client import Client

PIP_TIMEOUT_S = 1800.0
# say(line): what the build is doing now, for a progress display
Say = Callable[[str], None]


class EnvBuildError(FogwheelError):
    """An Env that could not be resolved into wheels: pip's own words, and what to try."""


@dataclass(frozen=True)
class Env:
    """A Python environment for a job's tasks: what to pip install, for which Python.

    `pip`: requirement strings as pip takes them ("numpy==2.1.*", "./mypkg", a wheel file);
    `requirements`: a requirements file, as `pip install -r`; `python`: the devices' Python
    ("3.11"; default: this one's); `platforms`: wheel platform tags to build for (default:
    this machine's own, e.g. every `manylinux_2_X_x86_64` its glibc takes), e.g.
    ["manylinux2014_aarch64"] for a fog of Raspberry Pis; `index_url`: another package
    index. Only wheels travel: a package with no wheel for a platform other than this
    machine's cannot be resolved for it (pip says which)."""

    pip: Sequence[str] = ()
    requirements: str | os.PathLike[str] | None = None
    python: str | None = None
    platforms: Sequence[str] = ()
    index_url: str | None = None
    extra_pip_args: Sequence[str] = field(default=())

    def __post_init__(self) -> None:  # hashable: a client resolves each Env once
        for name in ("pip", "platforms", "extra_pip_args"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"Env({name}=...) takes a list of strings, not one string")
            object.__setattr__(self, name, tuple(str(v) for v in value))

    def target_python(self) -> str:
        return self.python or f"{sys.version_info.major}.{sys.version_info.minor}"

    def native(self) -> bool:
        """Built for this very interpreter and platform (pip may build sdists then)."""
        return not self.platforms and self.target_python() == Env().target_python()


@dataclass(frozen=True)
class Built:
    """A resolved environment: its lock, and where each of its wheels is on this machine."""

    lock: envlock.Lock
    files: dict[str, Path]  # wheel sha256 -> file
    cached: bool  # nothing had to be resolved or downloaded

    @property
    def sha(self) -> str:
        return self.lock.sha


def cache_root() -> Path:
    base = os.environ.get("FOGWHEEL_ENV_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "fogwheel" / "envs"


def spec_key(env: Env) -> str:
    """What identifies a resolution: the request, with local files by their bytes."""
    reqs = list(env.pip)
    locals_: list[str] = []
    for req in reqs:
        path = Path(req)
        if req.startswith((".", "/")) or path.exists():
            locals_.append(f"{req}={_tree_digest(path)}")
    req_file = ""
    if env.requirements is not None:
        try:
            req_file = Path(env.requirements).read_text()
        except OSError as e:
            raise EnvBuildError(f"cannot read requirements file {env.requirements}: {e}") from None
    body = {
        "pip": reqs,
        "local": locals_,
        "requirements": req_file,
        "python": env.target_python(),
        "platforms": list(env.platforms),
        "index_url": env.index_url,
        "extra": list(env.extra_pip_args),
        "format": envlock.LOCK_FORMAT,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def build(env: Env, say: Say | None = None, cache: Path | None = None) -> Built:
    """Resolve `env` into wheels and its lock, or take both from the cache."""
    say = say or (lambda _line: None)
    if not env.pip and env.requirements is None:
        raise EnvBuildError("an Env needs pip=[...] or requirements=FILE")
    home = (cache or cache_root()) / spec_key(env)
    lock_path = home / "lock.json"
    if lock_path.exists():
        try:
            lock = envlock.parse(lock_path.read_bytes())
            files = {w.sha256: home / "wheels" / w.file for w in lock.wheels}
            if all(p.exists() and p.stat().st_size == w.size for w, p in _pairs(lock, files)):
                say(f"environment {lock.short()} from the cache ({len(lock.wheels)} wheels)")
                return Built(lock, files, cached=True)
        except envlock.LockError:
            pass  # a damaged cache entry: resolved again below
    home.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=home.parent))
    try:
        wheels_dir = tmp / "wheels"
        wheels_dir.mkdir()
        _resolve(env, wheels_dir, say)
        entries = []
        for path in sorted(wheels_dir.glob("*.whl")):
            say(f"hashing {path.name}")
            sha = _file_sha(path)
            entries.append(envlock.wheel_of(path.name, sha, path.stat().st_size))
        if not entries:
            raise EnvBuildError("pip resolved no wheels for this Env")
        try:
            lock = envlock.make_lock(env.target_python(), entries, _asked(env))
        except envlock.LockError as e:
            raise EnvBuildError(f"the resolved environment cannot be locked: {e}") from None
        (tmp / "lock.json").write_bytes(lock.canonical())
        shutil.rmtree(home, ignore_errors=True)
        tmp.rename(home)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = {w.sha256: home / "wheels" / w.file for w in lock.wheels}
    say(f"environment {lock.short()}: {len(lock.wheels)} wheels, {lock.size / 1e6:.1f} MB")
    return Built(lock, files, cached=False)


def publish(client: Client, built: Built, say: Say | None = None) -> str:
    """Upload the wheels and the lock as blobs (each only if the coordinator lacks it); the
    lock's SHA-256, which names the environment in a job."""
    say = say or (lambda _line: None)
    for w, path in _pairs(built.lock, built.files):
        sent = client.upload(path)
        if sent.sha != w.sha256:
            raise EnvBuildError(f"{path} changed since it was locked: build the Env again")
        if sent.sent:
            say(f"uploaded {w.file} ({sent.sent / 1e6:.1f} MB)")
    lock = client.put_blob(built.lock.canonical(), upload=True)
    if lock.sha != built.sha:  # pragma: no cover - the same bytes hash the same
        raise EnvBuildError("the lock's upload does not match its name")
    return built.sha


def _pairs(lock: envlock.Lock, files: dict[str, Path]) -> list[tuple[envlock.Wheel, Path]]:
    return [(w, files[w.sha256]) for w in lock.wheels]


def _asked(env: Env) -> list[str]:
    # a local file or project by its name: the lock never shows this machine's paths
    asked = [Path(r).name if r.startswith((".", "/")) else r for r in map(str, env.pip)]
    if env.requirements is not None:
        asked.append(f"-r {Path(env.requirements).name}")
    return [a[:500] for a in asked][: envlock.MAX_REQUIREMENTS]


def _resolve(env: Env, dest: Path, say: Say) -> None:
    """Run pip to put every wheel of `env` (its dependencies included) in `dest`."""
    reqs = [str(r) for r in env.pip]
    if env.requirements is not None:
        reqs += ["-r", str(env.requirements)]
    common = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
    if env.index_url:
        common += ["--index-url", env.index_url]
    common += list(env.extra_pip_args)
    if env.native():
        say("resolving with pip wheel (this machine's platform)")
        _pip(["wheel", "--wheel-dir", str(dest), *common, *reqs], say)
        return
    py = env.target_python()
    abi = f"cp{py.replace('.', '')}"
    platforms = list(env.platforms) or envlock.platform_tags(_this_platform(py))
    local = [r for r in reqs if r.startswith((".", "/")) and Path(r).is_dir()]
    if local:  # a local project: built into a wheel here first (pure Python travels)
        say(f"building {', '.join(local)}")
        _pip(["wheel", "--no-deps", "--wheel-dir", str(dest), *common, *local], say)
        reqs = [r for r in reqs if r not in local] + [str(p) for p in dest.glob("*.whl")]
    # One pip run per machine: given tags of several, pip takes for each package one wheel
    # that any of them installs, and a fleet of x86_64 and aarch64 devices needs both.
    for group in by_machine(platforms):
        plat_args = [a for p in group for a in ("--platform", p)]
        say(f"resolving with pip download for Python {py} on {', '.join(group[:3])}…")
        _pip(
            ["download", "--dest", str(dest), "--only-binary=:all:", "--python-version", py,
             "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
             *plat_args, *common, *reqs],
            say,
        )  # fmt: skip


MACHINES = ("x86_64", "aarch64", "armv7l", "i686", "ppc64le", "s390x", "riscv64")


def by_machine(tags: Sequence[str]) -> list[list[str]]:
    """Wheel platform tags grouped by the machine they end in, in the order first seen
    (`manylinux_2_17_x86_64` and `linux_x86_64` together, `manylinux2014_aarch64` apart)."""
    groups: dict[str, list[str]] = {}
    for tag in tags:
        machine = next((m for m in MACHINES if tag.endswith("_" + m)), tag)
        groups.setdefault(machine, []).append(tag)
    return list(groups.values())


def this_machine_tags(python: str) -> list[str]:
    """The wheel platform tags this machine's own Python installs (for `python`)."""
    return envlock.platform_tags(_this_platform(python))


def _this_platform(python: str) -> envlock.Platform:
    from fogwheel.node.envs import this_platform

    p = this_platform()
    return envlock.Platform(python, p.arch, p.libc, p.libc_version)


def _pip(args: list[str], say: Say) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
    except OSError as e:
        raise EnvBuildError(f"cannot run pip ({e}): install pip for {sys.executable}") from None
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            tail = [*tail[-30:], line]
            if line.startswith(("Collecting", "Saved", "Downloading", "Building", "Processing")):
                say(line[:120])
    code = proc.wait(timeout=PIP_TIMEOUT_S)
    if code != 0:
        detail = "\n".join(tail[-12:])
        raise EnvBuildError(
            f"pip could not resolve the environment (exit status {code}):\n{detail}\n"
            "check the requirement names and versions; for another platform, each package "
            "needs a wheel for it on the index"
        )


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tree_digest(path: Path) -> str:
    """The bytes of a local requirement (a file, or a project directory's files)."""
    h = hashlib.sha256()
    if path.is_file():
        return _file_sha(path)
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in p.parts[-3:]):
                h.update(str(p.relative_to(path)).encode() + b"\0" + _file_sha(p).encode())
        return h.hexdigest()
    return "missing"
