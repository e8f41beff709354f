"""A Python environment's lock: what it holds, its one canonical form, and where it can run.

A lock names every wheel of an environment (file name, version, SHA-256, size) and the Python
it was resolved for. Its canonical bytes (compact JSON, sorted keys, ASCII) are hashed, and
that SHA-256 is the environment's name: a task that names it names exactly these wheels, and
the coordinator's signature over the lease covers that name. Every byte of a lock comes from a
customer, so `parse` bounds it (size, wheel count, name forms) and takes only its canonical
spelling: one environment, one name.

Which devices a lock suits is decided here from the wheel tags of PEP 425 / PEP 600 (the
platform compatibility tags that pip matches): a device describes itself as a `Platform`
(interpreter, architecture, C library and its version), the tags it accepts follow from that
(`accepted_tags`, in pip's preference order), and `choose` picks, for each package of the
lock, the most preferred wheel it accepts, or says in a sentence why none fits. Pure: no I/O,
no clock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

LOCK_FORMAT = 1
MAX_LOCK_BYTES = 1 << 20  # a lock larger than this is refused unread
MAX_WHEELS = 500  # wheels of one lock (all platforms together)
MAX_WHEEL_BYTES = 1 << 31  # one wheel (2 GiB: a protocol Value's largest size)
MAX_REQUIREMENTS = 200
MAX_PLATFORM_CHARS = 200

_FILE = re.compile(r"^[A-Za-z0-9_.+!-]{1,200}\.whl$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_PYTHON = re.compile(r"^3\.[0-9]{1,2}$")
_PLATFORM = re.compile(
    r"^cp(?P<py>3[0-9]{1,2})-(?P<arch>[a-z0-9_]{1,32})-(?P<libc>glibc|musl)_(?P<maj>[0-9]{1,2})_(?P<min>[0-9]{1,3})$"
)
_MANYLINUX_ALIASES = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}


class LockError(ValueError):
    """A lock that cannot be used: what is wrong with it, in a sentence."""


@dataclass(frozen=True, slots=True)
class Wheel:
    name: str  # canonical project name (PEP 503)
    version: str
    file: str  # the wheel's file name, whose tags say where it installs
    sha256: str
    size: int

    @property
    def tags(self) -> frozenset[Tag]:
        return _wheel_tags(self.file)


@dataclass(frozen=True, slots=True)
class Lock:
    python: str  # "3.11": the Python it was resolved for
    wheels: tuple[Wheel, ...]  # sorted by file name
    requirements: tuple[str, ...] = ()  # what the customer asked for (shown, never installed)

    def canonical(self) -> bytes:
        body = {
            "format": LOCK_FORMAT,
            "python": self.python,
            "requirements": list(self.requirements),
            "wheels": [
                {"file": w.file, "name": w.name, "sha256": w.sha256, "size": w.size,
                 "version": w.version}
                for w in self.wheels
            ],
        }  # fmt: skip
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @property
    def sha(self) -> str:
        """The environment's name: the SHA-256 of its canonical bytes."""
        return hashlib.sha256(self.canonical()).hexdigest()

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(sorted({w.name for w in self.wheels}))

    @property
    def size(self) -> int:
        """Bytes of all its wheels (every platform's)."""
        return sum(w.size for w in self.wheels)

    def short(self) -> str:
        return self.sha[:12]


def make_lock(python: str, wheels: Iterable[Wheel], requirements: Sequence[str] = ()) -> Lock:
    """A lock of these wheels, checked as `parse` checks one (so that it parses back)."""
    lock = Lock(python, tuple(sorted(wheels, key=lambda w: w.file)), tuple(requirements))
    return parse(lock.canonical())


def wheel_of(file: str, sha256: str, size: int) -> Wheel:
    """The lock entry of a wheel file: its name and version read from the file name."""
    try:
        name, version, _, _ = parse_wheel_filename(file)
    except InvalidWheelFilename as e:
        raise LockError(f"{file[:200]!r} is not a wheel file name: {e}") from None
    return Wheel(str(name), str(version), file, sha256, size)


