"""Bad input to a real coordinator: every refusal is a 4xx with one JSON sentence, never a 5xx.

Each case is a request that a confused or hostile client could send. The answer must name what
was wrong in `{"error": "..."}`; a 5xx here is a coordinator bug. The same table runs against
SQLite and, when it is reachable, PostgreSQL, whose integers and strings are narrower.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fogwheel.localfog import LocalFog

PG_URL = os.environ.get("FOGWHEEL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MIB = 1 << 20
BODY_LIMIT = 64 * MIB  # the coordinator's default --max-body-mb
OVER_INT32 = 2**31  # past PostgreSQL's INTEGER
OVER_INT64 = 2**64  # past any SQL integer


# -- wire values ------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inline(data: bytes) -> dict[str, Any]:
    return {"sha": sha(data), "size": len(data), "data": base64.b64encode(data).decode()}


def ref(data: bytes) -> dict[str, Any]:
    return {"sha": sha(data), "size": len(data)}


def command_job(**changes: Any) -> dict[str, Any]:
    return {"kind": "command", "tasks": [{"command": ["true"]}], **changes}


def python_job(**changes: Any) -> dict[str, Any]:
    return {"kind": "python", "fn": inline(b"a pickled function"), "tasks": [{}], **changes}


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def refused(r: httpx.Response, status: int, phrase: str) -> None:
    """The answer is `status` with a JSON body whose one-sentence error contains `phrase`."""
    assert r.status_code == status, f"{r.request.method} {r.request.url.path}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/json"), r.text[:200]
    message = r.json()["error"]
    assert phrase in message, message


# -- a real coordinator, its customers and a node ---------------------------------------------


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A PostgreSQL database of its own for one fog, dropped afterwards; skip when none runs."""
    try:
        import psycopg

        admin = psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True, connect_timeout=3)
    except Exception as e:  # any failure to connect means: no PostgreSQL here
        if os.environ.get("FOGWHEEL_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL not reachable at {PG_URL}: {e}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {e}")
    name = "fwerrors_" + secrets.token_hex(6)
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield PG_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def fog(request: pytest.FixtureRequest) -> Iterator[LocalFog]:
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(scratch_database()) if request.param == "postgresql" else None
        fog = LocalFog(nodes=0, db=db)
        fog.start()
        try:
            yield fog
            log = (fog.dir / "coordinator.log").read_text(errors="replace")
            assert "Traceback" not in log, f"the coordinator crashed on some request:\n{log}"
        finally:
            fog.stop()


@pytest.fixture(scope="module")
def anon(fog: LocalFog) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fog.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def alice(fog: LocalFog) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fog.url, headers=fog.headers, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def bob(fog: LocalFog, anon: httpx.Client) -> Iterator[httpx.Client]:
    r = anon.post("/v1/customers", params={"name": "bob"}, headers=bearer(fog.admin_key))
    assert r.status_code == 201, r.text
    with httpx.Client(base_url=fog.url, headers=bearer(r.json()["api_key"]), timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def node_credential(fog: LocalFog, anon: httpx.Client) -> str:
    info = {"token": fog.join_token, "name": "n1", "cores": 1, "memory_mb": 1024, "disk_mb": 0}
    r = anon.post("/v1/nodes/join", json=info)
    assert r.status_code == 201, r.text
    return str(r.json()["credential"])


@pytest.fixture(scope="module")
def node(fog: LocalFog, node_credential: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fog.url, headers=bearer(node_credential), timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def keys(fog: LocalFog, node_credential: str) -> dict[str, dict[str, str]]:
    return {
        "none": {},
        "basic": {"authorization": "Basic YWxpY2U6c2VjcmV0"},
        "bearer without key": {"authorization": "Bearer"},
        "forged": bearer("fwc_" + "x" * 32),
        "customer": bearer(fog.api_key),
        "node": bearer(node_credential),
        "join": bearer(fog.join_token),
        "admin": bearer(fog.admin_key),
    }


# -- bodies that are not JSON -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("customer", "/v1/jobs"),
        ("node", "/v1/nodes/me/sync"),
        ("customer", "/v1/results/poll"),
        ("none", "/v1/nodes/join"),
    ],
)
@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        (b"{not json", 422, "not valid JSON"),
        (b'{"kind": "command", "tasks": [', 422, "not valid JSON"),
        (b"\xff\xfe\x00", 400, "error parsing the body"),
        (b"", 422, "Field required"),
    ],
    ids=["garbled", "truncated", "not-utf8", "empty"],
)
def test_a_body_that_is_not_json_is_refused(
    anon: httpx.Client,
    keys: dict[str, dict[str, str]],
    key: str,
    path: str,
    body: bytes,
    status: int,
    phrase: str,
) -> None:
    headers = {**keys[key], "content-type": "application/json"}
    r = anon.post(path, content=body, headers=headers)
    refused(r, status, phrase)


