"""HTTP routes under /v1. Each route authenticates, validates, calls the store, and answers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import os
import time
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fogwheel import __version__
from fogwheel.blobs import BlobStore, is_sha256, sha256_hex
from fogwheel.blobs.store import CorruptBlob, UploadBusy
from fogwheel.coordinator.allow import allowed_methods, not_allowed_sentence
from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.cdn_routes import build_cdn_routes, screen_serve_url
from fogwheel.coordinator.diskfull import DISK_FULL_MESSAGE, is_disk_full
from fogwheel.coordinator.env_check import check_env
from fogwheel.coordinator.identity import PUBLIC, caller
from fogwheel.coordinator.image_routes import build_image_routes, check_task_images
from fogwheel.coordinator.job_routes import build_job_routes
from fogwheel.coordinator.ledger_routes import build_ledger_routes
from fogwheel.coordinator.metrics import Metrics
from fogwheel.coordinator.metrics_routes import build_metrics_routes
from fogwheel.coordinator.observe import Observe
from fogwheel.coordinator.owner_routes import build_owner_routes
from fogwheel.coordinator.rollout_routes import build_rollout_routes
from fogwheel.coordinator.syncpace import SyncPace
from fogwheel.core import byteranges, pacing
from fogwheel.core.owners import Refuse, network_of
from fogwheel.errors import IntegrityError, NameTaken, StorageFull
from fogwheel.protocol import (
    MAX_DEADLINE_S,
    SQL_INT_MAX,
    BlobList,
    CoordinatorKey,
    CustomerCreated,
    Health,
    JobIn,
    JobList,
    JobOut,
    Name,
    NodeJoin,
    NodeJoined,
    NodeList,
    PollIn,
    PollOut,
    Problem,
    ResultAcked,
    ResultsOut,
    SyncIn,
    SyncOut,
    TaskLease,
    TaskList,
    TaskOut,
    TaskReport,
    UploadState,
    Value,
    WhoAmI,
)
from fogwheel.signing import (
    fingerprint,
    key_pin,
    parse_join_string,
    pin_matches,
    public_key_b64,
    sign_lease,
)
from fogwheel.store import Principal, Store

log = logging.getLogger("fogwheel.coordinator")

ERRORS: dict[int | str, dict[str, Any]] = {  # 401 and 403: coordinator/openapi.py
    400: {"model": Problem, "description": "Malformed request"},
    404: {"model": Problem, "description": "No such resource (or not yours)"},
    408: {"model": Problem, "description": "The request body came too slowly"},
    413: {"model": Problem, "description": "Body over the size limit"},
    422: {"model": Problem, "description": "Body or parameters of the wrong shape"},
    507: {"model": Problem, "description": "The coordinator's disk or database is full"},
}

SHED_AFTER_S = 0.25  # a sync should take milliseconds: a quarter second queued is overload
BLOB_WRITE = 1 << 20  # an upload reaches the disk in writes of about this size
DEFAULT_MAX_BLOB_BYTES = SQL_INT_MAX  # sizes live in 32-bit SQL columns: 2 GiB - 1

JobId = Annotated[int, Path(ge=0, le=SQL_INT_MAX)]
TaskId = Annotated[int, Path(ge=0, le=SQL_INT_MAX)]


class Results:
    """Wakes long-polling result readers when results are committed, here or by a peer.

    A wake crosses from a worker thread into the event loop, which costs a self-pipe write:
    it is skipped when nobody waits, and coalesced while one is already on its way. With
    several coordinator processes (PostgreSQL), `peers` (coordinator/wakeups.py) carries each
    wake to the others, and while it listens readers look again only every `RECHECK_PEERS_S`
    (a safety net) instead of every `RECHECK_S`."""

    RECHECK_S = 0.5  # how often a waiting reader looks again when no peer can wake it
    RECHECK_PEERS_S = 3.0  # … and when peers wake it (lease expiry settles tasks unannounced)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._waiting = 0
        self._wake_pending = False
        self.peers: Any = None  # a PgWakeups, set by the server on PostgreSQL

    @property
    def recheck_s(self) -> float:
        listening = self.peers is not None and self.peers.listening
        return self.RECHECK_PEERS_S if listening else self.RECHECK_S

    def bind(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Results were committed by this process: wake its readers, and tell the peers."""
        if self.peers is not None:
            self.peers.send()
        self.wake_local()

    def wake_local(self) -> None:
        """Wake this process's waiting readers (from any thread)."""
        if self._loop is None or self._waiting == 0 or self._wake_pending:
            return
        self._wake_pending = True
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        assert self._event is not None
        self._wake_pending = False
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        if self._event is None:
            self.bind()
        assert self._event is not None
        self._waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        finally:
            self._waiting -= 1


