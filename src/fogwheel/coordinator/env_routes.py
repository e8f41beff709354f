"""Where a job's Python environment stands on its devices (docs/envs.md).

    GET /v1/jobs/{job_id}/env   how many devices run the job's tasks, and how many of them are
                                still preparing (downloading and installing) its environment
    GET /v1/platforms           the platforms the live devices' Pythons install wheels for:
                                what the SDK resolves an environment for by default

The SDK's `Client.env_status(job_id)` reads it, and `fogwheel call` shows "preparing
environment on N devices" from it while a device builds the environment for the first time.
Another customer's job is a 404, as on every job route.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Path
from pydantic import Field

from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.identity import caller
from fogwheel.core import envlock
from fogwheel.protocol import SQL_INT_MAX, Model, Problem
from fogwheel.store import Principal, Store
from fogwheel.store.envs import env_progress, fleet_platforms

JobId = Annotated[int, Path(ge=0, le=SQL_INT_MAX)]
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such job (or not yours)"},
}


class EnvProgress(Model):
    env: str | None = Field(description="the job's environment lock, if it names one")
    nodes: int = Field(description="devices that hold a task of the job now")
    preparing: int = Field(
        description="of those, devices that have not yet said they hold the environment built"
    )


class FleetPlatform(Model):
    platform: str = Field(description="as nodes say it, e.g. cp311-x86_64-glibc_2_36")
    python: str = Field(description='the CPython version, e.g. "3.11"')
    arch: str = Field(description="the machine, e.g. x86_64, aarch64")
    tags: list[str] = Field(description="the wheel platform tags it installs, preferred first")
    nodes: int = Field(description="live devices on it")


class FleetPlatforms(Model):
    platforms: list[FleetPlatform]


def build_env_routes(app: FastAPI | APIRouter, store: Store, auth: Authenticator) -> None:
    """Add GET /v1/jobs/{job_id}/env and GET /v1/platforms to `app`."""
    v1 = APIRouter(prefix="/v1", responses=ERRORS, tags=["jobs"])
    customer = caller(auth, "customer")
    anyone = caller(auth, "customer", "admin")

    @v1.get("/platforms", tags=["nodes"])
    def platforms(who: Principal = anyone) -> FleetPlatforms:
        """The platforms of the live fleet's Pythons, most devices first (docs/envs.md)."""
        with store.read() as c:
            found = fleet_platforms(c, time.time() - store.gone_after_s)
        return FleetPlatforms(
            platforms=[
                FleetPlatform(
                    platform=p.describe(),
                    python=p.python,
                    arch=p.arch,
                    tags=envlock.platform_tags(p),
                    nodes=n,
                )
                for p, n in found
            ]
        )

    @v1.get("/jobs/{job_id}/env")
    def job_env(job_id: JobId, who: Principal = customer) -> EnvProgress:
        """How far the job's Python environment is on the devices running its tasks."""
        with store.read() as c:
            found = env_progress(c, who.id, job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return EnvProgress(**found)

    app.include_router(v1)
