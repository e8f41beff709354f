"""The SDK's side of apps: publish a version, and run an app's current version (docs/apps.md).

`publish` zips the code (a directory or one `.py` file, in one byte-exact form: sorted names,
fixed times, no `__pycache__`, so the same code is the same zip), resolves and uploads the
Python environment (`fogwheel.Env`, envs.py) or names a pushed program image, uploads the
manifest (core/apps.py) and registers it; the answer's `id` is the version's, its manifest's
SHA-256. `Client.app(name)` is an `App`: `submit` and `map` follow concurrent.futures as
`Client.submit` and `Client.map` do, and each task runs the version bound when it is leased.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fogwheel.core import apps as core
from fogwheel.envs import Env
from fogwheel.errors import FogwheelError

if TYPE_CHECKING:
    from fogwheel.client import Blob, Client, TaskFuture
    from fogwheel.safe_pickle import TrustedType

_SKIP_DIRS = {"__pycache__", "node_modules"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: no time of this machine


class AppCodeError(FogwheelError):
    """Code that cannot be published: the sentence says what to change."""


@dataclass(frozen=True)
class Version:
    """A published version: `id` (its manifest's SHA-256) and how it is shown."""

    id: str
    label: str
    current: bool
    entry: str | None
    command: tuple[str, ...] | None
    env: str | None
    image: str | None
    code_size: int | None
    new: bool = True
    outcomes: Mapping[str, int] | None = None


def zip_code(path: str | os.PathLike[str]) -> bytes:
    """The code at `path` (a directory's files, or one file) as a zip in one exact form."""
    root = Path(path)
    if root.is_file():
        files = [(root.name, root)]
    elif root.is_dir():
        files = sorted(
            (p.relative_to(root).as_posix(), p)
            for p in root.rglob("*")
            if p.is_file()
            and not p.name.endswith((".pyc", ".pyo"))
            and not any(
                part.startswith(".") or part in _SKIP_DIRS for part in p.relative_to(root).parts
            )
        )
    else:
        raise AppCodeError(f"{path}: no such file or directory to publish")
    if not files:
        raise AppCodeError(f"{path}: no files to publish (hidden files and caches are left out)")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, p in files:
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, p.read_bytes())
    data = out.getvalue()
    if len(data) > core.MAX_CODE_BYTES:
        raise AppCodeError(
            f"{path}: the code zips to {len(data) / 1e6:.1f} MB, over the "
            f"{core.MAX_CODE_BYTES / 1e6:.0f} MB an app's code may be: send data as inputs"
        )
    return data


def publish(
    client: Client,
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    function: str | None = None,
    command: Sequence[str] | None = None,
    env: Env | None = None,
    image: str | None = None,
    label: str | None = None,
    make_current: bool = True,
) -> Version:
    """Publish a version of app `name`: `function` ("module:attr") from the code at `path`
    (or from `env`'s packages), or a `command` line (in `image`)."""
    core.check_name(name)
    if label is not None:
        core.check_label(label)
    if (function is None) == (command is None):
        raise AppCodeError("an app version runs a function (module:attr) or a command: say one")
    code = None
    if function is not None:
        if image is not None:
            raise AppCodeError("a function app runs in a Python environment (--pip), not an image")
        if path is not None:
            data = zip_code(path)
            blob = client.put_blob(data, upload=True)
            code = core.Code(blob.sha, blob.size)
        m = core.Manifest(
            name, "python", entry=function, code=code, env=client.env_lock(env) if env else None
        )
    else:
        if path is not None or env is not None:
            raise AppCodeError("a command app brings its program in an image (--image), not code")
        m = core.Manifest(name, "command", command=tuple(command or ()), image=image)
    manifest = client.put_blob(m.canonical(), upload=True)
    body: dict[str, Any] = {"manifest": manifest.sha, "make_current": make_current}
    if label is not None:
        body["label"] = label
    out = client._request("POST", f"/v1/apps/{name}/versions", json=body).json()
    return _version(out)


def by_reference(
    entry: str, path: str | os.PathLike[str] | None = None
) -> tuple[Any, dict[str, bytes]]:
    """A function by reference (`module:attr`, imported on the node, never here) and the
    input files its task needs: the zip of the code at `path`, if given. What `fogwheel call`
    runs without publishing an app: `client.with_env(env).submit_many(fn, calls,
    inputs=[files] * len(calls))`."""
    from fogwheel.node.apps import AppCall

    if not core.ENTRY.match(entry):
        raise AppCodeError(f"{entry[:80]!r} is not a function by reference: write module:attr")
    files = {core.CODE_FILE: zip_code(path)} if path is not None else {}
    # named by its code: a worker that ran other code under the same names imports afresh
    code = hashlib.sha256(files.get(core.CODE_FILE, b"")).hexdigest()
    return AppCall(f"call-{code}", entry, bool(files)), files


