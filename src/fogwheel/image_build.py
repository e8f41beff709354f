"""Turn a root filesystem on this machine into an image's layers and manifest, to push.

Three sources (docs/images.md): a directory (packed here as one reproducible tar.gz layer:
sorted names, owner 0, mtime 0), a tarball (`docker export`, a debootstrap root tarred; plain,
gzip, bzip2 or xz), used as one layer as it is, or an OCI image layout (`index.json` ->
manifest -> config and layers, `skopeo copy docker://… oci:DIR`), whose layers are pushed as
they are and applied in order on the node with their whiteouts. The architecture is the
`--arch` given, else the OCI config's, else that of the first ELF program in the root, else
this machine's. The sizes and member rules are checked here as on the node (core/images.py),
so a root the node would refuse is refused before anything is uploaded.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import platform
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fogwheel.core import images as core

# Programs whose ELF header says the root's architecture, looked for in this order.
PROBES = ("bin/busybox", "bin/sh", "usr/bin/env", "bin/ls", "usr/bin/ls", "sbin/init")
OCI_TAR = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar+bzip2",
}
OCI_INDEX = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


@dataclass
class Built:
    """An image ready to push: its layer files (lowest first) and its manifest."""

    layers: list[Path]
    manifest: core.Manifest
    notes: list[str] = field(default_factory=list)  # what was guessed, for the user
    temporary: list[Path] = field(default_factory=list)  # files to delete after the push

    def cleanup(self) -> None:
        for p in self.temporary:
            p.unlink(missing_ok=True)


def build(source: str | os.PathLike[str], arch: str | None = None) -> Built:
    """The layers and manifest of the image at `source` (a directory, tarball or OCI layout).

    Raises core.ImageError (a ValueError) with a sentence saying what is wrong."""
    path = Path(source)
    if path.is_dir() and (path / "index.json").is_file() and (path / "oci-layout").is_file():
        return _from_oci(path, arch)
    if path.is_dir():
        return _from_dir(path, arch)
    if path.is_file():
        return _from_tar(path, arch)
    raise core.ImageError(f"{path}: no such directory or file")


def _layer_facts(layer: Path, state: core.Unpacking, want_arch: bool) -> str | None:
    """Run `layer` through the node's rules (raises UnsafeMember) and find an ELF's arch."""
    found = None
    try:
        with tarfile.open(layer, mode="r|*") as tf:
            for i, ti in enumerate(tf):
                if i % 1000 == 999:
                    vars(tf)["members"].clear()
                kind = _kind(ti)
                action = state.admit(core.Member(ti.name, kind, ti.size, ti.linkname, ti.mode))
                probe = isinstance(action, core.Write) and action.path in PROBES
                if want_arch and found is None and probe and kind == "file":
                    f = tf.extractfile(ti)
                    found = core.elf_arch(f.read(20)) if f else None
    except tarfile.TarError as e:
        raise core.ImageError(f"{layer.name} is not a readable tar archive: {e}") from None
    return found


def _kind(ti: tarfile.TarInfo) -> core.Kind:
    for test, kind in (
        (ti.isreg, "file"),
        (ti.isdir, "dir"),
        (ti.issym, "symlink"),
        (ti.islnk, "hardlink"),
        (ti.ischr, "char"),
        (ti.isblk, "block"),
        (ti.isfifo, "fifo"),
    ):
        if test():
            return kind  # type: ignore[return-value]
    return "other"


def _finish(layers: list[Path], arch: str | None, found: str | None, notes: list[str]) -> str:
    if arch:
        return core.normalise_arch(arch)
    if found:
        notes.append(f"architecture {found}, from the root's programs (--arch to say otherwise)")
        return found
    host = core.normalise_arch(platform.machine())
    notes.append(f"architecture {host}: this machine's (no ELF program found; --arch to set)")
    return host


def _manifest(layers: list[Path], arch: str, unpacked: int) -> core.Manifest:
    shas = [(_sha256(p), p.stat().st_size) for p in layers]
    return core.make_manifest(shas, arch, unpacked)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _from_tar(path: Path, arch: str | None) -> Built:
    state = core.Unpacking()
    found = _layer_facts(path, state, want_arch=arch is None)
    notes: list[str] = []
    tag = _finish([path], arch, found, notes)
    return Built([path], _manifest([path], tag, state.bytes), notes)


def _from_dir(root: Path, arch: str | None) -> Built:
    fd, name = tempfile.mkstemp(prefix="fogwheel-image-", suffix=".tar.gz")
    os.close(fd)
    layer = Path(name)
    try:
        skipped = pack_dir(root, layer)
        built = _from_tar(layer, arch)
    except BaseException:
        layer.unlink(missing_ok=True)
        raise
    built.temporary.append(layer)
    if skipped:
        built.notes.append(
            f"left out {len(skipped)} device nodes, sockets or fifos (e.g. {skipped[0]})"
        )
    return built


def pack_dir(root: Path, out: Path) -> list[str]:
    """Write `root` as a reproducible tar.gz: names sorted, owner 0, mtime 0, links as links.

    Returns what was left out (devices, sockets, fifos: an image holds none)."""
    skipped: list[str] = []
    with (
        open(out, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf,
    ):
        for rel in _walk(root):
            full = root / rel
            st = os.lstat(full)
            ti = tarfile.TarInfo(rel)
            ti.mode, ti.mtime, ti.uid, ti.gid = stat.S_IMODE(st.st_mode), 0, 0, 0
            if stat.S_ISLNK(st.st_mode):
                ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(full)
                tf.addfile(ti)
            elif stat.S_ISDIR(st.st_mode):
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif stat.S_ISREG(st.st_mode):
                ti.size = st.st_size
                with open(full, "rb") as f:
                    tf.addfile(ti, f)
            else:
                skipped.append(rel)
    return skipped


def _walk(root: Path) -> Iterator[str]:
    """Every path under `root`, relative, parents before children, sorted; links not followed."""
    stack = [""]
    while stack:
        rel = stack.pop()
        here = root / rel if rel else root
        with os.scandir(here) as it:
            names = sorted(e.name for e in it)
        subdirs = []
        for n in names:
            child = f"{rel}/{n}" if rel else n
            yield child
            if os.path.isdir(root / child) and not os.path.islink(root / child):
                subdirs.append(child)
        stack.extend(reversed(subdirs))


def _oci_blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise core.ImageError(f"OCI digest {digest[:80]!r} is not sha256:<64 hex digits>")
    p = layout / "blobs" / "sha256" / hexd
    if not p.is_file():
        raise core.ImageError(f"OCI layout lacks blob {digest}")
    return p


def _oci_json(layout: Path, digest: str) -> dict[str, object]:
    p = _oci_blob(layout, digest)
    if p.stat().st_size > 4 << 20:
        raise core.ImageError(f"OCI document {digest} is over 4 MiB")
    doc = json.loads(p.read_bytes())
    if not isinstance(doc, dict):
        raise core.ImageError(f"OCI document {digest} is not a JSON object")
    return doc


def _pick(manifests: object, arch: str | None) -> dict[str, object]:
    """The manifest descriptor of an index for `arch` (or the only/first one)."""
    if not isinstance(manifests, list) or not manifests:
        raise core.ImageError("the OCI index lists no manifests")
    if arch is None:
        return manifests[0]  # type: ignore[no-any-return]
    want = core.normalise_arch(arch)
    for d in manifests:
        plat = d.get("platform") if isinstance(d, dict) else None
        if isinstance(plat, dict) and isinstance(plat.get("architecture"), str):
            with contextlib.suppress(core.ImageError):
                if core.normalise_arch(plat["architecture"]) == want:
                    return d  # type: ignore[no-any-return]
    return manifests[0]  # type: ignore[no-any-return]


def _from_oci(layout: Path, arch: str | None) -> Built:
    index = json.loads((layout / "index.json").read_bytes())
    desc = _pick(index.get("manifests"), arch)
    doc = _oci_json(layout, str(desc.get("digest", "")))
    for _ in range(2):  # an index inside the index (docker buildx writes one)
        if doc.get("mediaType") in OCI_INDEX or "manifests" in doc:
            desc = _pick(doc.get("manifests"), arch)
            doc = _oci_json(layout, str(desc.get("digest", "")))
    config = doc.get("config")
    layers_desc = doc.get("layers")
    if not isinstance(config, dict) or not isinstance(layers_desc, list) or not layers_desc:
        raise core.ImageError("the OCI manifest has no config or no layers")
    conf = _oci_json(layout, str(config.get("digest", "")))
    notes: list[str] = []
    found = conf.get("architecture") if isinstance(conf.get("architecture"), str) else None
    layers = []
    for d in layers_desc:
        if not isinstance(d, dict) or d.get("mediaType") not in OCI_TAR:
            kind = d.get("mediaType") if isinstance(d, dict) else d
            raise core.ImageError(
                f"OCI layer type {kind!r} is not supported (tar, tar+gzip or tar+bzip2; "
                "recompress zstd layers with `skopeo copy --dest-compress-format gzip`)"
            )
        layers.append(_oci_blob(layout, str(d.get("digest", ""))))
    state = core.Unpacking()
    for p in layers:
        _layer_facts(p, state, want_arch=False)
    tag = _finish(layers, arch, core.normalise_arch(str(found)) if found else None, notes)
    if arch and found and core.normalise_arch(str(found)) != core.normalise_arch(arch):
        notes.append(f"--arch {arch} given, the OCI config says {found}: tagged {tag}")
    return Built(layers, _manifest(layers, tag, state.bytes), notes)
