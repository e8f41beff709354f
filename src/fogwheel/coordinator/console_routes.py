"""The /v1 routes the web console reads that no other route answered (docs/console.md).

    GET /v1/operator/fleet                   every device: state, owner, resources, work, pay
    GET /v1/operator/jobs                    the newest jobs of every customer
    GET /v1/operator/jobs/{job_id}/progress  a job's tasks by state and its throughput
    GET /v1/operator/jobs/{job_id}/tasks     a page of any job's tasks
    GET /v1/operator/tasks/{task_id}         any task: its attempts and why each was placed
    GET /v1/jobs/{job_id}/progress           the same progress, for the job's customer
    GET /v1/owners/me/fleet                  an owner's own devices, as the fleet shows them
    GET /v1/flywheel                         the fog's figures over time (core/flywheel.py)

The console is a page of JavaScript that calls these and the API's other routes with the
key it was given, so every view is exactly what that key may read here: the operator
routes take the admin key only, the customer's route answers 404 for another customer's
job (as every job route does), and an owner's fleet holds its own devices only.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Path, Query
from pydantic import Field

from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.identity import caller
from fogwheel.protocol import SQL_INT_MAX, JobOut, Model, NodeOut, Problem, TaskList, TaskOut
from fogwheel.store import Principal, Store

JobId = Annotated[int, Path(ge=0, le=SQL_INT_MAX)]
TaskId = Annotated[int, Path(ge=0, le=SQL_INT_MAX)]
Limit = Annotated[int, Query(ge=1, le=1000, description="devices on the page")]
Offset = Annotated[int, Query(ge=0, le=SQL_INT_MAX)]
ERRORS: dict[int | str, dict[str, Any]] = {  # 401 and 403: coordinator/openapi.py
    404: {"model": Problem, "description": "No such job or task (or not yours)"},
    422: {"model": Problem, "description": "Parameters of the wrong shape"},
}


class ConsoleDevice(NodeOut):
    """A device as the console shows it: the node listing's fields, and when it joined, its
    network and measured uplink, the tasks it holds now per job, and what it earned."""

    joined_at: float | None
    network: str | None = Field(description="the /24 it connects from; null when unknown")
    uplink_bps: float | None = Field(description="measured by fetching clients; null: never")
    work: dict[str, int] = Field(description="job id -> tasks of it this device holds now")
    earned: int = Field(description="micro-credits in the device's node:<id> account")


class FleetOut(Model):
    """A page of devices, oldest first, with the whole fleet's counts by state."""

    devices: list[ConsoleDevice]
    total: int
    by_state: dict[str, int]


class OperatorJob(JobOut):
    """A job as the operator sees it: whose it is."""

    customer_id: str
    customer_name: str


class OperatorJobList(Model):
    jobs: list[OperatorJob]


class ThroughputBucket(Model):
    at: float = Field(description="when the span starts (epoch seconds)")
    count: int = Field(description="tasks finished done in the span")
    per_s: float


class JobProgress(Model):
    """A job's tasks by state (its tasks, not the replicas that checked them) and its
    throughput in equal spans from its creation to now (or to its last finish)."""

    job_id: int
    states: dict[str, int]
    throughput: list[ThroughputBucket]


class FlywheelSample(Model):
    """The fog at one moment (core/flywheel.py): counters (`tasks_done`, `credits_to_owners`,
    `bytes_served`) only grow, so their rates are the differences between samples."""

    slot: int
    at: float
    devices_online: int
    devices_known: int
    cores_online: int
    disk_mb_online: int
    uplink_bps_online: float
    tasks_running: int
    slots_online: int
    utilisation: float
    tasks_done: int
    credits_to_owners: int
    bytes_served: int
    per_cpu_hour: int = Field(description="micro-credits")
    per_gb_served: int = Field(description="micro-credits")


class FlywheelOut(Model):
    """Samples after `since`, oldest first; one every `period_s` seconds."""

    period_s: float
    samples: list[FlywheelSample]


