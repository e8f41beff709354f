"""Routes of a customer's apps: publish versions, list and show them, choose the current one,
and submit work that runs the version each lease binds (docs/apps.md).

    POST /v1/apps/{name}/versions   publish a version: its manifest is an uploaded blob of yours
    GET  /v1/apps                   your apps
    GET  /v1/apps/{name}            one app, its versions and which is current
    POST /v1/apps/{name}/current    make a version current
    POST /v1/apps/{name}/jobs       tasks that run the app

Another customer's app is a 404, the same as one that does not exist: nobody learns which
names others use. A manifest must be in core/apps.py's canonical form and every piece it names
(its code zip, its environment's lock and wheels, its image) the customer's own; the
coordinator then signs it (signing.sign_app_version) and a lease carries that signature.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, FastAPI, HTTPException, Path, Query
from pydantic import Field, StringConstraints

from fogwheel.blobs import BlobStore, sha256_hex
from fogwheel.blobs.store import CorruptBlob
from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.env_check import check_env
from fogwheel.coordinator.identity import caller
from fogwheel.core import apps as core
from fogwheel.protocol import (
    MAX_TASKS_PER_JOB,
    FileName,
    JobIn,
    JobOut,
    Limits,
    Model,
    Problem,
    Sha256,
    TaskIn,
    ToleranceIn,
    Value,
)
from fogwheel.signing import sign_app_version
from fogwheel.store import Principal, Store
from fogwheel.store import apps as app_rows
from fogwheel.store import envs as env_rows
from fogwheel.store import images as image_rows

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such app or version (or not yours)"},
    409: {"model": Problem, "description": "The version contradicts the app (kind, label)"},
    422: {"model": Problem, "description": "The manifest or a piece it names is not valid"},
}
AppName = Annotated[str, Path(pattern=core.APP_NAME.pattern, description="the app's name")]
Label = Annotated[str, StringConstraints(pattern=core.LABEL.pattern)]


class VersionIn(Model):
    """A version to publish: its manifest blob (uploaded first, as the code zip it names)."""

    manifest: Sha256
    label: Label | None = Field(default=None, description="e.g. 1.2.0 (default: v1, v2, ...)")
    make_current: bool = Field(
        default=True, description="run it from now on (false: publish it, and choose later)"
    )


class VersionOut(Model):
    """A published version: `id` is its manifest's SHA-256."""

    id: str
    label: str
    seq: int = Field(description="1, 2, ...: the order of publishing")
    current: bool
    entry: str | None = Field(description="python: the function run, module:attr")
    command: list[str] | None = Field(description="command: the program and its arguments")
    code: dict[str, Any] | None = Field(description="the code zip's sha and size")
    env: str | None = Field(description="its Python environment's lock")
    image: str | None = Field(description="its program image")
    signature: str = Field(description="the coordinator's Ed25519 signature of the manifest")
    created: float
    outcomes: dict[str, int] = Field(
        default_factory=dict,
        description="attempts that ran this version, by how they ended (done, failed, lost, "
        "running, ...): what a roll-out compares",
    )
    new: bool | None = Field(default=None, description="publish: false when it existed already")


class AppOut(Model):
    id: str
    name: str
    kind: str = Field(description="python | command: every version's")
    current: str | None = Field(description="the version new leases run")
    created: float
    version_count: int | None = None
    versions: list[VersionOut] | None = None


class AppList(Model):
    apps: list[AppOut]


class CurrentIn(Model):
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="a version's label, id, or the first 8 or more hex digits of its id"
    )


class AppTaskIn(Model):
    """One task of an app: arguments for a function app, more arguments for a command app."""

    args: Value | None = Field(default=None, description="python: the pickled (args, kwargs)")
    argv: list[Annotated[str, StringConstraints(max_length=4096)]] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="command: arguments after the version's own command line",
    )
    inputs: dict[FileName, Value] = Field(default_factory=dict)
    outputs: list[FileName] = Field(default_factory=list, max_length=100)