def parse(data: bytes) -> Lock:
    """The lock in `data`, which must be a lock's canonical bytes; LockError says why not."""
    if len(data) > MAX_LOCK_BYTES:
        raise LockError(f"an environment lock is at most {MAX_LOCK_BYTES} bytes")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise LockError("an environment lock is JSON, and this is not") from None
    if not isinstance(body, dict) or body.get("format") != LOCK_FORMAT:
        raise LockError(f"not an environment lock of format {LOCK_FORMAT}")
    if set(body) != {"format", "python", "requirements", "wheels"}:
        raise LockError("an environment lock has exactly: format, python, requirements, wheels")
    python, reqs, items = body["python"], body["requirements"], body["wheels"]
    if not isinstance(python, str) or not _PYTHON.match(python):
        raise LockError("the lock's python is a version like '3.11'")
    if not isinstance(reqs, list) or len(reqs) > MAX_REQUIREMENTS:
        raise LockError(f"the lock's requirements are a list of at most {MAX_REQUIREMENTS}")
    if not all(isinstance(r, str) and 0 < len(r) <= 500 for r in reqs):
        raise LockError("each requirement is a string of 1 to 500 characters")
    if not isinstance(items, list) or len(items) > MAX_WHEELS:
        raise LockError(f"the lock's wheels are a list of at most {MAX_WHEELS}")
    wheels = tuple(_wheel(item) for item in items)
    if len({w.file for w in wheels}) != len(wheels):
        raise LockError("the lock names one wheel file twice")
    lock = Lock(python, wheels, tuple(reqs))
    if lock.canonical() != data:
        raise LockError("the lock is not in its canonical form (sorted, compact JSON)")
    return lock


def _wheel(item: object) -> Wheel:
    if not isinstance(item, dict) or set(item) != {"file", "name", "sha256", "size", "version"}:
        raise LockError("each wheel of a lock has exactly: file, name, sha256, size, version")
    file, sha, size = item["file"], item["sha256"], item["size"]
    if not isinstance(file, str) or not _FILE.match(file):
        raise LockError(f"{str(file)[:200]!r} is not a wheel file name")
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise LockError(f"wheel {file}: sha256 is 64 lowercase hex digits")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_WHEEL_BYTES:
        raise LockError(f"wheel {file}: size is a whole number of bytes up to {MAX_WHEEL_BYTES}")
    wheel = wheel_of(file, sha, size)
    if (wheel.name, wheel.version) != (item["name"], item["version"]):
        raise LockError(f"wheel {file}: its name and version are not the file name's")
    return wheel


@functools.lru_cache(maxsize=4096)
def _wheel_tags(file: str) -> frozenset[Tag]:
    return frozenset(parse_wheel_filename(file)[3])


# -- devices ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Platform:
    """What a device's Python installs: CPython `python` ("3.11") on `arch` with `libc`."""

    python: str  # "3.11"
    arch: str  # platform.machine(): x86_64, aarch64, armv7l, ...
    libc: str  # glibc | musl
    libc_version: tuple[int, int]

    def describe(self) -> str:
        """The form a node advertises: `cp311-x86_64-glibc_2_36`."""
        maj, minor = self.libc_version
        return f"cp{self.python.replace('.', '')}-{self.arch}-{self.libc}_{maj}_{minor}"

    def human(self) -> str:
        maj, minor = self.libc_version
        return f"Python {self.python} on {self.arch} ({self.libc} {maj}.{minor})"


def platform_of(text: str) -> Platform | None:
    """The platform a node advertised (`Platform.describe`), or None for anything else."""
    m = _PLATFORM.match(text) if len(text) <= MAX_PLATFORM_CHARS else None
    if m is None:
        return None
    py = m["py"]
    return Platform(f"3.{py[1:]}", m["arch"], m["libc"], (int(m["maj"]), int(m["min"])))