def build_console_routes(
    app: FastAPI | APIRouter, store: Store, auth: Authenticator, period_s: float
) -> None:
    """Add the console's /v1 routes to `app`; `period_s` is the sampler's period."""
    v1 = APIRouter(prefix="/v1", responses=ERRORS, tags=["console"])
    admin, owner, customer = caller(auth, "admin"), caller(auth, "owner"), caller(auth, "customer")
    anyone_signed_in = caller(auth, "admin", "customer", "owner")

    def fleet(owner_id: str | None, limit: int, offset: int) -> FleetOut:
        devices = store.list_nodes(time.time())
        if owner_id is not None:
            devices = [d for d in devices if d["owner_id"] == owner_id]
        by_state: dict[str, int] = {}
        for d in devices:
            by_state[d["state"]] = by_state.get(d["state"], 0) + 1
        page = devices[offset : offset + limit]
        extras = store.fleet_extras([d["id"] for d in page])
        return FleetOut(
            devices=[ConsoleDevice(**d, **extras[d["id"]]) for d in page],
            total=len(devices),
            by_state=by_state,
        )

    @v1.get("/operator/fleet", dependencies=[admin])
    def operator_fleet(limit: Limit = 200, offset: Offset = 0) -> FleetOut:
        """Operator: a page of every device, oldest first, with counts by state."""
        return fleet(None, limit, offset)

    @v1.get("/owners/me/fleet")
    def owner_fleet(limit: Limit = 200, offset: Offset = 0, who: Principal = owner) -> FleetOut:
        """Owner: your devices as the fleet shows them: state, work now and earnings."""
        return fleet(who.id, limit, offset)

    @v1.get("/operator/jobs", dependencies=[admin])
    def operator_jobs(limit: Annotated[int, Query(ge=1, le=200)] = 50) -> OperatorJobList:
        """Operator: the newest jobs of every customer, with whose they are."""
        out = []
        for job_id, customer_id, name in store.all_jobs(limit):
            job = store.get_job(customer_id, job_id)
            if job is not None:
                out.append(OperatorJob(**job, customer_id=customer_id, customer_name=name))
        return OperatorJobList(jobs=out)

    def progress(customer_id: str | None, job_id: int) -> JobProgress:
        found = None
        if customer_id is not None:
            found = store.job_progress(customer_id, job_id, time.time())
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return JobProgress.model_validate(found)

    @v1.get("/operator/jobs/{job_id}/progress", dependencies=[admin])
    def operator_progress(job_id: JobId) -> JobProgress:
        """Operator: any job's tasks by state and its throughput."""
        return progress(store.job_customer(job_id), job_id)

    @v1.get("/jobs/{job_id}/progress", tags=["jobs"])
    def job_progress(job_id: JobId, who: Principal = customer) -> JobProgress:
        """Your job's tasks by state (its tasks, not their checks) and its throughput: tasks
        finished in each of 30 equal spans since it was submitted."""
        return progress(who.id, job_id)

    @v1.get("/operator/jobs/{job_id}/tasks", dependencies=[admin])
    def operator_tasks(
        job_id: JobId,
        state: Annotated[
            str | None, Query(pattern="^(pending|leased|done|failed|cancelled)$")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Offset = 0,
    ) -> TaskList:
        """Operator: a page of any job's tasks, each with its attempts."""
        customer_id = store.job_customer(job_id)
        rows = (
            None
            if customer_id is None
            else store.list_tasks(customer_id, job_id, state, limit, offset, now=time.time())
        )
        if rows is None:
            raise HTTPException(404, f"no job {job_id}")
        return TaskList(tasks=[TaskOut(**t) for t in rows])

    @v1.get("/operator/tasks/{task_id}", dependencies=[admin])
    def operator_task(task_id: TaskId) -> TaskOut:
        """Operator: any task, with every attempt and the sentence that placed it."""
        customer_id = store.task_customer(task_id)
        t = None if customer_id is None else store.get_task(customer_id, task_id)
        if t is None:
            raise HTTPException(404, f"no task {task_id}")
        return TaskOut(**t)

    @v1.get("/flywheel", dependencies=[anyone_signed_in])
    def flywheel_history(
        since: Annotated[
            float, Query(ge=0, le=1e11, description="only samples after this (epoch s)")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000, description="the newest this many")] = 720,
    ) -> FlywheelOut:
        """The fog's figures over time: devices online, capacity, utilisation, work done,
        credits paid to owners, bytes served and the price; fleet-wide totals only, so any
        signed-in key may read them."""
        rows = store.flywheel_history(since, limit)
        return FlywheelOut(period_s=period_s, samples=[FlywheelSample(**r) for r in rows])

    app.include_router(v1)
