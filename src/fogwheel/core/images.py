"""Program images: the manifest's one canonical form, architecture names, and the rules that
keep a hostile tarball inside its root.

An image is a root filesystem for command tasks (docs/images.md): an ordered list of layers,
each a tar blob named by its SHA-256, applied one over the other as OCI layers are (OCI image
spec, layer.md: whiteouts `.wh.NAME` delete NAME from the layers below, `.wh..wh..opq` makes a
directory opaque). The image id is the SHA-256 of the manifest's canonical JSON, so a node that
was handed an id (in a signed lease) checks the manifest, and through it every layer, by hash.

Every byte of a layer is an attacker's: the unpacker asks `Unpacking.admit` about each member
before it touches the disk, and `admit` refuses absolute names, `..`, device nodes, writing
through a link, hard links to anything but a file already in the image, and more members or
bytes than the bounds allow. Pure: no file, no clock.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Literal

FORMAT = "fogwheel-image/1"
MAX_MANIFEST_BYTES = 64 * 1024
MAX_LAYERS = 128
MAX_IMAGE_BYTES = 16 << 30  # unpacked bytes of one image, whatever its manifest says
MAX_MEMBERS = 500_000  # tar members of one image, all layers together
MAX_PATH = 4096
MAX_NAME = 255
RESERVED = ".fogwheel"  # the sandbox mounts its own things under /.fogwheel: no image may

_SHA = re.compile(r"^[0-9a-f]{64}$")

# Spellings seen in the wild (uname -m, Debian, Docker/OCI, Go) -> the one fogwheel uses.
_ARCH = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "x64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "arm64v8": "aarch64",
    "armv7l": "armv7l",
    "armv7": "armv7l",
    "armhf": "armv7l",
    "arm": "armv7l",
    "armv6l": "armv6l",
    "armel": "armv6l",
    "i386": "i686",
    "i686": "i686",
    "386": "i686",
    "riscv64": "riscv64",
    "ppc64le": "ppc64le",
    "ppc64el": "ppc64le",
    "s390x": "s390x",
}
ARCHITECTURES = frozenset(_ARCH.values())

# ELF e_machine -> architecture (System V ABI; the values in <elf.h>).
_ELF_MACHINE = {62: "x86_64", 183: "aarch64", 40: "armv7l", 3: "i686", 243: "riscv64"}


class ImageError(ValueError):
    """A manifest or a layer that fogwheel will not use; the message says why."""


class UnsafeMember(ImageError):
    """A tar member that would reach outside the image or past its bounds."""


def normalise_arch(name: str) -> str:
    """The architecture tag fogwheel uses for `name` (`amd64` -> `x86_64`, `arm64` -> `aarch64`).

    Docker and Debian say amd64 where the kernel says x86_64; an image is placed on a node only
    when the two agree, so both spellings must mean one tag."""
    tag = _ARCH.get(name.strip().lower())
    if tag is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ImageError(f"unknown architecture {name[:40]!r}: use one of {known}")
    return tag


ARCH_PREFIX = "arch:"


def arch_need(arch: str) -> str:
    """The capability a node advertises for its architecture, and an image's task needs."""
    return ARCH_PREFIX + normalise_arch(arch)


