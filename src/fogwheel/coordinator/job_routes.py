"""Routes that stop one task and show what a task left behind (its logs).

    POST /v1/jobs/{job_id}/tasks/{index}/cancel   cancel one task (its replicas too)
    POST /v1/jobs/{job_id}/tasks/cancel           cancel several tasks of a job at once
    GET  /v1/jobs/{job_id}/tasks/{index}/logs     stdout/stderr tails or traceback, attempts

Both answer 404 for another customer's job, as every job route does. The logs are bytes a node
reported: they are shown only after their SHA-256 matched at intake, decoded as bounded JSON
(`results.command_info`), and never interpreted.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Path
from pydantic import Field

from fogwheel import results
from fogwheel.blobs import FileBlobStore, sha256_hex
from fogwheel.blobs.store import CorruptBlob
from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.identity import caller
from fogwheel.errors import IntegrityError
from fogwheel.protocol import SQL_INT_MAX, AttemptOut, ErrorInfo, Model, Problem
from fogwheel.store import Principal, Store

# The node keeps 64 KiB of each stream (node/slots.py: OUTPUT_TAIL); JSON escaping at most
# sextuples a byte. A bigger "command result" is not one a node of ours wrote.
MAX_LOG_BYTES = 1 << 20

JobId = Annotated[int, Path(ge=0, le=SQL_INT_MAX)]
Index = Annotated[int, Path(ge=0, le=SQL_INT_MAX, description="the task's index in its job")]

ERRORS: dict[int | str, dict[str, Any]] = {  # 401 and 403: coordinator/openapi.py
    404: {"model": Problem, "description": "No such job or task (or not yours)"},
}


class TaskCancelOut(Model):
    """`cancelled`: the task was still open and is now cancelled; False when it had already
    finished (`state` says how), in which case its result stands."""

    job_id: int
    index: int
    state: str
    cancelled: bool


class TasksCancelIn(Model):
    """The indexes of the tasks of one job to cancel (a `concurrent.futures` shutdown's)."""

    indexes: list[Annotated[int, Field(ge=0, le=SQL_INT_MAX)]] = Field(
        min_length=1, max_length=10_000
    )


class TasksCancelOut(Model):
    """`cancelled`: the indexes that were still open and are now cancelled; the others had
    finished already (their results stand) or were cancelled before."""

    job_id: int
    cancelled: list[int]


class TaskLogsOut(Model):
    """What one task left behind. Command tasks: exit status and the tails of stdout and
    stderr (64 KiB each). Python tasks: the error with the remote traceback. `attempts`: every
    attempt at the task (replicas and backup copies included): node, outcome and why it went
    there. `note` says why something is missing (still running, too large, unreadable)."""

    job_id: int
    index: int
    task_id: int
    kind: str
    state: str
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: ErrorInfo | None = None
    attempts: list[AttemptOut]
    note: str | None = None


def build_job_routes(
    app: FastAPI | APIRouter,
    store: Store,
    auth: Authenticator,
    blobs: FileBlobStore,
    notify: Callable[[], None],
) -> None:
    """Add the task cancel and logs routes to `app`; `notify` wakes result long-polls."""
    v1 = APIRouter(prefix="/v1", responses=ERRORS, tags=["jobs"])
    customer = caller(auth, "customer")  # every route takes a customer key

    @v1.post("/jobs/{job_id}/tasks/{index}/cancel")
    def cancel_task(job_id: JobId, index: Index, who: Principal = customer) -> TaskCancelOut:
        """Cancel one task: it will not be leased again; a node running it stops it at its
        next sync and is not paid for it; the customer is not charged for it."""
        out = store.cancel_task(who.id, job_id, index, time.time())
        if out is None:
            raise HTTPException(404, f"no task {index} in job {job_id}")
        if out["cancelled"]:
            notify()
        return TaskCancelOut(**out)

    @v1.post("/jobs/{job_id}/tasks/cancel")
    def cancel_tasks(
        job_id: JobId, body: TasksCancelIn, who: Principal = customer
    ) -> TasksCancelOut:
        """Cancel several tasks of one job at once, each as the one-task cancel does."""
        done = store.cancel_tasks(who.id, job_id, body.indexes, time.time())
        if done is None:
            raise HTTPException(404, f"no job {job_id}")
        if done:
            notify()
        return TasksCancelOut(job_id=job_id, cancelled=done)

    @v1.get("/jobs/{job_id}/tasks/{index}/logs")
    def task_logs(job_id: JobId, index: Index, who: Principal = customer) -> TaskLogsOut:
        """One task's stdout/stderr tails (command tasks) or traceback (Python tasks), and the
        node and outcome of each attempt."""
        t = store.task_logs(who.id, job_id, index)
        if t is None:
            raise HTTPException(404, f"no task {index} in job {job_id}")
        out: dict[str, Any] = {
            "job_id": job_id,
            "index": index,
            "task_id": t["id"],
            "kind": t["kind"],
            "state": t["state"],
            "error": t["error"],
            "attempts": t["history"],
        }
        value = (t["result"] or {}).get("value")
        if t["kind"] == "command" and value:
            out.update(_command_output(blobs, value))
        elif t["state"] in ("pending", "leased", "verifying"):
            out["note"] = f"task {index} is {t['state']}: its output comes with its result"
        return TaskLogsOut(**out)

    app.include_router(v1)


def _command_output(blobs: FileBlobStore, value: dict[str, Any]) -> dict[str, Any]:
    """A command's exit status and output tails from its stored result, or a note why not."""
    size = int(value.get("size") or 0)
    if size > MAX_LOG_BYTES:
        return {"note": f"the command's output record is {size} bytes, over {MAX_LOG_BYTES}"}
    try:
        if value.get("data") is not None:
            raw = base64.b64decode(value["data"], validate=True)
            if sha256_hex(raw) != value["sha"]:
                raise IntegrityError("the command's output does not match its SHA-256")
        else:
            with blobs.open_verified(value["sha"]) as f:
                raw = f.read(MAX_LOG_BYTES + 1)
        info = results.command_info(raw)
    except KeyError:
        return {"note": "the command's output is no longer stored"}
    except (CorruptBlob, IntegrityError, binascii.Error, ValueError) as e:
        return {"note": f"the command's output is unreadable: {e}"}
    return info
