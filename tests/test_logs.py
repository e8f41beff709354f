"""Structured logs: `--log-format json` writes JSON lines that carry the job, task and node ids
of the work they concern, and no line in either format ever holds a secret."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fogwheel import Client, logs
from fogwheel.localfog import LocalFog

SECRETS = [
    ("admin key fwa_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFi", "fwa_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFi"),
    ("a node's credential: fwn_abc-DEF_1234567890", "fwn_abc-DEF_1234567890"),
    ("join with fwj_AbCdEfGhIjKl#sha256:pin", "fwj_AbCdEfGhIjKl"),
    ("header Authorization: Bearer sk-live-1234567890", "sk-live-1234567890"),
    ("db postgresql+psycopg://fog:hunter2@db.example/fog down", "hunter2"),
    ("GET /cdn/x?expires=9&sig=c2lnbmF0dXJl&x=1", "c2lnbmF0dXJl"),
    ("retrying with token=s3cr3t-t0ken", "s3cr3t-t0ken"),
]


@pytest.mark.parametrize(("line", "secret"), SECRETS)
def test_redact_removes_every_kind_of_secret_and_keeps_the_sentence(line: str, secret: str) -> None:
    out = logs.redact(line)
    assert secret not in out
    assert logs.REDACTED in out
    assert out.split()[0] == line.split()[0]  # the sentence around it stays readable


def test_redact_leaves_ordinary_lines_alone() -> None:
    line = "node n-1a2b3c4d (local-0) joined: 2 cores, 512 MB; task 17 of job 3 done in 0.12 s"
    assert logs.redact(line) == line


def _record(message: str, *args: Any, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(
                "could not reach postgresql://u:pw123@host/db with fwa_Secret1234567"
            )
        except RuntimeError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("fogwheel.test", logging.WARNING, __file__, 1, message, args, exc_info)


def test_a_json_line_has_the_fields_and_the_ids_of_its_context() -> None:
    formatter = logs.JsonLines()
    with logs.ids(job_id=3, task_id=17):
        line = formatter.format(_record("task %s done\nsecond line", 17))
    parsed = json.loads(line)
    assert "\n" not in line  # one record, one line, whatever the message holds
    assert parsed["level"] == "WARNING" and parsed["logger"] == "fogwheel.test"
    assert parsed["message"] == "task 17 done\nsecond line"
    assert parsed["job_id"] == "3" and parsed["task_id"] == "17"
    assert parsed["time"].endswith("+00:00")
    outside = json.loads(formatter.format(_record("no context")))
    assert "job_id" not in outside and "task_id" not in outside


def test_a_traceback_is_redacted_too_in_both_formats() -> None:
    record = _record("failed", exc=True)
    for formatter in (logs.JsonLines(), logs.RedactedText(logs.TEXT_FORMAT)):
        out = formatter.format(record)
        assert "pw123" not in out and "fwa_Secret1234567" not in out
        assert "RuntimeError" in out


def test_ids_from_a_request_scope_are_bounded_and_name_the_caller() -> None:
    scope: dict[str, Any] = {"path_params": {"job_id": "9" * 500, "task_id": "4"}}
    logs.note_principal(scope, "node", "n-abc")
    token = logs.bind_request(scope)
    try:
        found = logs.current_ids()
    finally:
        logs.unbind_request(token)
    assert found["job_id"] == "9" * 64 and found["task_id"] == "4"
    assert found["node_id"] == "n-abc"
    assert logs.current_ids().get("job_id") is None


def test_each_thread_has_its_own_ids() -> None:
    seen: dict[str, dict[str, str]] = {}

    def slot(name: str, task: int) -> None:
        logs.set_ids(job_id=1, task_id=task)
        seen[name] = logs.current_ids()
        logs.set_ids()
        seen[name + " after"] = logs.current_ids()

    threads = [threading.Thread(target=slot, args=(f"s{i}", i)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [seen[f"s{i}"]["task_id"] for i in range(3)] == ["0", "1", "2"]
    assert all("task_id" not in seen[f"s{i} after"] for i in range(3))


def test_configure_json_sends_json_lines_to_the_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("json")
        logging.getLogger("fogwheel.x").info("hello %s", "fwc_abcdefghijklmnop")
    finally:
        logs.configure("text")
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    [line] = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == f"hello fwc_{logs.REDACTED}"
    with pytest.raises(ValueError, match="say text or json"):
        logs.configure("xml")


# -- a real fog --------------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FOGWHEEL_LOG_FORMAT", "json")  # coordinator and nodes inherit it
        workdir = tmp_path_factory.mktemp("logs")
        with LocalFog(2, workdir=workdir, coordinator_args=["--verbose"]) as fog:
            with Client(fog.url, fog.api_key) as client:
                futures = client.submit_many(square, [((x,), {}) for x in range(8)])
                assert [f.result(timeout=120) for f in futures] == [x * x for x in range(8)]
                job_id = futures[0].job_id
            r = httpx.get(f"{fog.url}/v1/jobs/{job_id}", headers=fog.headers, timeout=10)
            assert r.status_code == 200
            # The access line is written once the response has gone out, so it can land a
            # moment after the client has its answer: wait for it rather than race it.
            _wait_for_line(fog, "coordinator.log", "GET /v1/jobs/{job_id} 200")
            fog.job_id = job_id  # type: ignore[attr-defined]
            yield fog


def _wait_for_line(fog: LocalFog, name: str, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (fog.dir / name).read_text():
        assert time.monotonic() < deadline, f"{name} never logged {text!r}"
        time.sleep(0.05)


def _lines(fog: LocalFog, name: str) -> list[dict[str, Any]]:
    text = (fog.dir / name).read_text()
    out = []
    for raw in text.splitlines():
        if raw.strip():
            out.append(json.loads(raw))  # every line is one JSON object, or this fails
    return out


def test_every_coordinator_line_is_json_and_requests_carry_their_ids(fog: LocalFog) -> None:
    lines = _lines(fog, "coordinator.log")
    assert lines, "the coordinator wrote no log lines"
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
    syncs = [x for x in lines if x["message"].startswith("POST /v1/nodes/me/sync 200")]
    assert syncs and all(x["node_id"].startswith("n-") for x in syncs)
    job = [x for x in lines if x["message"].startswith("GET /v1/jobs/{job_id} 200")]
    assert job and job[0]["job_id"] == str(fog.job_id)  # type: ignore[attr-defined]
    assert job[0]["customer_id"].startswith("c-")


def test_every_node_line_is_json_and_a_task_line_names_job_task_and_node(fog: LocalFog) -> None:
    for i in range(2):
        lines = _lines(fog, f"node-{i}.log")
        node_id = json.loads((fog.dir / f"node-{i}" / "node.json").read_text())["node_id"]
        done = [x for x in lines if x["message"].startswith("task ")]
        for x in done:
            assert x["node_id"] == node_id and x["job_id"] == str(fog.job_id)  # type: ignore[attr-defined]
            assert (
                x["message"] == f"task {x['task_id']} finished: ok in {x['message'].split()[-2]} s"
            )
        # from the line that first knows it (the join), every line names the node
        first = next(k for k, x in enumerate(lines) if "node_id" in x)
        assert all(x.get("node_id") == node_id for x in lines[first:])
    assert (
        sum(
            x["message"].startswith("task ") for i in range(2) for x in _lines(fog, f"node-{i}.log")
        )
        >= 8
    )


def test_no_log_line_holds_a_secret(fog: LocalFog) -> None:
    secrets = [fog.admin_key, fog.api_key, fog.join_token]
    for i in range(2):
        ident = json.loads((fog.dir / f"node-{i}" / "node.json").read_text())
        secrets.append(ident["credential"])
    for name in ["coordinator.log", "node-0.log", "node-1.log"]:
        text = (fog.dir / name).read_text()
        for secret in secrets:
            assert secret not in text, f"{name} holds a secret"
