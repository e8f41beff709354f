"""The web console (docs/console.md) against a real coordinator with real node agents: the
/v1 routes behind it keep each key to its own data, and Debian's Chromium, driven by
Playwright, signs in as the operator, a customer and a device owner and sees what each may.

Names are attacker-controlled: a device, a customer and a job here are named with markup
that would run script if any view parsed it as HTML; the page must show it as text.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fogwheel.coordinator.console_pages import CSP, console_files
from fogwheel.localfog import LocalFog

XSS = '<img src=x onerror="window.__xss=1">x'  # a name that runs script if parsed as HTML
CHROMIUM = "/usr/bin/chromium"
CONSOLE_DIR = Path(__file__).parent.parent / "src/fogwheel/coordinator/console"
# where a run that makes the docs' pictures puts a copy of its screenshots
DOCS_IMG = os.environ.get("FOGWHEEL_CONSOLE_SCREENSHOTS")
ERRORS: dict[int, list[str]] = {}  # each page's script errors, by id(page)


def command_job(name: str, n: int, seconds: float) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "command",
        "replicas": 1,
        "tasks": [{"command": ["sleep", str(seconds)]} for _ in range(n)],
    }


class Fog:
    """The fog of this module and the keys of everyone in it."""

    def __init__(self, fog: LocalFog) -> None:
        self.fog = fog
        self.url = fog.url
        self.admin = fog.admin_key
        self.customer = fog.api_key
        made = self.post("/v1/customers", self.admin, params={"name": XSS}).json()
        self.bob, self.bob_id = made["api_key"], made["customer_id"]
        owner = self.post("/v1/owners", self.admin, json={"name": "alice"}).json()
        self.owner, self.owner_id = owner["owner_key"], owner["owner_id"]
        token = self.post("/v1/tokens", self.admin, json={"owner_id": self.owner_id}).json()
        fog.add_node("--name", XSS, env={"FOGWHEEL_JOIN_TOKEN": token["join_string"]})
        fog.wait_for_nodes(3)
        self.bob_job = self.post("/v1/jobs", self.bob, json=command_job("bob-secret-job", 2, 0.1))
        self.bob_job_id = self.bob_job.json()["id"]
        self.job_id = self.post("/v1/jobs", self.customer, json=command_job(XSS, 6, 0.1)).json()[
            "id"
        ]
        self.wait_done(self.customer, self.job_id)
        self.wait_done(self.bob, self.bob_job_id)

    def get(self, path: str, key: str | None, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.url + path, headers=headers, timeout=30, **kw)

    def post(self, path: str, key: str, **kw: Any) -> httpx.Response:
        res = httpx.post(
            self.url + path, headers={"authorization": f"Bearer {key}"}, timeout=30, **kw
        )
        assert res.status_code in (200, 201), res.text
        return res

    def wait_done(self, key: str, job_id: int, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{job_id}", key).json()
            if job["state"] != "running":
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fog]:
    workdir = tmp_path_factory.mktemp("console")
    with LocalFog(2, workdir=workdir, coordinator_args=["--sample-s", "1"]) as local:
        yield Fog(local)


# -- the page and its files ---------------------------------------------------------------


def test_the_console_is_served_at_the_root_with_a_strict_content_security_policy(
    fog: Fog,
) -> None:
    page = fog.get("/", None)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in re.findall(r'(?:src|href)="/console/([^"]+)"', page.text):
        assert fog.get(f"/console/{name}", None).status_code == 200, name
    assert fog.get("/docs", None).status_code == 200 and fog.get("/redoc", None).status_code == 200


@pytest.mark.parametrize("name", ["nothing.js", "app.py", ".hidden.js", "APP.JS"])
def test_a_file_outside_the_console_is_404_with_a_sentence(fog: Fog, name: str) -> None:
    res = fog.get(f"/console/{name}", None)
    assert res.status_code == 404 and "the console is at /" in res.json()["error"]


@pytest.mark.parametrize("path", ["/console/..%2Fconsole_pages.py", "/console/%2e%2e/app.py"])
def test_no_path_walks_out_of_the_console(fog: Fog, path: str) -> None:
    res = fog.get(path, None)
    assert res.status_code == 404 and "import" not in res.text


def test_every_script_imports_only_files_the_console_serves() -> None:
    served = console_files()
    for name, body in served.items():
        if name.endswith(".js"):
            for target in re.findall(r'from "\./([^"]+)"', body.decode()):
                assert target in served, f"{name} imports {target}, which is not served"


def test_no_script_of_the_console_parses_text_as_html() -> None:
    sinks = re.compile(
        r"\.innerHTML\s*=|\.outerHTML\s*=|insertAdjacentHTML|document\.write|\beval\(|new Function"
    )
    for path in CONSOLE_DIR.glob("*.js"):
        assert not sinks.search(path.read_text()), f"{path.name} writes HTML from text"


# -- the /v1 routes behind it: each key sees its own ------------------------------------------

OPERATOR_ONLY = [
    "/v1/operator/fleet",
    "/v1/operator/jobs",
    "/v1/operator/jobs/{job}/progress",
    "/v1/operator/jobs/{job}/tasks",
    "/v1/operator/tasks/{task}",
]


@pytest.mark.parametrize("path", OPERATOR_ONLY)
def test_the_operator_routes_take_the_admin_key_only(fog: Fog, path: str) -> None:
    task = fog.get(f"/v1/jobs/{fog.job_id}/tasks", fog.customer).json()["tasks"][0]["id"]
    concrete = path.format(job=fog.job_id, task=task)
    assert fog.get(concrete, None).status_code == 401
    for key in (fog.customer, fog.bob, fog.owner):
        res = fog.get(concrete, key)
        assert res.status_code == 403 and "admin keys" in res.json()["error"]
    assert fog.get(concrete, fog.admin).status_code == 200


def test_the_operator_sees_every_customers_jobs_and_whose_they_are(fog: Fog) -> None:
    jobs = {j["id"]: j for j in fog.get("/v1/operator/jobs", fog.admin).json()["jobs"]}
    assert jobs[fog.bob_job_id]["customer_id"] == fog.bob_id
    assert jobs[fog.bob_job_id]["customer_name"] == XSS  # data, as it was given
    assert jobs[fog.job_id]["name"] == XSS and jobs[fog.job_id]["state"] == "done"


def test_a_customer_cannot_read_another_customers_job_progress_or_tasks(fog: Fog) -> None:
    bob_task = fog.get(f"/v1/jobs/{fog.bob_job_id}/tasks", fog.bob).json()["tasks"][0]["id"]
    mine = fog.get(f"/v1/jobs/{fog.job_id}/progress", fog.customer)
    assert mine.status_code == 200 and mine.json()["states"]["done"] == 6
    assert sum(b["count"] for b in mine.json()["throughput"]) == 6
    for path in (
        f"/v1/jobs/{fog.bob_job_id}/progress",
        f"/v1/jobs/{fog.bob_job_id}/tasks",
        f"/v1/jobs/{fog.bob_job_id}",
        f"/v1/tasks/{bob_task}",
    ):
        res = fog.get(path, fog.customer)
        assert res.status_code == 404, path
        assert "bob-secret-job" not in res.text
    listed = fog.get("/v1/jobs", fog.customer).json()["jobs"]
    assert fog.bob_job_id not in {j["id"] for j in listed}


def test_an_owner_fleet_holds_its_own_devices_only(fog: Fog) -> None:
    everyone = fog.get("/v1/operator/fleet", fog.admin).json()
    assert everyone["total"] == 3 and everyone["by_state"] == {"up": 3}
    page = fog.get("/v1/operator/fleet", fog.admin, params={"limit": 2, "offset": 2}).json()
    assert page["total"] == 3 and len(page["devices"]) == 1
    mine = fog.get("/v1/owners/me/fleet", fog.owner).json()
    assert mine["total"] == 1 and [d["name"] for d in mine["devices"]] == [XSS]
    assert {d["owner_id"] for d in mine["devices"]} == {fog.owner_id}
    assert fog.get("/v1/owners/me/fleet", fog.customer).status_code == 403


def test_each_device_says_when_it_joined_what_it_holds_and_earned(fog: Fog) -> None:
    devices = fog.get("/v1/operator/fleet", fog.admin).json()["devices"]
    assert all(d["joined_at"] and "network" in d and isinstance(d["work"], dict) for d in devices)
    assert sum(d["done"] for d in devices) >= 8  # the two jobs' tasks
    assert sum(d["earned"] for d in devices) > 0


def test_the_operator_reads_why_each_attempt_was_placed(fog: Fog) -> None:
    tasks = fog.get(f"/v1/operator/jobs/{fog.bob_job_id}/tasks", fog.admin).json()["tasks"]
    task = fog.get(f"/v1/operator/tasks/{tasks[0]['id']}", fog.admin).json()
    [first, *_] = task["history"]
    assert "reliability" in first["reason"] and first["node_id"]
    assert fog.get("/v1/operator/tasks/999999", fog.admin).status_code == 404


def test_the_flywheel_is_sampled_every_period_for_any_signed_in_key(fog: Fog) -> None:
    deadline = time.monotonic() + 30
    samples: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(samples) < 3:
        samples = fog.get("/v1/flywheel", fog.admin).json()["samples"]
        time.sleep(0.5)
    assert len(samples) >= 3
    last = samples[-1]
    assert last["devices_online"] == 3 and last["cores_online"] == 3
    assert last["tasks_done"] >= 8 and last["credits_to_owners"] > 0
    assert last["per_cpu_hour"] > 0
    slots = [s["slot"] for s in samples]
    assert slots == sorted(set(slots))  # one a slot, oldest first
    for key in (fog.customer, fog.owner):
        assert fog.get("/v1/flywheel", key).json()["period_s"] == 1.0
    since = fog.get("/v1/flywheel", fog.owner, params={"since": last["at"]}).json()
    assert all(s["at"] > last["at"] for s in since["samples"])
    assert fog.get("/v1/flywheel", None).status_code == 401
    assert fog.get("/v1/flywheel", fog.owner, params={"limit": 0}).status_code == 422


def test_a_sampling_period_too_short_fails_the_start_with_what_to_give(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            *(sys.executable, "-m", "fogwheel", "coordinator", "--port", "0", "--quiet"),
            *("--data-dir", str(tmp_path), "--sample-s", "0"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and "give at least 0.5 s" in res.stderr


# -- in Chromium ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield b
        b.close()


def expect(locator: Any) -> Any:
    """Playwright's assertions, which wait (a string predicate would be eval, which the
    console's Content-Security-Policy refuses, as it should)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def signed_in(browser: Any, fog: Fog, key: str) -> Any:
    """A fresh page of the console, signed in with `key`; any page error fails the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    ERRORS[id(page)] = errors
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(fog.url + "/")
    page.fill("#key", key)
    page.click("#sign-in-form button")
    page.wait_for_selector("#who-name")
    return page


def shoot(page: Any, where: Path, name: str) -> None:
    path = where / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if DOCS_IMG:
        Path(DOCS_IMG).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(DOCS_IMG) / path.name)


def no_script_ran(page: Any) -> None:
    assert page.evaluate("window.__xss") is None, "a name was parsed as HTML and ran"
    assert ERRORS[id(page)] == [], ERRORS[id(page)]


def wait_text_change(locator: Any, before: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = locator.inner_text()
        if now != before:
            return str(now)
        time.sleep(0.3)
    raise AssertionError(f"{before!r} did not change in {timeout} s")


def test_the_operator_sees_the_fleet_the_job_move_and_a_placement_explained(
    fog: Fog, browser: Any, tmp_path: Path
) -> None:
    running = fog.post("/v1/jobs", fog.customer, json=command_job("render-frames", 24, 1.5))
    job_id = running.json()["id"]
    page = signed_in(browser, fog, fog.admin)
    assert page.inner_text("#who-name") == "operator"
    expect(page.locator("#fleet-table tbody tr")).to_have_count(3)
    names = page.locator("#fleet-table .device-name").all_inner_texts()
    assert XSS in names and "local-0" in names  # the markup shown as its characters
    page.wait_for_selector("#online-chart svg polyline")
    shoot(page, tmp_path, "fleet")

    page.click(".tab[data-view=jobs]")
    progress = page.locator(f".job-row[data-job='{job_id}'] .progress-text")
    progress.wait_for()
    customers = page.locator("#jobs-table tbody").inner_text()
    assert "bob-secret-job" in customers and XSS in customers  # every customer's
    first = progress.inner_text()
    moved = wait_text_change(progress, first)
    assert int(moved.split(" / ")[0]) > int(first.split(" / ")[0])

    page.click(f".job-row[data-job='{job_id}']")
    page.wait_for_selector("#job-panel #task-states")
    page.wait_for_selector("#tasks-table .task-row")
    started = page.locator(
        "#tasks-table .task-row:has(.state-done), #tasks-table .task-row:has(.state-leased)"
    )
    started.first.wait_for()
    started.first.click()
    reason = page.locator("#task-panel .attempt .reason").first
    reason.wait_for()
    assert "reliability" in reason.inner_text()
    shoot(page, tmp_path, "operator-task")

    for tab, marker in [
        ("cdn", "#cdn-figures"),
        ("ledger", "#ledger-figures"),
        ("rollouts", "#rollouts"),
        ("flywheel", "#flywheel-charts svg"),
    ]:
        page.click(f".tab[data-view={tab}]")
        page.wait_for_selector(marker)
    page.click(".tab[data-view=flywheel]")
    page.wait_for_selector("#flywheel-now")
    shoot(page, tmp_path, "flywheel")
    page.click(".tab[data-view=rollouts]")
    assert "no roll-outs yet" in page.inner_text("#rollouts")
    no_script_ran(page)
    fog.wait_done(fog.customer, job_id)


def test_a_customer_sees_its_own_jobs_only_with_tasks_failures_and_spending(
    fog: Fog, browser: Any, tmp_path: Path
) -> None:
    page = signed_in(browser, fog, fog.bob)
    assert page.inner_text("#who-name") == XSS  # bob's own name, as text
    page.wait_for_selector(f".job-row[data-job='{fog.bob_job_id}']")
    jobs = page.locator("#jobs-table tbody").inner_text()
    assert "bob-secret-job" in jobs and "render-frames" not in jobs
    assert page.locator(".job-row").count() == 1
    page.wait_for_selector("#spending")
    page.click(f".job-row[data-job='{fog.bob_job_id}']")
    page.wait_for_selector("#failures")
    assert "no task has failed" in page.inner_text("#failures")
    page.locator("#tasks-table .task-row").first.click()
    assert "reliability" in page.locator("#task-panel .reason").first.inner_text()
    shoot(page, tmp_path, "customer")
    no_script_ran(page)

    other = signed_in(browser, fog, fog.customer)
    other.wait_for_selector(f".job-row[data-job='{fog.job_id}']")
    assert "bob-secret-job" not in other.locator("#jobs-table tbody").inner_text()
    no_script_ran(other)


def test_an_owner_sees_its_own_devices_their_work_and_earnings_only(
    fog: Fog, browser: Any, tmp_path: Path
) -> None:
    page = signed_in(browser, fog, fog.owner)
    assert page.inner_text("#who-name") == "alice"
    page.wait_for_selector("#fleet-table .device-name")
    assert page.locator("#fleet-table .device-name").all_inner_texts() == [XSS]
    page.wait_for_selector("#earnings")
    assert "no payouts yet" in page.inner_text("#payouts")
    assert [t.lower() for t in page.locator(".tab").all_inner_texts()] == [
        "my devices",
        "flywheel",
    ]
    shoot(page, tmp_path, "owner")
    no_script_ran(page)


def test_a_wrong_key_is_refused_with_a_sentence_and_nothing_is_kept(fog: Fog, browser: Any) -> None:
    page = browser.new_page()
    page.goto(fog.url + "/")
    page.fill("#key", "fwc_not-a-key")
    page.click("#sign-in-form button")
    expect(page.locator("#sign-in-error")).to_contain_text("does not know this key")
    assert page.evaluate("sessionStorage.getItem('fogwheel.key')") is None
    assert "fwc_" not in page.url
