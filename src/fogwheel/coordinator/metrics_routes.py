"""GET /metrics, for Prometheus, and the operator's scrape-only keys under /v1/metrics-keys.

/metrics takes the admin key or a metrics key (`fogwheel keys create --role metrics`), which
reads it and nothing else: every other route answers a metrics key 403 (coordinator/auth.py),
so a Prometheus server never holds a key that can change anything. The format follows the
scraper's Accept header: `application/openmetrics-text` gets OpenMetrics 1.0, anything else
the Prometheus text format 0.0.4 (prometheus-client's `choose_encoder`; a header it cannot
read gets the text format, never a 500).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Path, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE

from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.identity import caller
from fogwheel.coordinator.metrics import Metrics
from fogwheel.protocol import Model, Name, Problem
from fogwheel.store import Store
from fogwheel.store.metrics_keys import create_metrics_key, list_metrics_keys, revoke_metrics_key

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such metrics key"},
    422: {"model": Problem, "description": "Body or parameters of the wrong shape"},
}
KeyId = Annotated[str, Path(pattern=r"^m-[0-9a-f]{1,32}$", description="a metrics key's id")]


class MetricsKeyIn(Model):
    name: Name = "prometheus"


class MetricsKeyCreated(Model):
    """A new scrape-only key, shown once: only its hash is kept."""

    key_id: str
    name: str
    metrics_key: str


class MetricsKeyOut(Model):
    id: str
    name: str
    created_at: float


class MetricsKeyList(Model):
    keys: list[MetricsKeyOut]


class MetricsKeyRevoked(Model):
    id: str
    revoked: bool


def exposition(registry: Any, accept: str) -> tuple[bytes, str]:
    """The registry in the format `accept` asks for: (body, content type)."""
    try:
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type
    except Exception:  # an Accept header prometheus-client cannot read: the text format
        return generate_latest(registry), CONTENT_TYPE_LATEST


def build_metrics_routes(
    app: FastAPI, store: Store, auth: Authenticator, metrics: Metrics, before: Callable[[], None]
) -> None:
    """Add /metrics (`before` runs first: it sets the gauges the routes own) and the keys."""
    admin = caller(auth, "admin")

    @app.get(
        "/metrics",
        tags=["meta"],
        response_class=Response,
        dependencies=[caller(auth, "admin", "metrics")],
        responses={
            401: {"model": Problem, "description": "No key, or an unknown or revoked one"},
            403: {"model": Problem, "description": "A key that may not read metrics"},
            200: {
                "content": {
                    CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}},
                    OPENMETRICS_TYPE.split(";")[0]: {"schema": {"type": "string"}},
                },
                "description": "The Prometheus text format, or OpenMetrics 1.0 when the "
                "Accept header asks for application/openmetrics-text",
            },
        },
    )
    def prometheus(request: Request) -> Response:
        """Prometheus metrics (docs/metrics.md): scrape with a metrics key (`fogwheel keys
        create --role metrics`) or the admin key as `Authorization: Bearer KEY`."""
        before()
        metrics.refresh()
        body, content_type = exposition(metrics.registry, request.headers.get("accept", ""))
        return Response(body, headers={"content-type": content_type})

    v1 = APIRouter(prefix="/v1", responses=ERRORS, tags=["admin"], dependencies=[admin])

    @v1.post("/metrics-keys", status_code=201)
    def create_key(body: MetricsKeyIn) -> MetricsKeyCreated:
        """Operator: a scrape-only key for Prometheus (shown once): it reads /metrics and
        gets 403 everywhere else."""
        key_id, key = create_metrics_key(store, body.name, time.time())
        return MetricsKeyCreated(key_id=key_id, name=body.name, metrics_key=key)

    @v1.get("/metrics-keys")
    def list_keys() -> MetricsKeyList:
        """Operator: every live metrics key (ids and names, never the keys)."""
        return MetricsKeyList(keys=[MetricsKeyOut(**k) for k in list_metrics_keys(store)])

    @v1.post("/metrics-keys/{key_id}/revoke")
    def revoke_key(key_id: KeyId) -> MetricsKeyRevoked:
        """Operator: the metrics key stops working now (401)."""
        if not revoke_metrics_key(store, key_id):
            raise HTTPException(404, f"no metrics key {key_id}: GET /v1/metrics-keys lists them")
        auth.forget()
        return MetricsKeyRevoked(id=key_id, revoked=True)

    app.include_router(v1)
