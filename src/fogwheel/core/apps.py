"""An app version's manifest: the bundle of code and environment that a version is, by its hash.

An app is a customer's name plus versions (docs/apps.md). A version is immutable: its manifest
names everything it runs by content — the function by reference (`module:attr`) and the zip of
the code it imports, or a command line; the Python environment's lock or the program image —
and the SHA-256 of the manifest's one canonical form is the version's id. Two publishes of the
same bundle are the same version; a changed byte anywhere is another. The coordinator signs the
manifest when it is published (signing.py: `sign_app_version`), and the lease of an app's task
carries the manifest and that signature, so a node checks what it runs against its id, its
signature and, through the hashes it names, every byte of code (node/apps.py).

Pure: parsing and checking only, no I/O (Ray's `runtime_env` URIs and OCI manifests name their
pieces the same way; what is new here is one canonical form, so a version has exactly one id).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

FORMAT = "fogwheel-app-v1"
MAX_MANIFEST_BYTES = 64 * 1024
MAX_CODE_BYTES = 100 * 1024 * 1024  # a zip of code and small data; big data goes as inputs
MAX_COMMAND_ARGS = 1000
MAX_ARG_CHARS = 4096
CODE_FILE = "fogwheel-app.zip"  # the name the code zip has in a task's working directory
KINDS = ("python", "command")

APP_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$")
ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEYS = {"format", "app", "kind", "entry", "code", "command", "env", "image"}


class AppError(ValueError):
    """A manifest or an app's name that is not valid: the sentence says what to change."""


@dataclass(frozen=True)
class Code:
    """The zip of the code a function app imports (on `sys.path` as a zip, read-only)."""

    sha: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """One version of an app: what it runs, every piece named by its SHA-256."""

    app: str
    kind: Literal["python", "command"]
    entry: str | None = None  # python: "module:attr" in the code zip or the environment
    code: Code | None = None  # python: the zip of the code (None: the entry is in the env)
    command: tuple[str, ...] | None = None  # command: the program and its first arguments
    env: str | None = None  # python: a Python environment's lock (core/envlock.py)
    image: str | None = None  # command: a program image (core/images.py)

    def __post_init__(self) -> None:
        check(self)

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "app": self.app,
            "kind": self.kind,
            "entry": self.entry,
            "code": None if self.code is None else {"sha": self.code.sha, "size": self.code.size},
            "command": None if self.command is None else list(self.command),
            "env": self.env,
            "image": self.image,
        }

    def canonical(self) -> bytes:
        """The one form that is hashed, signed and sent: compact JSON, sorted keys."""
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":")).encode()

    def version_id(self) -> str:
        """The version's id: the SHA-256 of `canonical()`."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def blobs(self) -> set[str]:
        """The blobs this version names directly (its env's wheels and image's layers aside)."""
        named = {self.code.sha} if self.code else set()
        return named | {s for s in (self.env, self.image) if s}


def check_name(name: str) -> str:
    """`name` when it is a valid app name; AppError otherwise."""
    if not isinstance(name, str) or not APP_NAME.match(name):
        raise AppError(
            f"app name {str(name)[:80]!r} is not valid: use 1 to 63 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit (e.g. render-v2)"
        )
    return name


def check_label(label: str) -> str:
    """`label` when it is a valid version label (`--version`); AppError otherwise."""
    if not isinstance(label, str) or not LABEL.match(label):
        raise AppError(
            f"version label {str(label)[:80]!r} is not valid: use 1 to 63 letters, digits, "
            "'.', '_', '+' or '-', starting with a letter or digit (e.g. 1.2.0)"
        )
    return label


def check(m: Manifest) -> None:
    """AppError unless `m` is a well-formed version of one kind."""
    check_name(m.app)
    if m.kind not in KINDS:
        raise AppError(f"kind {str(m.kind)[:20]!r} is not python or command")
    for what, sha in (("env", m.env), ("image", m.image)):
        if sha is not None and (not isinstance(sha, str) or not SHA256.match(sha)):
            raise AppError(f"{what}: {str(sha)[:80]!r} is not a SHA-256 (64 hex digits)")
    if m.code is not None:
        if not isinstance(m.code.sha, str) or not SHA256.match(m.code.sha):
            raise AppError("code: its sha is not a SHA-256 (64 hex digits)")
        size = m.code.size
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_CODE_BYTES:
            raise AppError(f"code: its size must be 1 to {MAX_CODE_BYTES} bytes")
    if m.kind == "python":
        if m.entry is None or not isinstance(m.entry, str) or not ENTRY.match(m.entry):
            raise AppError(
                f"entry {str(m.entry)[:80]!r} is not a function by reference: write "
                "module:attr (e.g. render.scene:draw)"
            )
        if m.command is not None or m.image is not None:
            raise AppError("a python app runs a function: it has no command or image")
        return
    if m.entry is not None or m.code is not None or m.env is not None:
        raise AppError(
            "a command app runs a program: it has no entry, code or Python environment "
            "(bring the program in an image: fogwheel images push)"
        )
    if not m.command or not isinstance(m.command, tuple):
        raise AppError("a command app needs its command line (-- prog args)")
    if len(m.command) > MAX_COMMAND_ARGS:
        raise AppError(f"command: at most {MAX_COMMAND_ARGS} arguments")
    for arg in m.command:
        if not isinstance(arg, str) or len(arg) > MAX_ARG_CHARS or "\x00" in arg:
            raise AppError(f"command: each argument is text of at most {MAX_ARG_CHARS} characters")


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest in `raw`, which must be its canonical form (one version, one id)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise AppError(f"the manifest is over {MAX_MANIFEST_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AppError("the manifest is not JSON") from None
    if not isinstance(body, dict) or set(body) != _KEYS:
        raise AppError(f"the manifest must have exactly the keys {', '.join(sorted(_KEYS))}")
    if body["format"] != FORMAT:
        raise AppError(f"manifest format {str(body['format'])[:40]!r} is not {FORMAT}")
    code = body["code"]
    if code is not None and (not isinstance(code, dict) or set(code) != {"sha", "size"}):
        raise AppError("code: must be {sha, size} or null")
    command = body["command"]
    if command is not None and not isinstance(command, list):
        raise AppError("command: must be a list of strings or null")
    m = Manifest(
        app=body["app"],
        kind=body["kind"],
        entry=body["entry"],
        code=None if code is None else Code(code["sha"], code["size"]),
        command=None if command is None else tuple(command),
        env=body["env"],
        image=body["image"],
    )
    if m.canonical() != raw:
        raise AppError("the manifest is not in its canonical form (compact JSON, sorted keys)")
    return m


def command_for(m: Manifest, extra: list[str] | None) -> list[str] | None:
    """A command app's task's command line: the version's, then the task's own arguments."""
    if m.command is None:
        return None
    return [*m.command, *(extra or [])]