# -- JSON of the wrong shape ------------------------------------------------------------------

NEVER_UPLOADED = b"bytes that nobody ever uploaded"

BAD_JOBS = {
    "tasks as a string": (command_job(tasks="echo hi"), "tasks: Input should be a valid list"),
    "no kind": ({"tasks": [{"command": ["true"]}]}, "kind: Field required"),
    "unknown kind": (command_job(kind="java"), "kind: Input should be 'python' or 'command'"),
    "negative memory": (
        command_job(limits={"memory_mb": -1}),
        "limits.memory_mb: Input should be greater than or equal to 16",
    ),
    "zero wall time": (command_job(limits={"wall_s": 0}), "limits.wall_s: Input should be greater"),
    "attempts as a word": (
        command_job(max_attempts="many"),
        "max_attempts: Input should be a valid integer",
    ),
    "unknown field": (command_job(colour="red"), "colour: Extra inputs are not permitted"),
    "unknown task field": (
        command_job(tasks=[{"command": ["true"], "cwd": "/"}]),
        "tasks.0.cwd: Extra inputs are not permitted",
    ),
    "sha not hex": (python_job(fn={"sha": "xyz", "size": 3}), "fn.sha: String should match"),
    "sha in capitals": (
        python_job(fn={"sha": sha(b"x").upper(), "size": 1}),
        "fn.sha: String should match",
    ),
    "negative size": (
        python_job(fn={**ref(b"x"), "size": -1}),
        "fn.size: Input should be greater than or equal to 0",
    ),
    "size past any SQL integer": (
        python_job(fn={**ref(b"x"), "size": OVER_INT64}),
        "fn.size: Input should be less than or equal to",
    ),
    "inline bytes of another sha": (
        python_job(fn={**inline(b"abc"), "data": base64.b64encode(b"abd").decode()}),
        "inline bytes do not match their SHA-256",
    ),
    "inline bytes of another size": (
        python_job(fn={**inline(b"abc"), "size": 4}),
        "inline bytes do not match their SHA-256",
    ),
    "base64 garbage": (
        python_job(fn={**inline(b"abc"), "data": "!!not base64!!"}),
        "data is not base64",
    ),
    "python job without fn": ({"kind": "python", "tasks": [{}]}, "a python job needs the pickled"),
    "command task without command": (
        command_job(tasks=[{"command": ["true"]}, {}]),
        "every task of a command job needs a command",
    ),
    "empty command": (
        command_job(tasks=[{"command": []}]),
        "tasks.0.command: List should have at least 1 item",
    ),
    "empty task list": (command_job(tasks=[]), "tasks: List should have at least 1 item"),
    "blob never uploaded": (
        python_job(fn=ref(NEVER_UPLOADED)),
        f"blob {sha(NEVER_UPLOADED)} is not uploaded",
    ),
    "task argument never uploaded": (
        python_job(tasks=[{"args": ref(NEVER_UPLOADED)}]),
        f"blob {sha(NEVER_UPLOADED)} is not uploaded",
    ),
    "absolute output path": (
        command_job(tasks=[{"command": ["true"], "outputs": ["/etc/passwd"]}]),
        "tasks.0.outputs.0: String should match",
    ),
    "input outside the task's directory": (
        command_job(tasks=[{"command": ["true"], "inputs": {"../x": inline(b"a")}}]),
        "must stay inside the task's directory",
    ),
    "output outside the task's directory": (
        command_job(tasks=[{"command": ["true"], "outputs": ["out/../../node.json"]}]),
        "must stay inside the task's directory",
    ),
    "NUL in the name": (command_job(name="a\x00b"), "name: Value error, NUL"),
    "client token with spaces": (command_job(client_token="a b"), "client_token: String should"),
}


