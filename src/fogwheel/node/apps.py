"""The node's side of apps: check an app version's lease before running it, and load its code.

A lease of an app's task carries the version (docs/apps.md): its canonical manifest, the id
the manifest must hash to, and the coordinator's signature of the manifest. `check_lease`
refuses the task unless all three agree and the lease runs exactly what the manifest names
(its environment, image and command line); the code zip the manifest names is then checked
against its SHA-256 every time it is used (`check_code`), from the network or from this
node's cache, so no changed byte of code runs. The whole lease is signed too (signing.py);
this check is what ties the lease's pieces to the version a customer published.

`AppCall` is what the worker runs for a function app: the entry `module:attr`, imported from
the code zip in the task's working directory (zipimport: the code is never unpacked) or, with
no code, from the task's Python environment.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from fogwheel.core import apps as core
from fogwheel.signing import verify_app_version


class AppRefused(Exception):
    """An app's lease or code that this node will not run: the sentence says why."""


def check_lease(lease: dict[str, Any], public_key: str) -> core.Manifest:
    """The manifest of the app version `lease` runs, once the lease agrees with it."""
    part = lease.get("app")
    if not isinstance(part, dict):
        raise AppRefused("the lease names no app version")
    text = part.get("manifest")
    version = part.get("version")
    if not isinstance(text, str) or not isinstance(version, str):
        raise AppRefused("the lease's app version has no manifest or id")
    raw = text.encode()
    if hashlib.sha256(raw).hexdigest() != version:
        raise AppRefused(f"the manifest of version {version[:12]} does not hash to its id")
    if not verify_app_version(public_key, raw, part.get("signature")):
        raise AppRefused(f"version {version[:12]} is not signed by this node's coordinator")
    try:
        m = core.parse_manifest(raw)
    except core.AppError as e:
        raise AppRefused(f"version {version[:12]}: {e}") from None
    if m.app != part.get("name"):
        raise AppRefused(f"version {version[:12]} is of app {m.app}, not {part.get('name')}")
    if lease.get("kind") != m.kind:
        raise AppRefused(f"version {version[:12]} runs {m.kind}, the lease {lease.get('kind')}")
    if lease.get("env") != m.env or lease.get("image") != m.image:
        raise AppRefused(f"the lease's environment or image is not version {version[:12]}'s")
    if m.kind == "command":
        command = lease.get("command") or []
        if list(command[: len(m.command or ())]) != list(m.command or ()):
            raise AppRefused(f"the lease's command line is not version {version[:12]}'s")
    elif lease.get("fn") is not None:
        raise AppRefused("a function app's lease carries no pickled function")
    if m.code is not None:
        given = (lease.get("inputs") or {}).get(core.CODE_FILE) or {}
        if given.get("sha") != m.code.sha:
            raise AppRefused(f"the lease's code is not version {version[:12]}'s")
    return m


def check_code(m: core.Manifest, path: Path) -> None:
    """AppRefused unless the file at `path` is exactly the code zip `m` names."""
    assert m.code is not None
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            size += len(chunk)
            h.update(chunk)
    if size != m.code.size or h.hexdigest() != m.code.sha:
        raise AppRefused(
            f"the code of app {m.app} here does not match its SHA-256 {m.code.sha[:12]}: "
            "refused (a changed copy is dropped and fetched again)"
        )


class AppCall:
    """The worker's function for a function app: `entry` from the code zip, then called."""

    def __init__(self, version: str, entry: str, code: bool) -> None:
        self.version = version
        self.entry = entry
        self.code = code
        self._target: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"version": self.version, "entry": self.entry, "code": self.code}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["version"], state["entry"], state["code"])  # type: ignore[misc]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        here = os.path.join(os.getcwd(), core.CODE_FILE)
        if self.code:
            # This task's copy of the zip first (a later import of a submodule reads it).
            sys.path[:] = [p for p in sys.path if not p.endswith(os.sep + core.CODE_FILE)]
            sys.path.insert(0, here)
        if self._target is None:
            if self.code:  # modules another zip gave this worker are not this code's
                for name, mod in list(sys.modules.items()):
                    where = getattr(mod, "__file__", None) or ""
                    if f"{os.sep}{core.CODE_FILE}{os.sep}" in where and not where.startswith(here):
                        del sys.modules[name]
            module, _, attr = self.entry.partition(":")
            target: Any = importlib.import_module(module)
            for part in attr.split("."):
                target = getattr(target, part)
            self._target = target
        return self._target(*args, **kwargs)
