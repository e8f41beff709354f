"""The OpenAPI document of a real coordinator is one that validators, generators and Swagger
understand: it validates, says which key every operation takes (and the coordinator enforces
exactly that), types every answer, documents the error body, names its servers; a 405 lists
every method of the path; /docs and /redoc work with no internet; and a client generated from
the document by openapi-python-client talks to the coordinator with a bearer key."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from fogwheel.coordinator.identity import SCHEME_NAMES
from fogwheel.localfog import LocalFog

KINDS = ("customer", "admin", "owner", "node", "metrics")
PLACEHOLDERS = {"sha": "0" * 64, "content_id": "c" + "0" * 24}


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    with LocalFog(0, workdir=tmp_path_factory.mktemp("openapi")) as fog:
        yield fog


@pytest.fixture(scope="module")
def spec(fog: LocalFog) -> dict[str, Any]:
    return httpx.get(f"{fog.url}/openapi.json", timeout=10).json()


@pytest.fixture(scope="module")
def keys(fog: LocalFog) -> dict[str, str]:
    """A key of every kind: the fog's customer and admin keys, a new owner's, a node's, a
    metrics key (which reads /metrics alone: every other operation must answer it 403)."""
    admin = {"authorization": f"Bearer {fog.admin_key}"}
    owner = httpx.post(f"{fog.url}/v1/owners", json={"name": "o"}, headers=admin, timeout=10)
    node = httpx.post(
        f"{fog.url}/v1/nodes/join",
        json={"token": fog.join_token, "name": "n", "cores": 1, "memory_mb": 64, "disk_mb": 1},
        timeout=10,
    )
    return {
        "customer": fog.api_key,
        "admin": fog.admin_key,
        "owner": owner.json()["owner_key"],
        "node": node.json()["credential"],
        "metrics": httpx.post(
            f"{fog.url}/v1/metrics-keys", json={}, headers=admin, timeout=10
        ).json()["metrics_key"],
    }


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path, operation) of the document."""
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]


def concrete(path: str) -> str:
    """The path with a harmless value for each parameter (ids nobody has: answers are 404)."""
    return re.sub(r"\{(\w+)\}", lambda m: PLACEHOLDERS.get(m.group(1), "0"), path)


def declared_kinds(op: dict[str, Any]) -> set[str]:
    names = {name for requirement in op.get("security", []) for name in requirement}
    return {kind for kind, scheme in SCHEME_NAMES.items() if scheme in names}


def send(fog: LocalFog, method: str, path: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, fog.url + concrete(path), headers=headers, timeout=20)


# -- the document ------------------------------------------------------------------------------


def test_the_document_passes_openapi_spec_validator(spec: dict[str, Any]) -> None:
    validate(spec)  # raises, naming the offending part, when the document is not OpenAPI 3.1


REDOCLY = "@redocly/cli@2.77.0"


def test_redocly_lint_finds_nothing_with_its_recommended_rules(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    npx = shutil.which("npx")
    if npx is None:
        pytest.fail("npx is not installed: apt-get install -y nodejs npm (it runs redocly)")
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(spec))
    quiet = {"REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"}
    res = subprocess.run(
        [npx, "--yes", REDOCLY, "lint", str(document), "--format=summary"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, **quiet},
    )
    said = res.stdout + res.stderr
    # "Woohoo!": no error and no warning (with warnings it says "valid, but with N warnings")
    assert res.returncode == 0 and "Woohoo! Your API description is valid" in said, said[-4000:]


def test_the_document_declares_a_bearer_scheme_for_every_kind_of_key(
    spec: dict[str, Any],
) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert set(SCHEME_NAMES.values()) <= set(schemes)
    for name in SCHEME_NAMES.values():
        assert (schemes[name]["type"], schemes[name]["scheme"]) == ("http", "bearer")


def test_servers_default_to_the_coordinator_the_document_was_read_from(
    spec: dict[str, Any],
) -> None:
    assert [s["url"] for s in spec["servers"]] == ["/"]