def platform_tags(p: Platform) -> list[str]:
    """The platform parts of wheel tags a device accepts, most specific first (PEP 600's
    `manylinux_X_Y` for every glibc from its own down, with the legacy aliases, or PEP 656's
    `musllinux_X_Y`, then `linux_<arch>`)."""
    arch = p.arch
    if arch in ("armv7l", "armv8l"):
        arch = "armv7l"
    maj, minor = p.libc_version
    out: list[str] = []
    if p.libc == "glibc" and maj == 2:
        least = 5 if arch in ("x86_64", "i686") else 17
        for m in range(minor, least - 1, -1):
            out.append(f"manylinux_2_{m}_{arch}")
            alias = _MANYLINUX_ALIASES.get((2, m))
            if alias:
                out.append(f"{alias}_{arch}")
    elif p.libc == "musl" and maj == 1:
        out += [f"musllinux_1_{m}_{arch}" for m in range(minor, -1, -1)]
    out.append(f"linux_{arch}")
    return out


@functools.lru_cache(maxsize=256)
def accepted_tags(p: Platform) -> dict[Tag, int]:
    """Every wheel tag `p` installs, each with its rank (0: most preferred), as pip orders
    them: CPython's own ABI, abi3, none; then the pure-Python tags."""
    version = tuple(int(x) for x in p.python.split("."))
    plats = platform_tags(p)
    interp = f"cp{p.python.replace('.', '')}"
    tags = [*cpython_tags(version, platforms=plats), *compatible_tags(version, interp, plats)]
    ranks: dict[Tag, int] = {}
    for i, tag in enumerate(tags):
        ranks.setdefault(tag, i)
    return ranks


@dataclass(frozen=True, slots=True)
class Fits:
    """The wheels a device installs for a lock: one per package, its most preferred."""

    wheels: tuple[Wheel, ...]


@dataclass(frozen=True, slots=True)
class Unfit:
    """Why a lock cannot be installed on a device, in a sentence a customer can act on."""

    reason: str


def choose(lock: Lock, platform: Platform | None) -> Fits | Unfit:
    """For each package of `lock`, the wheel `platform` prefers; Unfit when one has none."""
    if platform is None:
        return Unfit(
            "the node does not say which Python it runs (an agent older than environments): "
            "update fogwheel on it"
        )
    if platform.python != lock.python:
        return Unfit(
            f"environment {lock.short()} is for Python {lock.python} and the node runs "
            f"{platform.human()}: build it with Env(python={platform.python!r})"
        )
    ranks = accepted_tags(platform)
    by_name: dict[str, list[Wheel]] = {}
    for w in lock.wheels:
        by_name.setdefault(w.name, []).append(w)
    chosen: list[Wheel] = []
    for name in sorted(by_name):
        best: tuple[int, Wheel] | None = None
        for w in by_name[name]:
            rank = min((ranks[t] for t in w.tags if t in ranks), default=None)
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, w)
        if best is None:
            files = ", ".join(sorted(w.file for w in by_name[name]))
            return Unfit(
                f"environment {lock.short()} has no wheel of {name} for {platform.human()} "
                f"(it has {files[:300]}): build it for this platform too, e.g. "
                f"Env(platforms=[{suggested_platform(platform)!r}])"
            )
        chosen.append(best[1])
    return Fits(tuple(chosen))


def suggested_platform(p: Platform) -> str:
    """The platform tag to build for so that `p` installs it: manylinux2014 on glibc (what
    most projects publish), else the device's own most specific one."""
    tags = platform_tags(p)
    alias = f"manylinux2014_{tags[-1].removeprefix('linux_')}"
    return alias if alias in tags else tags[0]


@functools.lru_cache(maxsize=4096)
def fit_reason(lock: Lock, platform_text: str) -> str | None:
    """None when `lock` installs on the node that advertised `platform_text`, else why not
    (cached: placement asks it for every candidate of every lease)."""
    got = choose(lock, platform_of(platform_text) if platform_text else None)
    return got.reason if isinstance(got, Unfit) else None


def canonical_name(name: str) -> str:
    return str(canonicalize_name(name))