class AppJobIn(Model):
    """Work for an app: each task runs the version its lease binds (docs/apps.md)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    tasks: list[AppTaskIn] = Field(min_length=1, max_length=MAX_TASKS_PER_JOB)
    limits: Limits = Field(default_factory=Limits)
    max_attempts: int = Field(default=3, ge=1, le=100)
    replicas: Literal["adaptive"] | Annotated[int, Field(ge=1, le=5)] = Field(
        default="adaptive", description="as in POST /v1/jobs"
    )
    quorum: int = Field(default=2, ge=1, le=5)
    tolerance: ToleranceIn | None = None
    client_token: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    backups: bool = True
    max_cost: float | None = Field(default=None, gt=0, le=1e9, allow_inf_nan=False)


def build_app_routes(
    app: FastAPI | APIRouter,
    store: Store,
    auth: Authenticator,
    blobs: BlobStore,
    signing_key: Ed25519PrivateKey,
    on_submit: Any = None,
) -> None:
    """Add the app routes to `app`; `on_submit(n)` hears of each job's task count."""
    v1 = APIRouter(prefix="/v1", responses=ERRORS, tags=["apps"])
    customer = caller(auth, "customer")

    @v1.post("/apps/{name}/versions", status_code=201)
    def publish_version(name: AppName, body: VersionIn, who: Principal = customer) -> VersionOut:
        """Publish a version of your app `name` (made on its first version): the manifest
        blob (core/apps.py's canonical JSON) and everything it names must be yours.
        Publishing the same bundle again is the same version (201, `new: false`)."""
        m = _manifest(store, blobs, who.id, body.manifest)
        if m.app != name:
            raise HTTPException(422, f"the manifest is of app {m.app}, not {name}")
        pieces, needs = _pieces(store, blobs, who.id, m)
        signature = sign_app_version(signing_key, m.canonical())
        now = time.time()
        try:
            with store.tx() as c:
                app_id = app_rows.ensure_app(c, who.id, name, m.kind, now)
                out, new = app_rows.add_version(
                    c, app_id, m, signature, body.label, pieces, needs, now
                )
                if body.make_current:
                    out = app_rows.set_current(c, app_id, out["id"]) or out
        except app_rows.AppConflict as e:
            raise HTTPException(409, str(e)) from None
        except core.AppError as e:
            raise HTTPException(422, str(e)) from None
        return VersionOut(**out, new=new)

    @v1.get("/apps")
    def list_apps(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, who: Principal = customer
    ) -> AppList:
        """Your apps, by name."""
        with store.read() as c:
            return AppList(apps=[AppOut(**a) for a in app_rows.list_apps(c, who.id, limit)])

    @v1.get("/apps/{name}")
    def get_app(name: AppName, who: Principal = customer) -> AppOut:
        """Your app `name`: its versions, oldest first, which one is current, and how the
        attempts that ran each ended."""
        with store.read() as c:
            found = app_rows.get_app(c, who.id, name)
        if found is None:
            raise HTTPException(404, _no_app(name))
        return AppOut(**found)

    @v1.post("/apps/{name}/current")
    def set_current(name: AppName, body: CurrentIn, who: Principal = customer) -> AppOut:
        """Make one of the app's versions current: tasks leased from now on run it."""
        with store.tx() as c:
            app_id = app_rows.app_id_of(c, who.id, name)
            if app_id is None:
                raise HTTPException(404, _no_app(name))
            if app_rows.set_current(c, app_id, body.version) is None:
                raise HTTPException(
                    404,
                    f"app {name} has no version {body.version[:64]!r}: "
                    f"`fogwheel apps show {name}` lists its labels and ids",
                )
            found = app_rows.get_app(c, who.id, name)
        assert found is not None
        return AppOut(**found)

    @v1.post("/apps/{name}/jobs", status_code=201)
    def submit(name: AppName, body: AppJobIn, who: Principal = customer) -> JobOut:
        """Run tasks of app `name`: each runs the version bound when it is leased (the
        current one, unless a roll-out gives its node another)."""
        with store.read() as c:
            app_id = app_rows.app_id_of(c, who.id, name)
            if app_id is None:
                raise HTTPException(404, _no_app(name))
            current = app_rows.version_for(c, app_id, "")
            v = app_rows.version(c, app_id, current) if current else None
        if v is None:
            raise HTTPException(
                422, f"app {name} has no current version: `fogwheel apps set-current {name} V`"
            )
        job = _job_of(name, body, v.manifest)
        _check_values(store, who.id, job)
        refusal = store.job_refusal(who.id, job)  # credit limit (402), max_cost (422)
        if refusal is not None:
            raise HTTPException(*refusal)
        job_id = store.create_job(who.id, job, time.time(), app_id=app_id)
        if on_submit is not None:
            on_submit(len(job.tasks))
        out = store.get_job(who.id, job_id)
        assert out is not None
        return JobOut(**out)

    app.include_router(v1)


def _no_app(name: str) -> str:
    return f"no app {name} of yours: publish one with `fogwheel apps publish {name} ...`"


