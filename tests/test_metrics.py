"""/metrics on a real fog: every family present and moving with real work, latency per route
template, OpenMetrics negotiation, and a scrape-only key that reads /metrics and nothing else.

One coordinator and three real node agents (one of them lies: FOGWHEEL_FAULT=wrong-results)
run a job; a hostile node leases a task and never reports, so a lease expires.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families

from fogwheel import Client
from fogwheel.localfog import LocalFog
from tests.adversarial.hostile import HostileNode

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def cube(x: int) -> int:
    busy = sum(k * k for k in range(20_000))
    return x * x * x + busy - busy


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FOGWHEEL_METRICS_MAX_AGE_S", "0")  # every scrape reads the database
        with LocalFog(0, lease_seconds=3.0, workdir=tmp_path_factory.mktemp("metrics")) as fog:
            yield fog


@pytest.fixture(scope="module")
def admin(fog: LocalFog) -> dict[str, str]:
    return {"authorization": f"Bearer {fog.admin_key}"}


def scrape(fog: LocalFog, headers: dict[str, str]) -> httpx.Response:
    r = httpx.get(f"{fog.url}/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def cli(fog: LocalFog, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FOGWHEEL_COORDINATOR": fog.url, "FOGWHEEL_ADMIN_KEY": fog.admin_key}
    return subprocess.run(
        [sys.executable, "-m", "fogwheel", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def worked(fog: LocalFog, admin: dict[str, str]) -> tuple[Samples, Samples]:
    """Scrapes before and after a job on three nodes (one lying) and an expired lease."""
    before = samples(scrape(fog, admin).text)
    # before any real node joins, a hostile one leases a task and never reports: it expires
    body = {"kind": "command", "tasks": [{"command": ["true"]}], "replicas": 1}
    r = httpx.post(f"{fog.url}/v1/jobs", json=body, headers=fog.headers, timeout=30)
    assert r.status_code == 201, r.text
    expired_job = r.json()["id"]
    with HostileNode(fog.url, fog.join_string) as node:
        assert node.join().status_code == 201
        assert node.lease(want=1), "the hostile node got no lease"
    honest = [fog.add_node() for _ in range(2)]
    fog.add_node(env={"FOGWHEEL_FAULT": "wrong-results"})
    fog.wait_for_nodes(len(honest) + 1)
    with Client(fog.url, fog.api_key) as client:
        futures = client.submit_many(cube, [((i,), {}) for i in range(40)])
        assert [f.result(timeout=240) for f in futures] == [i**3 for i in range(40)]
        job_id = futures[0].job_id
    assert httpx.get(f"{fog.url}/v1/jobs/{job_id}", headers=fog.headers, timeout=10).is_success
    httpx.get(f"{fog.url}/no/such/path/12345", headers=fog.headers, timeout=10)
    # the hostile node's task expires, goes back to the queue and is run by an honest node;
    # the scrape waits for both, not just for the expiry (CI once scraped in between: 40 done)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = httpx.get(f"{fog.url}/v1/jobs/{expired_job}", headers=fog.headers, timeout=10)
        if state.json().get("state") == "done":
            break
        time.sleep(0.5)
    after = samples(scrape(fog, admin).text)
    while value(after, "fogwheel_leases_expired_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
        after = samples(scrape(fog, admin).text)
    return before, after


def test_the_counters_and_gauges_move_with_real_work(worked: tuple[Samples, Samples]) -> None:
    before, after = worked

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("fogwheel_tasks_submitted_total") == 41  # 40 tasks and the hostile one's
    # customers' tasks, each counted once (copies apart); the hostile node's expired task
    # was run again by an honest one
    assert moved("fogwheel_tasks", state="done") == 41
    # every task leased at least once, and new nodes' results are checked by replicas
    assert moved("fogwheel_tasks_leased_total") > 41
    assert moved("fogwheel_task_reports_acked_total") >= 40
    assert moved("fogwheel_leases_expired_total") >= 1
    assert moved("fogwheel_verification_disagreements_total") >= 1  # the liar was outvoted
    assert moved("fogwheel_quarantines_total") == 1
    assert moved("fogwheel_nodes_quarantined") == 1
    charged = moved("fogwheel_ledger_credits_total", account="customer", side="debit")
    paid = moved("fogwheel_ledger_credits_total", account="node", side="credit")
    fees = moved("fogwheel_ledger_credits_total", account="platform", side="credit")
    assert charged > 0 and paid > 0 and abs(charged - paid - fees) < 1e-6  # the books balance
    assert sum(v for (n, labels), v in after.items() if n == "fogwheel_task_copies") > 0
    assert value(after, "fogwheel_nodes", state="up") >= 2
    assert value(after, "fogwheel_nodes", state="quarantined") == 1
    assert value(after, "fogwheel_node_cores", state="up") >= 2
    for family in ("fogwheel_cdn_served_bytes_total", "fogwheel_cdn_repair_bytes_total"):
        assert (family, frozenset()) in after  # present (at 0: this fog served no content)
    assert value(after, "process_cpu_seconds_total") > 0
    # where a sync's time goes inside the process: its queue, the write lock, the transaction
    assert moved("fogwheel_sync_queue_seconds_count") > 40
    assert moved("fogwheel_store_lock_wait_seconds_count") > 40
    assert moved("fogwheel_store_transaction_seconds_count") > 40
    waited = moved("fogwheel_store_transaction_seconds_sum")
    assert 0 < waited < 1_000  # seconds: real durations, not nanoseconds or clock readings


def test_latency_is_a_histogram_per_route_template_and_status_class(
    worked: tuple[Samples, Samples],
) -> None:
    _, after = worked
    count = "fogwheel_http_request_duration_seconds_count"
    routes = {dict(labels)["route"] for name, labels in after if name == count}
    assert value(after, count, method="POST", route="/v1/nodes/me/sync", status="2xx") > 10
    assert value(after, count, method="GET", route="/v1/jobs/{job_id}", status="2xx") >= 1
    assert value(after, count, method="GET", route="unmatched", status="4xx") >= 1
    # templates only: no raw id or path ever becomes a label
    assert not [r for r in routes if any(seg.isdigit() for seg in r.split("/"))], routes
    assert all(r == "unmatched" or r.startswith(("/v1/", "/metrics")) for r in routes), routes
    buckets = [
        (dict(labels)["le"], v)
        for (name, labels), v in after.items()
        if name == "fogwheel_http_request_duration_seconds_bucket"
        and dict(labels)["route"] == "/v1/nodes/me/sync"
        and dict(labels)["status"] == "2xx"
    ]
    assert len(buckets) == 16  # 15 bounds and +Inf
    assert dict(buckets)["+Inf"] == value(
        after, count, method="POST", route="/v1/nodes/me/sync", status="2xx"
    )


def test_openmetrics_is_served_to_who_asks_for_it_and_parses(
    fog: LocalFog, admin: dict[str, str], worked: tuple[Samples, Samples]
) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    r = scrape(fog, {**admin, "accept": accept})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    families = {f.name: f for f in om_parser.text_string_to_metric_families(r.text)}
    assert families["fogwheel_tasks_leased"].type == "counter"
    assert families["fogwheel_http_request_duration_seconds"].type == "histogram"
    assert families["fogwheel_nodes"].type == "gauge"
    plain = scrape(fog, admin)
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    # an Accept header prometheus-client cannot read gets the text format, not a 500
    odd = scrape(fog, {**admin, "accept": "application/openmetrics-text; version=x.y"})
    assert odd.headers["content-type"].startswith(("text/plain", "application/openmetrics"))


def test_promtool_finds_the_exposition_clean(
    fog: LocalFog, admin: dict[str, str], worked: tuple[Samples, Samples]
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is absent (Debian's prometheus package; .ci/run installs it)")
    text = scrape(fog, admin).text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""


def test_a_metrics_key_reads_metrics_and_is_refused_everywhere_else(
    fog: LocalFog, admin: dict[str, str]
) -> None:
    made = cli(fog, "keys", "create", "--role", "metrics", "--name", "prom")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("fwm_") and "reads /metrics only" in made.stderr
    scraper = {"authorization": f"Bearer {key}"}
    assert "fogwheel_nodes" in scrape(fog, scraper).text
    for method, path in [
        ("GET", "/v1/jobs"),
        ("GET", "/v1/whoami"),
        ("GET", "/v1/nodes"),
        ("GET", "/v1/ledger"),
        ("POST", "/v1/metrics-keys"),
    ]:
        r = httpx.request(method, f"{fog.url}{path}", headers=scraper, json={}, timeout=10)
        assert r.status_code == 403, (path, r.status_code, r.text)
        assert "a metrics key reads /metrics and nothing else" in r.json()["error"]
    assert httpx.get(f"{fog.url}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{fog.url}/metrics", headers=fog.headers, timeout=10).status_code == 403
    # kept as its hash alone, listed without it
    listed = httpx.get(f"{fog.url}/v1/metrics-keys", headers=admin, timeout=10).json()["keys"]
    [mine] = [k for k in listed if k["name"] == "prom"]
    assert key not in str(listed)
    db = sqlite3.connect(fog.dir / "coordinator" / "fogwheel.db")
    rows = db.execute("SELECT secret_hash FROM principals WHERE id = ?", (mine["id"],)).fetchall()
    db.close()
    assert rows == [(hashlib.sha256(key.encode()).hexdigest(),)]
    revoked = cli(fog, "keys", "revoke", mine["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert httpx.get(f"{fog.url}/metrics", headers=scraper, timeout=10).status_code == 401


def _prometheus(tmp: Any, target: str, key_file: Any, port: int) -> subprocess.Popen[bytes]:
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: fogwheel\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
        f"    authorization: {{type: Bearer, credentials_file: '{key_file}'}}\n"
    )
    return subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=open(tmp / "prometheus.log", "wb"),  # the child keeps it
        stderr=subprocess.STDOUT,
    )


def test_a_real_prometheus_scrapes_with_the_metrics_key_from_a_file(
    fog: LocalFog, admin: dict[str, str], tmp_path: Any
) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is absent (Debian's prometheus package; .ci/run installs it)")
    r = httpx.post(f"{fog.url}/v1/metrics-keys", headers=admin, json={}, timeout=10)
    key_file = tmp_path / "fogwheel.key"
    key_file.write_text(r.json()["metrics_key"])
    key_file.chmod(0o600)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _prometheus(tmp_path, fog.url.removeprefix("http://"), key_file, port)
    try:
        deadline = time.monotonic() + 90
        found: list[Any] = []
        while time.monotonic() < deadline and not found:
            time.sleep(1)
            try:
                q = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query",
                    params={"query": 'fogwheel_nodes{state="up"}'},
                    timeout=5,
                )
            except httpx.TransportError:
                continue
            if q.status_code == 200:
                found = q.json()["data"]["result"]
        assert found, (tmp_path / "prometheus.log").read_text()[-3000:]
        assert found[0]["metric"]["job"] == "fogwheel"
        up = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up"}, timeout=5
        ).json()["data"]["result"]
        assert up and up[0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