@pytest.mark.parametrize(("job", "phrase"), BAD_JOBS.values(), ids=BAD_JOBS.keys())
def test_a_job_of_the_wrong_shape_is_refused(
    alice: httpx.Client, job: dict[str, Any], phrase: str
) -> None:
    refused(alice.post("/v1/jobs", json=job), 422, phrase)


def report(**changes: Any) -> dict[str, Any]:
    return {"task_id": 999_999, "attempt": 1, "ok": True, **changes}


BAD_SYNCS = {
    "want as a word": ({"want": "many"}, "want: Input should be a valid integer"),
    "negative want": ({"want": -1}, "want: Input should be greater than or equal to 0"),
    "unknown field": ({"gpus": 8}, "gpus: Extra inputs are not permitted"),
    "results as a string": ({"results": "all"}, "results: Input should be a valid list"),
    "report without ok": (
        {"results": [{"task_id": 1, "attempt": 1}]},
        "results.0.ok: Field required",
    ),
    "value with a bad sha": (
        {"results": [report(value={"sha": "xyz", "size": 1})]},
        "results.0.value.sha: String should match",
    ),
    "value too large to store": (
        {"results": [report(value={**ref(b"x"), "size": OVER_INT32})]},
        "results.0.value.size: Input should be less than or equal to",
    ),
    "task id past PostgreSQL's INTEGER": (
        {"results": [report(task_id=OVER_INT32)]},
        "results.0.task_id: Input should be less than or equal to",
    ),
    "renew of a word": ({"renew": ["x"]}, "renew.0: Input should be a valid integer"),
    "renew past any SQL integer": (
        {"renew": [OVER_INT64]},
        "renew.0: Input should be less than or equal to",
    ),
    "release past PostgreSQL's INTEGER": (
        {"release": [OVER_INT32]},
        "release.0: Input should be less than or equal to",
    ),
}


@pytest.mark.parametrize(("body", "phrase"), BAD_SYNCS.values(), ids=BAD_SYNCS.keys())
def test_a_sync_of_the_wrong_shape_is_refused(
    node: httpx.Client, body: dict[str, Any], phrase: str
) -> None:
    refused(node.post("/v1/nodes/me/sync", json=body), 422, phrase)


BAD_REPORTS = {
    "value whose inline bytes do not match": (
        report(value={**inline(b"abc"), "size": 2}),
        "inline bytes do not match their SHA-256",
    ),
    "value never uploaded": (
        report(value=ref(NEVER_UPLOADED)),
        "is not uploaded: PUT it to /v1/blobs first",
    ),
}


@pytest.mark.parametrize(("rep", "phrase"), BAD_REPORTS.values(), ids=BAD_REPORTS.keys())
def test_a_report_whose_bytes_fail_their_check_is_rejected_alone(
    node: httpx.Client, rep: dict[str, Any], phrase: str
) -> None:
    """The sync goes on (200, renewals and leases as usual); only that report is refused."""
    r = node.post("/v1/nodes/me/sync", json={"results": [rep], "want": 0})
    assert r.status_code == 200, r.text[:500]
    [rejected] = r.json()["rejected"]
    assert rejected["task_id"] == rep["task_id"] and phrase in rejected["reason"]


BAD_POLLS = {
    "jobs as a list": ({"jobs": [1, 2]}, "jobs: Input should be a valid dictionary"),
    "job id of letters": ({"jobs": {"abc": 0}}, "String should match pattern"),
    "job id past PostgreSQL's INTEGER": ({"jobs": {str(OVER_INT32): 0}}, "no id is larger"),
    "negative cursor": ({"jobs": {"1": -1}}, "Input should be greater than or equal to 0"),
    "cursor past any SQL integer": ({"jobs": {"1": OVER_INT64}}, "less than or equal to"),
    "wait over a minute": ({"jobs": {}, "wait": 61}, "wait: Input should be less than or equal"),
}