class App:
    """An app of yours on the fog: `submit` and `map` run the version each lease binds."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = core.check_name(name)
        self._kind: str | None = None

    def __repr__(self) -> str:
        return f"App({self.name!r})"

    @property
    def kind(self) -> str:
        """python (a function) or command: read from the fog once."""
        if self._kind is None:
            self._kind = str(self.info()["kind"])
        return self._kind

    def info(self) -> dict[str, Any]:
        """The app as the fog has it (GET /v1/apps/NAME): its versions, which is current."""
        out: dict[str, Any] = self.client._request("GET", f"/v1/apps/{self.name}").json()
        return out

    def versions(self) -> list[Version]:
        return [_version(v) for v in self.info().get("versions") or []]

    def set_current(self, version: str) -> None:
        """Make `version` (a label, an id or 8+ digits of one) the one new tasks run."""
        body = {"version": version}
        self.client._request("POST", f"/v1/apps/{self.name}/current", json=body)

    def submit(self, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run the app once: a function app's `(*args, **kwargs)`, or a command app's extra
        arguments (strings) after its own command line. A future, as `Client.submit`'s."""
        if self.kind == "command":
            if kwargs:
                raise TypeError("a command app takes arguments as strings, not keywords")
            return self.submit_many([(args, {})])[0]
        return self.submit_many([(args, kwargs)])[0]

    def map(
        self,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        trusted_types: Iterable[TrustedType] = (),
    ) -> Iterator[Any]:
        """Like `Executor.map`, as one job: results in input order, failing fast; an
        iteration left early cancels the rest on the fog (as `Client.map`)."""
        import time

        from fogwheel.executor import in_order

        deadline = None if timeout is None else time.monotonic() + timeout
        calls = [(tuple(a), {}) for a in zip(*iterables, strict=False)]
        futures = self.submit_many(calls, trusted_types=trusted_types)
        return in_order(futures, deadline, cancel=self.client._cancel_unfinished)

    def submit_many(
        self,
        calls: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]],
        *,
        memory_mb: int = 256,
        wall_s: float = 600.0,
        cpu_s: float | None = None,
        max_attempts: int = 3,
        inputs: Sequence[Mapping[str, Blob | bytes | str | os.PathLike[str]]] | None = None,
        replicas: str | int | None = None,
        trusted_types: Iterable[TrustedType] = (),
    ) -> list[TaskFuture]:
        """One job of many runs of the app (the lower layer under `submit` and `map`); more
        than `client.SUBMIT_CHUNK` calls are several jobs."""
        import uuid

        from fogwheel.client import SUBMIT_CHUNK, _limits, _pickle_args

        if inputs is not None and len(inputs) != len(calls):
            raise ValueError(f"{len(inputs)} input mappings for {len(calls)} calls")
        c = self.client
        tasks = []
        for i, (args, kwargs) in enumerate(calls):
            task: dict[str, Any] = {}
            if self.kind == "command":
                if args:
                    task["argv"] = [str(x) for x in args]
            else:
                task["args"] = c._blob_value(_pickle_args(args, kwargs))
            if inputs is not None:
                task["inputs"] = c._files(inputs[i])
            tasks.append(task)
        decoder = None if c.unsafe_trust_nodes else c._decoder_for(trusted_types)
        futures: list[TaskFuture] = []
        for start in range(0, len(tasks), SUBMIT_CHUNK):
            job: dict[str, Any] = {
                "tasks": tasks[start : start + SUBMIT_CHUNK],
                "limits": _limits(memory_mb, wall_s, cpu_s),
                "max_attempts": max_attempts,
                "replicas": c.replicas if replicas is None else replicas,
                "client_token": uuid.uuid4().hex,  # a resent submission is not a twin
            }
            if c.max_cost is not None:
                job["max_cost"] = c.max_cost
            path = f"/v1/apps/{self.name}/jobs"
            out = c._request("POST", path, json=job, idempotent=True).json()
            futures += c._watch_job(out["id"], out["total"], self.kind, outputs=(), decoder=decoder)
        return futures


def _version(v: Mapping[str, Any]) -> Version:
    code = v.get("code") or None
    return Version(
        id=v["id"],
        label=v["label"],
        current=bool(v["current"]),
        entry=v.get("entry"),
        command=tuple(v["command"]) if v.get("command") else None,
        env=v.get("env"),
        image=v.get("image"),
        code_size=int(code["size"]) if code else None,
        new=bool(v.get("new", True)),
        outcomes=v.get("outcomes"),
    )


def listed(client: Client, limit: int = 100) -> list[dict[str, Any]]:
    """Your apps, by name (id, name, kind, current, version_count)."""
    rows: list[dict[str, Any]] = client._request("GET", "/v1/apps", params={"limit": limit}).json()[
        "apps"
    ]
    return rows