def elf_arch(head: bytes) -> str | None:
    """The architecture of an ELF executable from its first 20 bytes, or None if not ELF."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
    return _ELF_MACHINE.get(int.from_bytes(head[18:20], order))


# -- the manifest -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layer:
    sha: str  # SHA-256 of the layer blob as stored (compressed or not)
    size: int  # its bytes


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an image is: its layers in order (lowest first) and its architecture."""

    layers: tuple[Layer, ...]
    arch: str
    unpacked: int  # bytes its files take once unpacked (what the node's quota counts)

    @property
    def size(self) -> int:
        """Bytes of its layer blobs (what a node downloads)."""
        return sum(x.size for x in self.layers)

    def canonical(self) -> bytes:
        """The one byte form of this manifest: compact JSON, sorted keys, ASCII."""
        doc = {
            "format": FORMAT,
            "arch": self.arch,
            "layers": [{"sha": x.sha, "size": x.size} for x in self.layers],
            "unpacked": self.unpacked,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def image_id(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


def make_manifest(layers: list[tuple[str, int]], arch: str, unpacked: int) -> Manifest:
    """A checked manifest from its parts (the client's side of `parse_manifest`)."""
    m = Manifest(tuple(Layer(s, n) for s, n in layers), normalise_arch(arch), unpacked)
    _check(m)
    return m


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest in `raw`, which must be its canonical form; ImageError says what is wrong.

    Only the canonical form is accepted, so one image has exactly one id."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ImageError(f"an image manifest is at most {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ImageError("the image manifest is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ImageError(f"not a fogwheel image manifest (format is not {FORMAT!r})")
    if set(doc) != {"format", "arch", "layers", "unpacked"}:
        raise ImageError("the image manifest has fields other than format, arch, layers, unpacked")
    layers = doc["layers"]
    if not isinstance(layers, list):
        raise ImageError("the image manifest's layers are not a list")
    parsed = []
    for x in layers:
        if not isinstance(x, dict) or set(x) != {"sha", "size"}:
            raise ImageError("each layer is {sha, size}")
        sha, size = x["sha"], x["size"]
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise ImageError("a layer's sha is not 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageError("a layer's size is not a whole number of bytes")
        parsed.append(Layer(sha, size))
    arch, unpacked = doc["arch"], doc["unpacked"]
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ImageError(f"the image's architecture {str(arch)[:40]!r} is not a fogwheel tag")
    if not isinstance(unpacked, int) or isinstance(unpacked, bool) or unpacked < 0:
        raise ImageError("the image's unpacked size is not a whole number of bytes")
    m = Manifest(tuple(parsed), arch, unpacked)
    _check(m)
    if m.canonical() != raw:
        raise ImageError("the image manifest is not in its canonical form (sorted, compact)")
    return m


def _check(m: Manifest) -> None:
    if not 1 <= len(m.layers) <= MAX_LAYERS:
        raise ImageError(f"an image has 1 to {MAX_LAYERS} layers, not {len(m.layers)}")
    if len({x.sha for x in m.layers}) != len(m.layers):
        raise ImageError("an image lists one layer twice")
    if m.unpacked > MAX_IMAGE_BYTES:
        raise ImageError(f"an image unpacks to at most {MAX_IMAGE_BYTES >> 30} GiB")


# -- tar members ----------------------------------------------------------------------------

Kind = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo", "other"]


@dataclass(frozen=True, slots=True)
class Member:
    """A tar member as the unpacker read its header."""

    name: str
    kind: Kind
    size: int = 0
    link: str = ""  # a symlink's target, or the member a hard link names
    mode: int = 0o644


@dataclass(frozen=True, slots=True)
class Write:
    """Create `path` (relative to the root, normalised) as the member says."""

    path: str
    member: Member
    mode: int  # the mode to give it: no setuid, setgid or sticky bit; readable by all
    link: str = ""  # a hard link: the normalised path of the file it shares


@dataclass(frozen=True, slots=True)
class Remove:
    """A whiteout: delete `path` (and what is under it) from the layers below."""

    path: str


@dataclass(frozen=True, slots=True)
class Empty:
    """An opaque whiteout: delete what the layers below put in directory `path`."""

    path: str


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do (the root itself, say)."""

    reason: str


Action = Write | Remove | Empty | Skip
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def member_path(name: str) -> str:
    """`name` as a path relative to the root, or UnsafeMember: no absolute names, no `..`.

    A leading `./` is the usual spelling (`tar -C root .`) and is dropped; "" is the root."""
    if "\x00" in name:
        raise UnsafeMember("a member name holds a NUL byte")
    if len(name) > MAX_PATH:
        raise UnsafeMember(f"member name longer than {MAX_PATH} characters")
    if name.startswith("/"):
        raise UnsafeMember(f"absolute member name {name[:200]!r}: a layer's names are relative")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeMember(f"member name {name[:200]!r} climbs out of the image with '..'")
    if any(len(p.encode()) > MAX_NAME for p in parts):
        raise UnsafeMember(f"a part of member name {name[:200]!r} is over {MAX_NAME} bytes")
    return "/".join(parts)


def link_stays_inside(path: str, target: str) -> bool:
    """Whether a symlink at `path` pointing to `target` resolves, lexically, inside the root.

    In the sandbox the image is `/`, so an absolute target names a place in the image, and
    "/.." is "/": what escapes is a relative target that climbs above the root."""
    if target.startswith("/"):
        return True
    depth = len(posixpath.dirname(path).split("/")) if posixpath.dirname(path) else 0
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


@dataclass
class Unpacking:
    """What has been unpacked so far, so each next member can be judged against it.

    `links` are the symlinks in the image: no later member may be written beneath one (the
    classic escape: `etc -> /etc`, then `etc/cron.d/x`, which a naive unpacker writes into
    the host's /etc). `files` are the regular files, the only things a hard link may name.
    Each entry carries the count of the member that made it, and a whiteout records the count
    at which it cut a path (`cut`) or emptied a directory (`emptied_at`): an entry is alive
    when no ancestor was cut after it was made, so a whiteout costs O(1) and a lookup
    O(depth), whatever the size of the image."""

    max_bytes: int = MAX_IMAGE_BYTES
    max_members: int = MAX_MEMBERS
    members: int = 0
    bytes: int = 0
    links: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)
    emptied_at: dict[str, int] = field(default_factory=dict)

    def admit(self, m: Member) -> Action:
        """The action for member `m` of the layer being applied; UnsafeMember to refuse it."""
        self.members += 1
        if self.members > self.max_members:
            raise UnsafeMember(f"an image has at most {self.max_members} members")
        path = member_path(m.name)
        if path == "":
            return Skip("the root itself")
        head, base = posixpath.split(path)
        if path.split("/")[0] == RESERVED:
            raise UnsafeMember(f"/{RESERVED} is the sandbox's own: no image may hold it")
        self._beneath_no_link(head, m.name)
        if base == OPAQUE:
            self.emptied_at[head] = self.members
            return Empty(head)
        if base.startswith(WHITEOUT):
            gone = base[len(WHITEOUT) :]
            target = posixpath.join(head, gone) if head else gone
            if not gone or gone in (".", "..") or member_path(target) != target:
                raise UnsafeMember(f"bad whiteout {m.name[:200]!r}")
            self.cut[target] = self.members
            return Remove(target)
        if m.kind in ("char", "block"):
            raise UnsafeMember(f"device node {m.name[:200]!r}: an image holds no devices")
        if m.kind in ("fifo", "other"):
            raise UnsafeMember(f"{m.name[:200]!r} is a {m.kind}: only files, dirs and links")
        if m.size < 0:
            raise UnsafeMember(f"{m.name[:200]!r} has a negative size")
        self.bytes += m.size if m.kind == "file" else 0
        if self.bytes > self.max_bytes:
            raise UnsafeMember(f"the image unpacks to more than {self.max_bytes} bytes")
        mode = (m.mode & 0o777) | (0o555 if m.kind == "dir" else 0o444)
        self.links.pop(path, None)  # whatever it is now, it replaces what was there
        self.files.pop(path, None)
        if m.kind != "dir":
            self.cut[path] = self.members  # ... and what was beneath it is gone
        if m.kind == "symlink":
            if not m.link or len(m.link) > MAX_PATH or "\x00" in m.link:
                raise UnsafeMember(f"symlink {m.name[:200]!r} has an empty or bad target")
            if not link_stays_inside(path, m.link):
                raise UnsafeMember(
                    f"symlink {m.name[:200]!r} -> {m.link[:200]!r} points outside the image"
                )
            self.links[path] = self.members
            return Write(path, m, 0o777)
        if m.kind == "hardlink":
            target = member_path(m.link)
            if not self._alive(self.files, target):
                raise UnsafeMember(
                    f"hard link {m.name[:200]!r} -> {m.link[:200]!r} names no file of the image"
                )
            self.files[path] = self.members
            return Write(path, m, mode, link=target)
        if m.kind == "file":
            self.files[path] = self.members
        return Write(path, m, mode)

    def _alive(self, made: dict[str, int], path: str) -> bool:
        """Whether `path` is in `made` and no whiteout since removed it or emptied a parent."""
        at = made.get(path)
        if at is None or self.cut.get(path, -1) > at:
            return False
        parts = path.split("/")
        for i in range(len(parts) - 1, -1, -1):
            parent = "/".join(parts[:i])
            if self.emptied_at.get(parent, -1) > at or (i and self.cut.get(parent, -1) > at):
                return False
        return True

    def _beneath_no_link(self, head: str, name: str) -> None:
        """Refuse a member whose parent directory is (or lies beneath) a symlink."""
        parts = head.split("/") if head else []
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix in self.links and self._alive(self.links, prefix):
                raise UnsafeMember(
                    f"member {name[:200]!r} would be written through the symlink "
                    f"{prefix!r}: links may not lead a write out of the image"
                )