def test_servers_are_the_public_urls_the_operator_names(tmp_path: Path) -> None:
    urls = ["https://fog.example.com", "https://fog2.example.com/api"]
    args = ["--public-url", ",".join(urls)]
    with LocalFog(0, workdir=tmp_path, coordinator_args=args) as fog:
        doc = httpx.get(f"{fog.url}/openapi.json", timeout=10).json()
    assert [s["url"] for s in doc["servers"]] == urls


def test_a_public_url_that_is_not_a_url_is_refused_with_a_sentence(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "fogwheel", "coordinator", "--port", "0"]
    res = subprocess.run(
        [*command, "--data-dir", str(tmp_path), "--public-url", "fog.example.com"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    assert "--public-url 'fog.example.com' is not a URL" in res.stdout + res.stderr


def test_every_operation_says_who_may_call_it(spec: dict[str, Any]) -> None:
    """An explicit `security` everywhere, empty on public operations (redocly's rule
    security-defined: a missing one reads as forgotten, not as public)."""
    assert [f"{m} {p}" for m, p, op in operations(spec) if "security" not in op] == []


def test_public_operations_carry_an_empty_security(spec: dict[str, Any]) -> None:
    public = {(m, p) for m, p, op in operations(spec) if op["security"] == []}
    assert public == {
        ("GET", "/v1/health"),
        ("GET", "/v1/price"),
        ("GET", "/v1/coordinator/key"),
        ("POST", "/v1/nodes/join"),
        ("OPTIONS", "/v1/cdn/objects/{content_id}/content"),  # a CORS preflight
    }


def test_every_json_answer_has_a_typed_schema(spec: dict[str, Any]) -> None:
    """No 2xx JSON answer is a bare object (`dict[str, Any]` in a handler): each is a model."""
    loose = []
    for method, path, op in operations(spec):
        for status, answer in op["responses"].items():
            schema = answer.get("content", {}).get("application/json", {}).get("schema")
            if status.startswith("2") and schema is not None and "$ref" not in schema:
                loose.append(f"{method} {path} {status}: {json.dumps(schema)[:80]}")
    assert loose == []


def test_every_error_answer_documents_the_problem_body(spec: dict[str, Any]) -> None:
    missing = [
        f"{method} {path} {status}"
        for method, path, op in operations(spec)
        for status, answer in op["responses"].items()
        if status.startswith("4")
        and answer.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
        != "#/components/schemas/Problem"
    ]
    assert missing == []


def test_every_keyed_operation_documents_its_401_and_403(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        if op.get("security"):
            assert {"401", "403"} <= set(op["responses"]), f"{method} {path}"


# -- the document and the coordinator agree ----------------------------------------------------


def test_without_a_key_exactly_the_operations_with_security_answer_401(
    fog: LocalFog, spec: dict[str, Any]
) -> None:
    wrong = []
    for method, path, op in operations(spec):
        if {} in op["security"]:
            continue  # no key is one of its ways in (a signed URL in the query, say)
        r = send(fog, method, path)
        if (r.status_code == 401) != bool(op["security"]):
            wrong.append(f"{method} {path}: {r.status_code} {r.text[:100]}")
        if r.status_code == 401 and "bearer" not in r.headers.get("www-authenticate", "").lower():
            wrong.append(f"{method} {path}: 401 without WWW-Authenticate: Bearer")
    assert wrong == []


def test_each_operation_takes_exactly_the_kinds_of_key_its_security_names(
    fog: LocalFog, spec: dict[str, Any], keys: dict[str, str]
) -> None:
    """A key of a named kind gets past authentication (any answer but 401/403: a 404 for
    the placeholder ids, a 422 for the missing body); any other kind gets 403."""
    wrong = []
    for method, path, op in operations(spec):
        takes = declared_kinds(op)
        if not takes:
            continue
        for kind in KINDS:
            status = send(fog, method, path, keys[kind]).status_code
            expected = "past auth" if kind in takes else "403"
            got = "403" if status == 403 else "401" if status == 401 else "past auth"
            if got != expected:
                wrong.append(f"{method} {path} with a {kind} key: {status}, wanted {expected}")
    assert wrong == []


# -- 405 ---------------------------------------------------------------------------------------


def test_a_405_names_every_method_of_a_path_that_several_routes_share(fog: LocalFog) -> None:
    r = httpx.delete(f"{fog.url}/v1/blobs/{'0' * 64}", timeout=10)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD, PUT"
    assert r.json()["error"] == (
        f"DELETE is not allowed on /v1/blobs/{'0' * 64}: it takes GET, HEAD, PUT"
    )


def test_every_path_answers_405_with_the_methods_the_document_lists(
    fog: LocalFog, spec: dict[str, Any]
) -> None:
    """PATCH is no operation of the API: on every path it is 405, and Allow is the union of
    the methods of every documented path the URL matches (and HEAD wherever GET is)."""
    patterns = {
        path: re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$")
        for path in spec["paths"]
    }
    wrong = []
    for path in spec["paths"]:
        url = concrete(path)
        methods = {
            m.upper()
            for other, rx in patterns.items()
            if rx.match(url)
            for m in spec["paths"][other]
        }
        methods |= {"HEAD"} if "GET" in methods else set()
        r = httpx.request("PATCH", fog.url + url, timeout=10)
        allow = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
        if r.status_code != 405 or allow != methods:
            wrong.append(
                f"PATCH {url}: {r.status_code}, Allow {sorted(allow)} != {sorted(methods)}"
            )
    assert wrong == []


def test_head_answers_what_get_answers_without_the_content(fog: LocalFog) -> None:
    """RFC 9110 §9.3.2, for `curl -I` and link checkers: the same status and fields."""
    for path in ("/v1/health", "/docs", "/openapi.json", "/v1/jobs"):
        get, head = httpx.get(fog.url + path, timeout=10), httpx.head(fog.url + path, timeout=10)
        assert (head.status_code, head.content) == (get.status_code, b""), path
        for field in ("content-type", "content-length"):
            assert head.headers[field] == get.headers[field], (path, field)


def test_head_where_no_get_is_405_naming_the_methods(fog: LocalFog) -> None:
    r = httpx.head(f"{fog.url}/v1/results/poll", timeout=10)
    assert (r.status_code, r.headers["allow"]) == (405, "POST")


# -- /docs and /redoc offline ------------------------------------------------------------------


class References(HTMLParser):
    """Every src= and href= of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_and_all_they_load_come_from_the_coordinator(
    fog: LocalFog, page: str
) -> None:
    r = httpx.get(fog.url + page, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert re.findall(r"https?://", r.text) == []  # nothing from another host, or any host
    refs = References()
    refs.feed(r.text)
    assert len(refs.urls) >= 2  # the bundle and the favicon at least
    for url in refs.urls:
        assert url.startswith("/"), url
        asset = httpx.get(fog.url + url, timeout=10)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert "/openapi.json" in r.text


def test_a_docs_asset_outside_the_bundle_is_404_with_a_sentence(fog: LocalFog) -> None:
    r = httpx.get(f"{fog.url}/docs/assets/openapi.py", timeout=10)
    assert r.status_code == 404
    assert "/docs serves swagger-ui-bundle.js" in r.json()["error"]
    walk = httpx.get(f"{fog.url}/docs/assets/..%2F..%2Fopenapi.py", timeout=10)
    assert (walk.status_code, walk.json()) == (404, {"error": "Not Found"})


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    return exe


@pytest.mark.parametrize(
    ("page", "rendered"),
    [("/docs", 'class="opblock-summary-path"'), ("/redoc", "/v1/jobs/{job_id}/results")],
)
def test_chromium_renders_the_docs_with_every_other_host_unreachable(
    fog: LocalFog, page: str, rendered: str, tmp_path: Path
) -> None:
    """Headless Chromium with every host but 127.0.0.1 unresolvable: the page's scripts run
    and draw the operations, so nothing it needs comes from the internet."""
    res = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            fog.url + page,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered in res.stdout, res.stderr[-2000:]
    assert "/v1/health" in res.stdout


# -- a generated client ------------------------------------------------------------------------


def openapi_python_client() -> list[str]:
    """The generator, installed apart from fogwheel (it pins typer<0.28): .ci/run puts it in
    its own virtual environment and names it in FOGWHEEL_OPENAPI_PYTHON_CLIENT."""
    exe = os.environ.get("FOGWHEEL_OPENAPI_PYTHON_CLIENT") or shutil.which("openapi-python-client")
    if exe is None:
        pytest.fail(
            "openapi-python-client is not installed: python3 -m venv /tmp/opc && "
            "/tmp/opc/bin/pip install openapi-python-client==0.29.1, then set "
            "FOGWHEEL_OPENAPI_PYTHON_CLIENT=/tmp/opc/bin/openapi-python-client"
        )
    return [exe]


def test_a_client_generated_from_the_document_calls_the_api_with_the_bearer_key(
    fog: LocalFog, spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(spec))
    out = tmp_path / "fog_client"
    generate = ["generate", "--path", str(document), "--output-path", str(out), "--meta", "none"]
    res = subprocess.run(
        [*openapi_python_client(), *generate],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    monkeypatch.syspath_prepend(str(tmp_path))
    client_mod = importlib.import_module("fog_client")
    whoami = importlib.import_module("fog_client.api.meta.whoami_v1_whoami_get")
    submit = importlib.import_module("fog_client.api.jobs.submit_job_v1_jobs_post")
    get_job = importlib.import_module("fog_client.api.jobs.get_job_v1_jobs_job_id_get")
    models = importlib.import_module("fog_client.models")

    client = client_mod.AuthenticatedClient(base_url=fog.url, token=fog.api_key)
    me = whoami.sync(client=client)
    assert (me.kind, me.id) == ("customer", me.id) and me.id.startswith("c-")

    body = models.JobIn(
        kind=models.JobInKind.COMMAND,
        name="from-a-generated-client",
        tasks=[models.TaskIn(command=["true"])],
    )
    job = submit.sync(client=client, body=body)
    assert job.name == "from-a-generated-client" and job.total == 1

    again = get_job.sync(job.id, client=client)
    assert (again.id, again.state) == (job.id, models.JobOutState.RUNNING)

    anonymous = client_mod.Client(base_url=fog.url)
    refused = whoami.sync_detailed(client=anonymous)
    assert refused.status_code == 401
    assert "missing credentials" in refused.parsed.error


# -- the CDN's answer models match what its routes answer --------------------------------------


def test_the_cdn_answer_models_fit_real_answers(
    fog: LocalFog, keys: dict[str, str], tmp_path: Path
) -> None:
    """coordinator/cdn_models.py, for the lead to wire into cdn_routes.py: a real plan, the
    stats of a customer and of the operator, and a pardon validate against them (extra
    fields are refused, so a model that misses a field fails here)."""
    from fogwheel import Client
    from fogwheel.cdn.client import publish
    from fogwheel.coordinator.cdn_models import CdnPlan, CdnStats, Pardoned

    path = tmp_path / "page.html"
    path.write_bytes(b"<p>hello</p>" * 1000)
    with Client(fog.url, fog.api_key) as client:
        cid = publish(client, path, k=2, n=3, on_warning=lambda _: None)
    customer = {"authorization": f"Bearer {keys['customer']}"}
    admin = {"authorization": f"Bearer {keys['admin']}"}
    plan = httpx.get(f"{fog.url}/v1/cdn/objects/{cid}", headers=customer, timeout=10)
    CdnPlan.model_validate(plan.json())
    for who in (customer, admin):
        stats = CdnStats.model_validate(
            httpx.get(f"{fog.url}/v1/cdn/stats", headers=who, timeout=10).json()
        )
        assert stats.objects == 1 and stats.by_object[0].content_id == cid
    node_id = httpx.get(
        f"{fog.url}/v1/whoami", headers={"authorization": f"Bearer {keys['node']}"}, timeout=10
    ).json()["id"]
    pardon = httpx.post(f"{fog.url}/v1/nodes/{node_id}/pardon", headers=admin, timeout=10)
    Pardoned.model_validate(pardon.json())