def build_routes(
    app: FastAPI,
    store: Store,
    blobs: BlobStore,
    join_open: bool = True,
    *,
    signing_key: Ed25519PrivateKey,
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    sync_budget: float = pacing.DEFAULT_BUDGET,
    sync_target_s: float = pacing.TARGET_LATENCY_S,
) -> None:
    public_key = public_key_b64(signing_key)
    auth = Authenticator(store)
    app.state.auth = auth  # the server tells it of revocations on other processes
    metrics = Metrics(store)
    app.state.metrics = metrics  # the server's middleware outside the app counts into it too
    app.add_middleware(Observe, requests=metrics.requests)  # latency by route; log context
    results = Results()
    app.state.results = results
    pace = SyncPace(store, sync_budget, sync_target_s)  # when nodes come back (core/pacing.py)
    # A sync that only asks for work and queued longer than this for a thread is shed.
    shed_after_s = float(os.environ.get("FOGWHEEL_SHED_AFTER_S", SHED_AFTER_S))
    v1 = APIRouter(prefix="/v1", responses=ERRORS)
    customer, node, admin = caller(auth, "customer"), caller(auth, "node"), caller(auth, "admin")
    customer_or_node = caller(auth, "customer", "node")
    anyone_known = caller(auth, "customer", "admin", "owner", "node")

    # -- errors: always JSON with one sentence, never a traceback ---------------------------

    @app.exception_handler(StarletteHTTPException)  # also FastAPI's, routing's and BodyLimit's
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers, message = getattr(exc, "headers", None), str(exc.detail)
        if exc.status_code == 405:  # Allow from every route at this path, not just the first
            allowed = allowed_methods(request.app.router.routes, request.scope)
            kept = {k: v for k, v in (headers or {}).items() if k.lower() != "allow"}
            headers = {**kept, "allow": ", ".join(allowed)}
            message = not_allowed_sentence(request.method, request.url.path, allowed)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = "the body is not valid JSON"
        else:
            message = f"{where}: {msg}"
        detail = [{"loc": e.get("loc"), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return JSONResponse({"error": message, "detail": detail}, status_code=422)

    @app.exception_handler(StorageFull)
    async def _disk_full(request: Request, exc: StorageFull) -> JSONResponse:
        log.error("disk full on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": str(exc)}, status_code=507)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):  # the blob store's StorageFull, or SQLite/PostgreSQL out of space
            log.error("disk full on %s %s: %s", request.method, request.url.path, exc)
            return JSONResponse({"error": DISK_FULL_MESSAGE}, 507)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error; the coordinator log has the details"}, 500)

    # -- health and identity ----------------------------------------------------------------

    @v1.get("/health", tags=["meta"], openapi_extra=PUBLIC)
    def health() -> Health:
        """The coordinator is up (no key needed): for load balancers and `fogwheel up`."""
        return Health(ok=True, version=__version__)

    @v1.get("/whoami", tags=["meta"])
    def whoami(who: Principal = anyone_known) -> WhoAmI:
        """Whose key this is: any kind of key."""
        return WhoAmI(kind=who.kind, id=who.id, name=who.name)  # type: ignore[arg-type]

    @v1.post(
        "/customers",
        status_code=201,
        tags=["admin"],
        dependencies=[admin],
        responses={409: {"model": Problem, "description": "A customer has this name already"}},
    )
    def create_customer(name: Annotated[Name, Query()]) -> CustomerCreated:
        """Operator: a new customer and its API key (shown once)."""
        try:
            customer_id, key = store.create_customer(name, time.time())
        except NameTaken as e:
            raise HTTPException(409, str(e)) from None
        return CustomerCreated(customer_id=customer_id, api_key=key)

    # -- jobs -------------------------------------------------------------------------------

    @v1.post("/jobs", status_code=201, tags=["jobs"])
    def submit_job(job: JobIn, who: Principal = customer) -> JobOut:
        _check_job(job, who.id)
        refusal = store.job_refusal(who.id, job)  # credit limit (402), max_cost (422)
        if refusal is not None:
            raise HTTPException(*refusal)
        job_id = store.create_job(who.id, job, time.time())
        metrics.submitted.inc(len(job.tasks))
        out = store.get_job(who.id, job_id)
        return JobOut(**out)  # type: ignore[arg-type]

    def _check_job(job: JobIn, customer_id: str) -> None:
        if job.kind == "python" and job.fn is None:
            raise HTTPException(422, "fn: a python job needs the pickled function")
        if job.kind == "command" and any(t.command is None for t in job.tasks):
            raise HTTPException(422, "tasks: every task of a command job needs a command")
        if job.deadline is not None:  # absolute Unix time; the SDK and CLI send now + duration
            ahead = job.deadline - time.time()
            if not 0 < ahead <= MAX_DEADLINE_S:
                raise HTTPException(
                    422,
                    f"deadline: {job.deadline:.0f} is {'past' if ahead <= 0 else 'too far'} "
                    f"({ahead:+.0f} s from now): give a Unix time in the next "
                    f"{MAX_DEADLINE_S / 86400:.0f} days",
                )
        refs: set[str] = set()
        values = [job.fn] if job.fn else []
        for t in job.tasks:
            values.extend(v for v in [t.args, *t.inputs.values()] if v is not None)
        for v in values:
            _check_value(v)
            if v.data is None:
                refs.add(v.sha)
        missing = refs - store.owned_blobs(customer_id, refs)
        if missing:
            raise HTTPException(
                422, f"blob {sorted(missing)[0]} is not uploaded: PUT it to /v1/blobs/<sha> first"
            )
        check_task_images(store, customer_id, job)  # coordinator/image_routes.py
        check_env(job, customer_id, store, blobs)  # its Python environment (docs/envs.md)

    @v1.get("/jobs", tags=["jobs"])
    def list_jobs(
        limit: Annotated[int, Query(ge=1, le=1000)] = 50, who: Principal = customer
    ) -> JobList:
        return JobList(jobs=[JobOut(**j) for j in store.list_jobs(who.id, limit)])

    @v1.get("/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: JobId, who: Principal = customer) -> JobOut:
        job = store.get_job(who.id, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        if job["state"] == "running":
            job["waiting"] = store.job_waiting(who.id, job_id, time.time())
        return JobOut(**job)

    @v1.post("/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: JobId, who: Principal = customer) -> JobOut:
        job = store.cancel_job(who.id, job_id, time.time())
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        results.notify()
        return JobOut(**job)

    @v1.get("/jobs/{job_id}/results", tags=["jobs"])
    async def job_results(
        job_id: JobId,
        after: Annotated[
            int, Query(ge=0, le=SQL_INT_MAX, description="cursor from the previous answer")
        ] = 0,
        wait: Annotated[float, Query(ge=0, le=60, description="seconds to wait for news")] = 0,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
        who: Principal = customer,
    ) -> ResultsOut:
        deadline = time.monotonic() + wait
        while True:
            out = await run_in_threadpool(store.results_since, who.id, job_id, after, limit)
            if out is None:
                raise HTTPException(404, f"no job {job_id}")
            left = deadline - time.monotonic()
            if out["results"] or out["finished"] >= out["total"] or left <= 0:
                return ResultsOut(**out)
            # Woken by this process; polling covers results committed by other coordinators.
            await results.wait(min(left, results.recheck_s))

    @v1.post("/results/poll", tags=["jobs"])
    async def poll_results(body: PollIn, who: Principal = customer) -> PollOut:
        """Results of several jobs after their cursors; waits up to `wait` s for any news."""
        deadline = time.monotonic() + body.wait
        cursors = {int(j): after for j, after in body.jobs.items()}
        known = {int(j): n for j, n in (body.leased or {}).items()}  # tasks held, as seen
        while True:
            answers = []
            for job_id, after in cursors.items():
                out = await run_in_threadpool(
                    store.results_since, who.id, job_id, after, leased=job_id in known
                )
                if out is None:
                    raise HTTPException(404, f"no job {job_id}")
                answers.append(out)
            left = deadline - time.monotonic()
            # Nothing to wait for (no jobs named) counts as news: answer at once; so does a
            # task a node took (or lost) since the caller last looked.
            news = not answers or any(
                a["results"]
                or a["finished"] >= a["total"]
                or ("leased" in a and len(a["leased"]) != known[a["job_id"]])
                for a in answers
            )
            if news or left <= 0:
                return PollOut(jobs=[ResultsOut(**a) for a in answers])
            await results.wait(min(left, results.recheck_s))

    @v1.get("/jobs/{job_id}/tasks", tags=["jobs"])
    def list_tasks(
        job_id: JobId,
        state: Annotated[
            str | None, Query(pattern="^(pending|leased|done|failed|cancelled)$")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=SQL_INT_MAX)] = 0,
        who: Principal = customer,
    ) -> TaskList:
        rows = store.list_tasks(who.id, job_id, state, limit, offset, now=time.time())
        if rows is None:
            raise HTTPException(404, f"no job {job_id}")
        return TaskList(tasks=[TaskOut(**t) for t in rows])

    @v1.get("/tasks/{task_id}", tags=["jobs"])
    def get_task(task_id: TaskId, who: Principal = customer) -> TaskOut:
        t = store.get_task(who.id, task_id)
        if t is None:
            raise HTTPException(404, f"no task {task_id}")
        return TaskOut(**t)

    # -- blobs ------------------------------------------------------------------------------

    @v1.put(
        "/blobs/{sha}",
        status_code=201,
        tags=["blobs"],
        responses={
            202: {"model": UploadState, "description": "A part before the last was kept"},
            409: {"model": Problem, "description": "A part at the wrong offset, or a busy upload"},
        },
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
                "required": True,
            }
        },
    )
    async def put_blob(
        request: Request, response: Response, sha: str, who: Principal = customer_or_node
    ) -> UploadState:
        """Upload a blob, streamed to disk and hashed on the way (docs/blobs.md).

        A plain PUT sends the whole blob. A resumable one sends parts with `Content-Range:
        bytes FIRST-LAST/TOTAL`, each starting where the bytes received so far end (GET
        /v1/blobs/{sha}/upload tells where); what an interrupted request sent is kept. 201
        once the blob is whole and hashes to its name, 202 `{"received": N}` for a part
        before the last; 409 for a part at the wrong offset, 413 over the blob limit."""
        _check_sha(sha)
        ranged = request.headers.get("content-range")
        try:
            part = byteranges.parse_content_range(ranged) if ranged else None
        except byteranges.RangeError as e:
            raise HTTPException(e.status, str(e)) from None
        up = blobs.upload(sha, f"{who.kind}:{who.id}")
        try:
            received = await run_in_threadpool(up.open, part is not None)
        except UploadBusy as e:
            raise HTTPException(409, str(e)) from None
        try:
            if part is not None:
                try:
                    byteranges.check_part(part, received, max_blob_bytes)
                except byteranges.RangeError as e:
                    raise HTTPException(e.status, str(e)) from None
            length = part.length if part is not None else max_blob_bytes
            try:
                if not await _receive_into(request, up, length, part is not None):
                    return JSONResponse({"error": "the client went away"}, 400)  # partial kept
            except UploadBusy as e:  # the database store: another request took the partial over
                raise HTTPException(409, str(e)) from None
            got = up.received - received
            if part is not None and got != part.length:
                raise HTTPException(
                    400, f"Content-Range announced {part.length} bytes but {got} came"
                )
            if part is not None and not part.completes:
                response.status_code = 202
                return UploadState(sha=sha, complete=False, received=up.received, size=part.total)
            try:
                await run_in_threadpool(up.finish)
            except IntegrityError as e:
                raise HTTPException(400, str(e)) from None
        finally:
            await run_in_threadpool(up.close)
        size = up.received
        if who.kind == "customer":
            await run_in_threadpool(store.own_blob, who.id, sha, size, time.time())
        else:  # a node may name what it uploaded as a task's output (store/leasing.py)
            await run_in_threadpool(store.note_upload, who.id, sha, time.time())
        return UploadState(sha=sha, complete=True, received=size, size=size)

    async def _receive_into(request: Request, up: Any, length: int, ranged: bool) -> bool:
        """Stream the body into `up` in 1 MiB writes; False when the client went away (what
        came is written, for a later resume). At most `length` bytes (400 / 413 beyond)."""
        buf = bytearray()
        got = 0
        try:
            async for chunk in request.stream():
                got += len(chunk)
                if got > length:
                    if ranged:
                        raise HTTPException(400, f"the body is longer than its {length} bytes")
                    await run_in_threadpool(up.discard)
                    raise HTTPException(
                        413,
                        f"a blob over the coordinator's blob limit of {max_blob_bytes} bytes "
                        "(coordinator --max-blob-mb)",
                    )
                buf += chunk
                if len(buf) >= BLOB_WRITE:
                    await run_in_threadpool(up.write, bytes(buf))
                    buf.clear()
        except ClientDisconnect:
            if buf:
                await run_in_threadpool(up.write, bytes(buf))
            return False
        except StarletteHTTPException as e:  # BodyLimit's 413: nothing of it is worth keeping
            if e.status_code == 413:
                await run_in_threadpool(up.discard)
            raise
        if buf:
            await run_in_threadpool(up.write, bytes(buf))
        return True

    @v1.get("/blobs/{sha}/upload", tags=["blobs"])
    def upload_status(sha: str, who: Principal = customer_or_node) -> UploadState:
        """How much of blob `sha` the coordinator holds from you: `complete` (with its `size`)
        when the blob is yours, else the bytes `received` of your unfinished upload (0: none),
        which is where a resumed upload sends from."""
        _check_sha(sha)
        if who.kind == "customer" and store.owned_blobs(who.id, {sha}):
            # complete only if intact: a corrupt one is quarantined here, so the client
            # uploads it again and its correct bytes replace it
            with contextlib.suppress(KeyError, CorruptBlob), blobs.open_verified(sha) as f:
                size = blobs.size_of(f)
                return UploadState(sha=sha, complete=True, size=size, received=size)
        received = blobs.received(sha, f"{who.kind}:{who.id}")
        return UploadState(sha=sha, complete=False, received=received)

    @v1.get("/blobs", tags=["blobs"])
    def list_blobs(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=SQL_INT_MAX)] = 0,
        who: Principal = customer,
    ) -> BlobList:
        """Your blobs (uploaded, or your tasks' outputs), newest first: sha, size, created."""
        return BlobList(blobs=store.list_blobs(who.id, limit, offset))  # type: ignore[arg-type]

    @v1.get(
        "/blobs/{sha}",
        tags=["blobs"],
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    def get_blob(request: Request, sha: str, who: Principal = customer_or_node) -> Response:
        _check_sha(sha)
        allowed = (
            store.node_may_read(who.id, sha) or store.cdn_node_may_read(who.id, sha)
            if who.kind == "node"
            else bool(store.owned_blobs(who.id, {sha}))
        )
        if not allowed:
            raise HTTPException(404, f"no blob {sha}")
        # Hashed (or known unchanged since it was) before the first byte goes out: a blob
        # corrupt on disk is quarantined and answered 404, never served as 200.
        try:
            f = blobs.open_verified(sha)
        except KeyError:
            raise HTTPException(404, f"no blob {sha}") from None
        except CorruptBlob as e:
            raise HTTPException(404, str(e)) from None
        size = blobs.size_of(f)
        asked = request.headers.get("range")
        if asked:  # the rest of an interrupted download (RFC 9110 §14.2)
            try:
                span = byteranges.parse_range(asked, size)
            except byteranges.RangeError as e:
                f.close()
                headers = {"content-range": f"bytes */{size}"} if e.status == 416 else None
                raise HTTPException(e.status, str(e), headers=headers) from None
            f.seek(span.first)
            return StreamingResponse(
                blobs.chunks(f, span.length),
                status_code=206,
                media_type="application/octet-stream",
                headers={
                    "content-length": str(span.length),
                    "content-range": span.content_range(size),
                },
            )
        # A node keeps what it fetched in its cache: once it has it all, placement may prefer
        # it for the tasks that read this blob (locality).
        held = (
            BackgroundTask(store.hold_blobs, who.id, [(sha, size)]) if who.kind == "node" else None
        )
        return StreamingResponse(
            blobs.chunks(f),
            media_type="application/octet-stream",
            headers={"content-length": str(size), "accept-ranges": "bytes"},
            background=held,
        )

    # -- nodes ------------------------------------------------------------------------------

    @v1.post(
        "/nodes/join",
        status_code=201,
        tags=["nodes"],
        openapi_extra=PUBLIC,
        responses={
            401: {"model": Problem, "description": "Unknown, revoked or expired join token"},
            403: {"model": Problem, "description": "The join token has admitted all its devices"},
            429: {"model": Problem, "description": "Joins with this token come too fast"},
        },
    )
    def join(request: Request, info: NodeJoin) -> NodeJoined:
        """Join a device with a join token; the token's owner owns it (docs/owners.md).

        401: unknown, revoked or expired token; 403: its device cap is used up; 429: joins
        faster than its rate (Retry-After says when to try again)."""
        # A node sends the bare token; one that sends the whole join string is told if its
        # pin names another coordinator, rather than being admitted to the wrong fog.
        try:
            secret, pin = parse_join_string(info.token)
        except ValueError as e:
            raise HTTPException(422, f"token: {e}") from None
        if pin is not None and not pin_matches(public_key, pin):
            raise HTTPException(
                401, "this join string pins another coordinator's key: check the coordinator URL"
            )
        info = info.model_copy(update={"token": secret})
        host = request.client.host if request.client else None
        joined = store.join_with_token(info, time.time(), network=network_of(host))
        if isinstance(joined, Refuse):
            retry = joined.retry_after_s
            headers = {"retry-after": str(max(1, math.ceil(retry)))} if retry else None
            raise HTTPException(joined.status, joined.reason, headers=headers)
        node_id, credential = joined
        log.info(
            "node %s (%s) joined: %d cores, %d MB", node_id, info.name, info.cores, info.memory_mb
        )
        return NodeJoined(
            node_id=node_id,
            credential=credential,
            lease_seconds=store.lease_seconds,
            public_key=public_key,
        )

    @v1.get("/coordinator/key", tags=["nodes"], openapi_extra=PUBLIC)
    def coordinator_key() -> CoordinatorKey:
        """The Ed25519 key that signs every task spec; a node checks it against the pin in its
        join string (or, given a bare token, trusts it on first use)."""
        return CoordinatorKey(
            algorithm="Ed25519",
            public_key=public_key,
            fingerprint=fingerprint(public_key),
            pin=key_pin(public_key),
        )

    @v1.post("/nodes/me/sync", tags=["nodes"])
    def sync(
        request: Request,
        req: SyncIn,
        leaving: bool = False,
        arrived: float = Depends(_arrival),
        who: Principal = node,
    ) -> SyncOut:
        queued = time.monotonic() - arrived  # how long it waited for a worker thread
        pace.queued(queued)  # what the Pacer keeps within its target
        metrics.sync_queued.observe(queued)
        return _sync_or_shed(request, who.id, req, leaving, queued)

    def _sync_or_shed(
        request: Request, node_id: str, req: SyncIn, leaving: bool, queued: float
    ) -> SyncOut:
        if queued > shed_after_s and _only_asks(req, leaving):
            # Admission control: this sync waited in the queue for a worker thread longer than
            # a sync should take, so the process is overloaded. A sync that only asks for work
            # is answered at once, with no work and an idle node's wait, so that it does not
            # add a write transaction to the queue it waited in; syncs that carry results,
            # renewals or hand-backs always go through. Without this, an overloaded coordinator
            # works on syncs whose nodes have timed out and retried (a metastable overload:
            # bench/fleet.py at 10,000 devices with work queued, docs/benchmarks.md "Fleet").
            metrics.shed.inc()
            timing = pace.answer(work_waiting=False, was_busy=False)
            return SyncOut(
                acked=[],
                rejected=[],
                lost=[],
                tasks=[],
                lease_seconds=timing.lease_seconds,
                next_sync_s=timing.next_sync_s,
                pace_s=timing.pace_s,
            )
        return _sync(request, node_id, req, leaving)

    def _sync(request: Request, node_id: str, req: SyncIn, leaving: bool) -> SyncOut:
        req = screen_serve_url(request, node_id, req)  # its chunk server, checked (cdn/audit.py)
        # A report that parses but whose bytes fail their checks is rejected alone, with its
        # reason: the node's other results, renewals and lease requests go on.
        refused: list[dict[str, Any]] = []
        kept: list[TaskReport] = []
        for rep in req.results:
            try:
                for v in [rep.value, *rep.outputs.values()]:
                    if v is not None:
                        _check_value(v, uploaded=True)
            except HTTPException as e:
                refused.append({"task_id": rep.task_id, "reason": str(e.detail)})
            else:
                kept.append(rep)
        if refused:
            req = req.model_copy(update={"results": kept})
        host = request.client.host if request.client else None
        now = time.time()
        out = store.sync(node_id, req, now, leaving=leaving, client_host=host)
        if out.acked:
            results.notify()
        metrics.leased.inc(len(out.tasks))
        metrics.reported.inc(len(out.acked))
        # When to come back: idle syncs spread within what the budget leaves after the busy
        # ones, and every wait stretched while syncs keep this process over its target load.
        timing = pace.answer(
            work_waiting=store.work_pending(now),
            was_busy=bool(req.results or req.renew or out.tasks),
        )
        agent = agent_offers.offer(node_id, req.agent_version, now)  # agent roll-outs
        return SyncOut(
            acked=out.acked,
            rejected=[*refused, *out.rejected],
            lost=out.lost,
            tasks=[_signed(t) for t in out.tasks],
            lease_seconds=timing.lease_seconds,
            store=out.store,  # type: ignore[arg-type]
            drop=out.drop,
            next_sync_s=timing.next_sync_s,
            pace_s=timing.pace_s,
            agent=agent,
        )

    @v1.post(
        "/nodes/me/tasks/{task_id}/result",
        tags=["nodes"],
        responses={409: {"model": Problem, "description": "This node does not hold the task"}},
    )
    def report_result(task_id: TaskId, rep: TaskReport, who: Principal = node) -> ResultAcked:
        """Report one task's result (the batch path is /v1/nodes/me/sync); 409 when this node
        never held the task."""
        if rep.task_id != task_id:
            raise HTTPException(422, f"task_id {rep.task_id} in the body is not {task_id}")
        for v in [rep.value, *rep.outputs.values()]:
            if v is not None:
                _check_value(v, uploaded=True)
        out = store.sync(who.id, SyncIn(results=[rep]), time.time())
        if out.rejected:
            raise HTTPException(409, f"this node does not hold task {task_id}")
        results.notify()
        metrics.reported.inc(1)
        return ResultAcked(task_id=task_id, acked=True)

    def _signed(lease: dict[str, Any]) -> TaskLease:
        """The lease as it goes on the wire, signed over exactly those values.

        The store's dicts may omit defaults (`data: null`); validating first makes the signed
        form the one the node parses.
        """
        spec = TaskLease.model_validate(lease)
        spec.signature = sign_lease(signing_key, spec.model_dump(mode="json"))
        return spec

    @v1.get("/nodes", tags=["nodes"], dependencies=[caller(auth, "customer", "admin")])
    def list_nodes() -> NodeList:
        return NodeList(nodes=store.list_nodes(time.time()))  # type: ignore[arg-type]

    def _check_value(v: Value, uploaded: bool = False) -> None:
        raw = None
        if v.data is not None:
            try:
                raw = base64.b64decode(v.data, validate=True)
            except ValueError:
                raise HTTPException(422, f"value {v.sha[:12]}…: data is not base64") from None
            if sha256_hex(raw) != v.sha or len(raw) != v.size:
                raise HTTPException(
                    422, f"value {v.sha[:12]}…: inline bytes do not match their SHA-256"
                )
        elif uploaded and not blobs.has(v.sha):
            raise HTTPException(
                422, f"value {v.sha[:12]}… is not uploaded: PUT it to /v1/blobs first"
            )

    app.include_router(v1)

    def _before_scrape() -> None:
        metrics.pace_factor.set(pace.factor)

    build_metrics_routes(app, store, auth, metrics, _before_scrape)  # and /v1/metrics-keys
    build_job_routes(app, store, auth, blobs, results.notify)  # task cancel and logs
    build_ledger_routes(app, store, auth)
    build_owner_routes(app, store, auth, public_key)
    build_cdn_routes(app, store, auth, blobs, signing_key)
    build_image_routes(app, store, auth, blobs)
    agent_offers = build_rollout_routes(app, store, auth, blobs, signing_key)  # docs/rollouts.md


async def _arrival() -> float:
    """When the request was parsed, on the event loop: the sync handler runs later, in a
    worker thread, and the difference is how long it queued for one."""
    return time.monotonic()


def _only_asks(req: SyncIn, leaving: bool) -> bool:
    """A sync that carries nothing to keep: no results, renewals, hand-backs or CDN reports."""
    return not (
        leaving
        or req.serve_url is not None
        or req.results
        or req.renew
        or req.release
        or req.stored
        or req.dropped
        or req.bad
        or req.refused
        or req.served
        or req.envs is not None
        or req.env_platform is not None
    )


def _check_sha(sha: str) -> None:
    if not is_sha256(sha):
        raise HTTPException(400, f"{sha[:80]!r} is not a SHA-256 (64 lowercase hex digits)")
