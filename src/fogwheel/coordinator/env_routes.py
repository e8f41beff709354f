"""Where a job's Python environment stands on its devices (docs/envs.md).

    GET /v1/jobs/{job_id}/env   how many devices run the job's tasks, and how many of them are
                                still preparing (downloading and installing) its environment

The SDK's `Client.env_status(job_id)` reads it, and `fogwheel call` shows "preparing
environment on N devices" from it while a device builds the environment for the first time.
Another customer's job is a 404, as on every job route.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Path
from pydantic import Field

from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.identity import caller
from fogwheel.protocol import SQL_INT_MAX, Model, Problem
from fogwheel.store import Principal, Store
from fogwheel.store.envs import env_progress

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


def build_env_routes(app: FastAPI | APIRouter, store: Store, auth: Authenticator) -> None:
    """Add GET /v1/jobs/{job_id}/env to `app`."""
    v1 = APIRouter(prefix="/v1", responses=ERRORS, tags=["jobs"])
    customer = caller(auth, "customer")

    @v1.get("/jobs/{job_id}/env")
    def job_env(job_id: JobId, who: Principal = customer) -> EnvProgress:
        """How far the job's Python environment is on the devices running its tasks."""
        with store.read() as c:
            found = env_progress(c, who.id, job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return EnvProgress(**found)

    app.include_router(v1)