@pytest.mark.parametrize(("body", "phrase"), BAD_POLLS.values(), ids=BAD_POLLS.keys())
def test_a_poll_of_the_wrong_shape_is_refused(
    alice: httpx.Client, body: dict[str, Any], phrase: str
) -> None:
    refused(alice.post("/v1/results/poll", json=body), 422, phrase)


def test_a_node_joining_with_impossible_resources_is_refused(
    fog: LocalFog, anon: httpx.Client
) -> None:
    base = {"token": fog.join_token, "name": "n", "cores": 1, "memory_mb": 1024, "disk_mb": 0}
    refused(anon.post("/v1/nodes/join", json={**base, "cores": 0}), 422, "cores: Input should be")
    refused(anon.post("/v1/nodes/join", json={**base, "disk_mb": OVER_INT32}), 422, "disk_mb:")
    refused(anon.post("/v1/nodes/join", json={**base, "name": "n\x00"}), 422, "name: Value error")


def test_a_customer_with_an_unstorable_name_is_refused(fog: LocalFog, anon: httpx.Client) -> None:
    admin = bearer(fog.admin_key)
    refused(anon.post("/v1/customers", params={"name": ""}, headers=admin), 422, "name: String")
    refused(anon.post("/v1/customers", params={"name": "e\x00ve"}, headers=admin), 422, "NUL")


# -- ids that name nothing --------------------------------------------------------------------

UNKNOWN = {
    "job": ("/v1/jobs/999999", 404, "no job 999999"),
    "job's results": ("/v1/jobs/999999/results", 404, "no job 999999"),
    "job's tasks": ("/v1/jobs/999999/tasks", 404, "no job 999999"),
    "task": ("/v1/tasks/999999", 404, "no task 999999"),
    "blob": (f"/v1/blobs/{sha(NEVER_UPLOADED)}", 404, f"no blob {sha(NEVER_UPLOADED)}"),
    "job id of letters": ("/v1/jobs/abc", 422, "job_id: Input should be a valid integer"),
    "task id of letters": ("/v1/tasks/abc", 422, "task_id: Input should be a valid integer"),
    "bad sha": ("/v1/blobs/xyz", 400, "'xyz' is not a SHA-256"),
    "sha in capitals": (f"/v1/blobs/{sha(b'x').upper()}", 400, "is not a SHA-256"),
    "job id past PostgreSQL's INTEGER": (f"/v1/jobs/{OVER_INT32}", 422, "job_id: Input should"),
    "job id past any SQL integer": (f"/v1/jobs/{OVER_INT64}/results", 422, "job_id: Input"),
    "task id past any SQL integer": (f"/v1/tasks/{OVER_INT64}", 422, "task_id: Input should"),
    "cursor past any SQL integer": (
        f"/v1/jobs/1/results?after={OVER_INT64}",
        422,
        "after: Input should be less than or equal to",
    ),
    "offset past any SQL integer": (
        f"/v1/jobs/1/tasks?offset={OVER_INT64}",
        422,
        "offset: Input should be less than or equal to",
    ),
    "unknown task state": ("/v1/jobs/1/tasks?state=asleep", 422, "state: String should match"),
    "no such route": ("/v1/jobz", 404, "Not Found"),
}


@pytest.mark.parametrize(("path", "status", "phrase"), UNKNOWN.values(), ids=UNKNOWN.keys())
def test_an_id_that_names_nothing_is_refused(
    alice: httpx.Client, path: str, status: int, phrase: str
) -> None:
    refused(alice.get(path), status, phrase)


def test_unknown_jobs_cannot_be_cancelled_or_polled(alice: httpx.Client) -> None:
    refused(alice.post("/v1/jobs/999999/cancel"), 404, "no job 999999")
    refused(alice.post("/v1/results/poll", json={"jobs": {"999999": 0}}), 404, "no job 999999")
    refused(alice.delete("/v1/jobs"), 405, "DELETE is not allowed on /v1/jobs: it takes GET, HEAD")


# -- one customer's work is invisible to another ----------------------------------------------