def _job_of(name: str, body: AppJobIn, m: core.Manifest) -> JobIn:
    """The job of `body`, with what the current version names for placement (its
    environment, its image); each lease says what its bound version runs."""
    tasks = []
    for i, t in enumerate(body.tasks):
        if core.CODE_FILE in t.inputs:
            raise HTTPException(422, f"tasks[{i}].inputs: {core.CODE_FILE} is the app's own code")
        if m.kind == "python" and t.argv is not None:
            raise HTTPException(422, f"tasks[{i}].argv: app {name} runs a function: send args")
        if m.kind == "command" and t.args is not None:
            raise HTTPException(422, f"tasks[{i}].args: app {name} runs a command: send argv")
        tasks.append(
            TaskIn(args=t.args, command=t.argv, inputs=t.inputs, outputs=t.outputs, image=m.image)
        )
    try:
        return JobIn(
            name=body.name or name,
            kind=m.kind,
            tasks=tasks,
            limits=body.limits,
            max_attempts=body.max_attempts,
            replicas=body.replicas,
            quorum=body.quorum,
            tolerance=body.tolerance,
            client_token=body.client_token,
            backups=body.backups,
            max_cost=body.max_cost,
            env=m.env,
        )
    except ValueError as e:
        raise HTTPException(422, f"the job is not valid: {e}") from None


def _check_values(store: Store, customer_id: str, job: JobIn) -> None:
    """422 unless every inline value matches its hash and every other is an uploaded blob."""
    refs: set[str] = set()
    for t in job.tasks:
        for v in [t.args, *t.inputs.values()]:
            if v is None:
                continue
            if v.data is None:
                refs.add(v.sha)
                continue
            try:
                raw = base64.b64decode(v.data, validate=True)
            except ValueError:
                raise HTTPException(422, f"value {v.sha[:12]}…: data is not base64") from None
            if sha256_hex(raw) != v.sha or len(raw) != v.size:
                raise HTTPException(422, f"value {v.sha[:12]}…: inline bytes do not match")
    missing = refs - store.owned_blobs(customer_id, refs)
    if missing:
        first = sorted(missing)[0]
        raise HTTPException(422, f"blob {first} is not uploaded: PUT it to /v1/blobs/<sha> first")


def _manifest(store: Store, blobs: BlobStore, customer_id: str, sha: str) -> core.Manifest:
    """The checked manifest blob `sha` of the customer's, or a 422 that says what is wrong."""
    if not store.owned_blobs(customer_id, {sha}):
        raise HTTPException(
            422, f"manifest {sha[:12]}… is not uploaded: PUT it to /v1/blobs/{sha} first"
        )
    try:
        with blobs.open_verified(sha) as f:
            raw = f.read(core.MAX_MANIFEST_BYTES + 1)
    except (KeyError, CorruptBlob):
        raise HTTPException(422, f"manifest {sha[:12]}… cannot be read: upload it again") from None
    try:
        return core.parse_manifest(raw)
    except core.AppError as e:
        raise HTTPException(422, f"manifest {sha[:12]}…: {e}") from None


def _pieces(
    store: Store, blobs: BlobStore, customer_id: str, m: core.Manifest
) -> tuple[dict[str, int], set[str]]:
    """Every blob a node running `m` may fetch (sha -> size) and what such a node needs;
    a 422 when a piece is not the customer's or not whole."""
    pieces: dict[str, int] = {}
    needs: set[str] = set()
    if m.code is not None:
        if not store.owned_blobs(customer_id, {m.code.sha}):
            raise HTTPException(
                422, f"code {m.code.sha[:12]}… is not uploaded: PUT it to /v1/blobs first"
            )
        try:
            with blobs.open_verified(m.code.sha) as f:
                size = blobs.size_of(f)
        except (KeyError, CorruptBlob):
            why = f"code {m.code.sha[:12]}… cannot be read: upload it again"
            raise HTTPException(422, why) from None
        if size != m.code.size:
            raise HTTPException(
                422, f"code {m.code.sha[:12]}… is {size} bytes, the manifest says {m.code.size}"
            )
        pieces[m.code.sha] = size
    if m.env is not None:
        probe = JobIn(kind="python", tasks=[TaskIn()], env=m.env)
        check_env(probe, customer_id, store, blobs)  # read, parsed and registered, or a 422
        with store.read() as c:
            lock = env_rows.lock_of(c, m.env)
        assert lock is not None
        pieces[m.env] = 1
        pieces.update({w.sha256: w.size for w in lock.wheels})
    if m.image is not None:
        with store.read() as c:
            found = image_rows.image_refs(c, customer_id, m.image)
        if found is None:
            raise HTTPException(
                422,
                f"image {m.image[:12]}… is not yours or not pushed: "
                "push it with `fogwheel images push DIR|TAR|OCI-DIR`",
            )
        needs |= found[0]
        pieces.update(found[1])
    return pieces, needs