def test_another_customer_cannot_see_or_cancel_a_job(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    job = alice.post("/v1/jobs", json=command_job(name="alice's job"))
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    task_id = alice.get(f"/v1/jobs/{job_id}/tasks").json()["tasks"][0]["id"]

    refused(bob.get(f"/v1/jobs/{job_id}"), 404, f"no job {job_id}")
    refused(bob.get(f"/v1/jobs/{job_id}/results"), 404, f"no job {job_id}")
    refused(bob.get(f"/v1/jobs/{job_id}/tasks"), 404, f"no job {job_id}")
    refused(bob.get(f"/v1/tasks/{task_id}"), 404, f"no task {task_id}")
    refused(bob.post(f"/v1/jobs/{job_id}/cancel"), 404, f"no job {job_id}")
    refused(bob.post("/v1/results/poll", json={"jobs": {str(job_id): 0}}), 404, f"no job {job_id}")
    assert job_id not in [j["id"] for j in bob.get("/v1/jobs").json()["jobs"]]
    assert alice.get(f"/v1/jobs/{job_id}").json()["state"] == "running"


def test_another_customer_cannot_read_or_use_a_blob(alice: httpx.Client, bob: httpx.Client) -> None:
    secret = b"alice's private bytes"
    assert alice.put(f"/v1/blobs/{sha(secret)}", content=secret).status_code == 201

    refused(bob.get(f"/v1/blobs/{sha(secret)}"), 404, f"no blob {sha(secret)}")
    r = bob.post("/v1/jobs", json=python_job(fn=ref(secret)))
    refused(r, 422, f"blob {sha(secret)} is not uploaded")
    assert alice.get(f"/v1/blobs/{sha(secret)}").content == secret


# -- bodies too large or not what they claim --------------------------------------------------


def test_a_blob_over_the_blob_limit_is_refused_before_it_is_read(alice: httpx.Client) -> None:
    # Blobs stream to disk, so their limit is the blob limit (--max-blob-mb, 2047 MB by
    # default), not the body limit; a part that announces more is refused before any byte.
    r = alice.put(
        f"/v1/blobs/{sha(b'x')}", content=b"x", headers={"content-range": "bytes 0-0/3000000000"}
    )
    refused(r, 413, "over the coordinator's blob limit")


def chunks(total: int) -> Iterator[bytes]:
    """A body without Content-Length: the limit must count the bytes as they stream in."""
    for _ in range(total // MIB):
        yield b" " * MIB


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/jobs")],  # a streamed blob over its own limit: tests/test_large_inputs.py
    ids=["job"],
)
def test_a_streamed_body_over_the_limit_is_refused(
    alice: httpx.Client, method: str, path: str
) -> None:
    r = alice.request(
        method,
        path,
        content=chunks(BODY_LIMIT + MIB),
        headers={"content-type": "application/json"},
    )
    refused(r, 413, "over the limit")


def test_a_blob_whose_bytes_do_not_match_its_name_is_refused(alice: httpx.Client) -> None:
    refused(alice.put(f"/v1/blobs/{sha(b'one')}", content=b"two"), 400, f"hashes to {sha(b'two')}")
    refused(alice.get(f"/v1/blobs/{sha(b'one')}"), 404, "no blob")
    refused(alice.put("/v1/blobs/xyz", content=b"xyz"), 400, "is not a SHA-256")


# -- credentials ------------------------------------------------------------------------------


CREDENTIALS = {
    "none": ("none", "GET", "/v1/jobs", 401, "missing credentials"),
    "basic auth": ("basic", "GET", "/v1/jobs", 401, "missing credentials"),
    "bearer without key": ("bearer without key", "GET", "/v1/jobs", 401, "missing credentials"),
    "forged key": ("forged", "GET", "/v1/jobs", 401, "unknown or revoked key"),
    "forged key on sync": ("forged", "POST", "/v1/nodes/me/sync", 401, "unknown or revoked key"),
    "customer on sync": ("customer", "POST", "/v1/nodes/me/sync", 403, "for node keys"),
    "node submitting": ("node", "POST", "/v1/jobs", 403, "for customer keys"),
    "node listing jobs": ("node", "GET", "/v1/jobs", 403, "for customer keys"),
    "node polling": ("node", "POST", "/v1/results/poll", 403, "for customer keys"),
    # a join token is no principal (core/owners.py): as a key it is unknown
    "join token as a key": ("join", "GET", "/v1/jobs", 401, "unknown or revoked key"),
    "admin submitting": ("admin", "POST", "/v1/jobs", 403, "for customer keys"),
    "customer as admin": ("customer", "POST", "/v1/customers?name=eve", 403, "for admin keys"),
    "node as admin": ("node", "POST", "/v1/customers?name=eve", 403, "for admin keys"),
}

VALID_BODIES = {
    "/v1/jobs": command_job(),
    "/v1/nodes/me/sync": {},
    "/v1/results/poll": {"jobs": {}},
}


@pytest.mark.parametrize(
    ("key", "method", "path", "status", "phrase"), CREDENTIALS.values(), ids=CREDENTIALS.keys()
)
def test_a_request_without_the_right_key_is_refused(
    anon: httpx.Client,
    keys: dict[str, dict[str, str]],
    key: str,
    method: str,
    path: str,
    status: int,
    phrase: str,
) -> None:
    body = VALID_BODIES.get(path) if method == "POST" else None
    r = anon.request(method, path, json=body, headers=keys[key])
    refused(r, status, phrase)


@pytest.mark.parametrize("token", ["not-the-join-token", "api_key"])
def test_joining_with_a_wrong_token_is_refused(
    fog: LocalFog, anon: httpx.Client, token: str
) -> None:
    token = fog.api_key if token == "api_key" else token
    info = {"token": token, "name": "intruder", "cores": 1, "memory_mb": 1024, "disk_mb": 0}
    refused(anon.post("/v1/nodes/join", json=info), 401, "unknown join token")


# -- a node reporting work it never held ------------------------------------------------------


def test_a_result_for_a_task_the_node_never_held_is_rejected_not_acked(
    alice: httpx.Client, node: httpx.Client
) -> None:
    job_id = alice.post("/v1/jobs", json=command_job(name="not yours")).json()["id"]
    task_id = alice.get(f"/v1/jobs/{job_id}/tasks").json()["tasks"][0]["id"]

    r = node.post(
        "/v1/nodes/me/sync",
        json={"results": [report(task_id=task_id, value=inline(b"forged")), report()]},
    )

    assert r.status_code == 200, r.text
    assert r.json()["acked"] == []
    rejected = {x["task_id"]: x["reason"] for x in r.json()["rejected"]}
    assert rejected.keys() == {task_id, 999_999}
    assert "never held" in rejected[task_id]
    assert alice.get(f"/v1/tasks/{task_id}").json()["state"] == "pending"
    assert alice.get(f"/v1/jobs/{job_id}/results").json()["results"] == []


def test_reporting_one_result_for_a_task_the_node_does_not_hold_is_a_conflict(
    alice: httpx.Client, node: httpx.Client
) -> None:
    job_id = alice.post("/v1/jobs", json=command_job(name="not yours either")).json()["id"]
    task_id = alice.get(f"/v1/jobs/{job_id}/tasks").json()["tasks"][0]["id"]
    body = report(task_id=task_id, value=inline(b"forged"))

    r = node.post(f"/v1/nodes/me/tasks/{task_id}/result", json=body)

    refused(r, 409, f"does not hold task {task_id}")
    assert alice.get(f"/v1/tasks/{task_id}").json()["state"] == "pending"
    mismatch = node.post(f"/v1/nodes/me/tasks/{task_id + 1}/result", json=body)
    refused(mismatch, 422, "is not")


# -- what answers without credentials ---------------------------------------------------------


def test_openapi_and_health_answer_without_credentials(anon: httpx.Client) -> None:
    spec = anon.get("/openapi.json")
    assert spec.status_code == 200
    assert {"/v1/jobs", "/v1/nodes/me/sync", "/v1/blobs/{sha}"} <= spec.json()["paths"].keys()
    health = anon.get("/v1/health")
    assert health.status_code == 200
    assert health.json()["ok"] is True
