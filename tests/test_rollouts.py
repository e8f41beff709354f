"""Roll-outs on a real fog (docs/rollouts.md): a node agent version published as a wheel built
here from this source tree reaches a canary share of real node processes, which fetch it, check
its signature and hash, unpack it and re-execute; a healthy one is promoted step by step to
every device, one whose executor fails every task is rolled back (the nodes go back to the
version they were installed with) while the job still finishes. And the store's side: one
active roll-out per subject, cancelling, bad input answered with a 4xx."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import fogwheel
from fogwheel import Client
from fogwheel.core.rollout import Arm, RolloutPolicy, canary_baseline, canary_floor, in_canary
from fogwheel.localfog import LocalFog
from fogwheel.store import Store
from fogwheel.store import rollouts as rows
from tests.test_console import browser, no_script_ran, shoot, signed_in  # noqa: F401

BASE = fogwheel.__version__


def build_wheel(
    where: Path, version: str, *, broken: bool = False, crash_at_start: bool = False
) -> Path:
    """A wheel of this source tree as `version`; `broken`: its task executor (the worker)
    exits at start, so every task it is given fails (a crash, charged to the device);
    `crash_at_start`: the agent itself exits as it starts, before its first sync (it imports
    fine, so the node's preflight passes it)."""
    tree = where / f"tree-{version}"
    shutil.copytree(
        Path(fogwheel.__file__).parent,
        tree / "fogwheel",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    init = tree / "fogwheel" / "__init__.py"
    text = init.read_text()
    assert f'__version__ = "{BASE}"' in text
    init.write_text(text.replace(f'__version__ = "{BASE}"', f'__version__ = "{version}"'))
    if broken:
        worker = tree / "fogwheel" / "node" / "worker.py"
        code = worker.read_text()
        guard = 'if __name__ == "__main__":'
        worker.write_text(code.replace(guard, f"import os as _os\n\n_os._exit(70)\n\n{guard}"))
    if crash_at_start:
        agent = tree / "fogwheel" / "node" / "agent.py"
        code = agent.read_text()
        start = "    def run(self) -> None:\n"
        assert code.count(start) == 1
        agent.write_text(code.replace(start, f"{start}        os._exit(70)\n"))
    info = f"fogwheel-{version}.dist-info"
    files = {
        p.relative_to(tree).as_posix(): p.read_bytes()
        for p in sorted((tree / "fogwheel").rglob("*"))
        if p.is_file()
    }
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: fogwheel\nVersion: {version}\n".encode()
    )
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for name, data in files.items()
    ]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    wheel = where / f"fogwheel-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def log_of(fog: LocalFog, i: int) -> str:
    return (fog.dir / f"node-{i}.log").read_text()


def square(x: int) -> int:
    return x * x


def publish(fog: LocalFog, wheel: Path, *args: str) -> str:
    """`fogwheel agent publish` as an operator runs it; the roll-out's id."""
    r = subprocess.run(
        [sys.executable, "-m", "fogwheel", "agent", "publish", str(wheel), *args],
        env={"FOGWHEEL_COORDINATOR": fog.url, "FOGWHEEL_ADMIN_KEY": fog.admin_key, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def admin_get(fog: LocalFog, path: str) -> Any:
    r = httpx.get(f"{fog.url}{path}", headers={"authorization": f"Bearer {fog.admin_key}"})
    assert r.status_code == 200, r.text
    return r.json()


def work_until(
    fog: LocalFog, client: Client, rid: str, states: set[str], limit_s: float
) -> dict[str, Any]:
    """Keep jobs of short tasks running (each must finish right) until the roll-out is in one
    of `states`; the roll-out."""
    deadline = time.monotonic() + limit_s
    while True:
        assert list(client.map(square, range(24), timeout=120)) == [x * x for x in range(24)]
        ro = admin_get(fog, f"/v1/rollouts/{rid}")
        if ro["state"] in states:
            return dict(ro)
        assert time.monotonic() < deadline, f"still {ro['state']}: {ro['reason']}"


def wait_for_spread(fog: LocalFog, spread: dict[str, int], limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while (got := admin_get(fog, "/v1/agent/releases")["spread"]) != spread:
        assert time.monotonic() < deadline, f"agent versions on devices: {got}, not {spread}"
        time.sleep(0.5)


@pytest.fixture
def fog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalFog]:
    monkeypatch.setenv("FOGWHEEL_ROLLOUT_S", "1")  # the coordinator judges every second
    with LocalFog(4, lease_seconds=3.0, workdir=tmp_path / "fog") as f:
        yield f


def test_a_healthy_agent_version_is_promoted_step_by_step_to_every_device(
    fog: LocalFog, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path, f"{BASE}+good")
    with Client(fog.url, fog.api_key, replicas=1) as client:
        list(client.map(square, range(8), timeout=60))  # every node has synced its version
        wait_for_spread(fog, {BASE: 4})
        rid = publish(fog, wheel, "--canary", "25%", "--min-outcomes", "4")
        ro = work_until(fog, client, rid, {"done", "rolled_back"}, 240)
    assert ro["state"] == "done", ro["reason"]
    assert [h["action"] for h in ro["history"]] == ["start", "promote", "promote", "done"]
    assert [h["share"] for h in ro["history"]] == [0.25, 0.5, 1.0, 1.0]
    assert all(h["new"]["ok"] >= 4 for h in ro["history"][1:]), ro["history"]
    assert ro["history"][1]["reason"].startswith("promoted 25% → 50%")
    wait_for_spread(fog, {f"{BASE}+good": 4})
    logs = "".join((fog.dir / f"node-{i}.log").read_text() for i in range(4))
    assert logs.count(f"re-executing as {BASE}+good") == 4
    env = {"FOGWHEEL_COORDINATOR": fog.url, "FOGWHEEL_ADMIN_KEY": fog.admin_key, "PATH": ""}
    cli = [sys.executable, "-m", "fogwheel"]
    shown = subprocess.run(
        [*cli, "rollouts", "show", rid], env={**env, "COLUMNS": "250"}, capture_output=True,
        text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "promoted 25% → 50%" in shown and "done at 100%" in shown and "agent" in shown
    versions = subprocess.run(
        [*cli, "agent", "versions", "--json"], env=env, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    assert json.loads(versions)["spread"] == {f"{BASE}+good": 4}


def test_an_agent_version_that_fails_every_task_is_rolled_back_and_the_job_finishes(
    fog: LocalFog, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path, f"{BASE}+bad", broken=True)
    with Client(fog.url, fog.api_key, replicas=1) as client:
        list(client.map(square, range(8), timeout=60))
        wait_for_spread(fog, {BASE: 4})
        rid = publish(fog, wheel, "--canary", "25%", "--min-outcomes", "4")
        ro = work_until(fog, client, rid, {"done", "rolled_back"}, 240)
        assert ro["state"] == "rolled_back", ro["reason"]
        last = ro["history"][-1]
        assert last["action"] == "rollback" and last["share"] == 0.0
        assert last["new"]["failed"] >= 2 and last["new"]["ok"] == 0
        assert "rolled back at 25%" in last["reason"]
        wait_for_spread(fog, {BASE: 4})  # the canary went back to its installed version
        assert list(client.map(square, range(24), timeout=120)) == [x * x for x in range(24)]
    # the canary (by the hash, at least one device: the share rounded up) went and came back
    ids = {n["name"]: n["id"] for n in admin_get(fog, "/v1/nodes")["nodes"]}
    canary = (
        canary_floor(rid, ids.values(), 0.25) | {i for i in ids.values() if in_canary(rid, i, 0.25)}
    ) - canary_baseline(rid, ids.values(), 0.25)
    went = {ids[f"local-{i}"] for i in range(4) if f"as {BASE}+bad" in log_of(fog, i)}
    back = {ids[f"local-{i}"] for i in range(4) if f"as {BASE}\n" in log_of(fog, i)}
    assert went == back == canary and 1 <= len(canary) < 4


def keep_running(fog: LocalFog, i: int, stop: threading.Event) -> threading.Thread:
    """A service manager for node `i`: started again from its installed version when it exits."""

    def watch() -> None:
        while not stop.wait(0.2):
            proc = fog.nodes[i]
            if proc is not None and proc.poll() is not None:
                env = {"FOGWHEEL_JOIN_TOKEN": fog.join_string}
                fog.nodes[i] = fog._spawn(list(proc.args), fog.dir / f"node-{i}.log", env)  # type: ignore[arg-type]

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_an_agent_version_that_exits_before_its_first_sync_is_rolled_back(
    fog: LocalFog, tmp_path: Path
) -> None:
    """It reports no task outcome: its canary devices that did not come up on it are its
    failures. One canary device has a service manager (it comes back on the installed
    version, which tells the coordinator), the others stay down (silent past the bound: the
    gone horizon, three 3 s leases)."""
    version = f"{BASE}+crash"
    wheel = build_wheel(tmp_path, version, crash_at_start=True)
    stop = threading.Event()
    with Client(fog.url, fog.api_key, replicas=1) as client:
        list(client.map(square, range(8), timeout=60))
        wait_for_spread(fog, {BASE: 4})
        rid = publish(fog, wheel, "--canary", "30%", "--min-outcomes", "4")
        ids = {n["name"]: n["id"] for n in admin_get(fog, "/v1/nodes")["nodes"]}
        canary = (
            canary_floor(rid, ids.values(), 0.3)
            | {i for i in ids.values() if in_canary(rid, i, 0.3)}
        ) - canary_baseline(rid, ids.values(), 0.3)
        n = len(canary)  # 2 (the floor) most often, 3 by the hash (one stays the baseline)
        assert n >= 2
        managed, *down = sorted(
            int(k.removeprefix("local-")) for k, i in ids.items() if i in canary
        )
        keep_running(fog, managed, stop)
        try:
            ro = work_until(fog, client, rid, {"done", "rolled_back"}, 180)
            assert ro["state"] == "rolled_back", ro["reason"]
            last = ro["history"][-1]
            f = last["new"]["failed"]  # two are enough: a third may be still starting then
            assert last["action"] == "rollback" and last["new"]["ok"] == 0 and 2 <= f <= n, last
            assert (
                f"rolled back at 30%: {f} of {f} canary devices did not come back on {version} "
                f"within 9 s (1 back on the old version"
            ) in last["reason"] and f"new {f}/{f} failed (100%)" in last["reason"], last["reason"]
            assert list(client.map(square, range(24), timeout=120)) == [x * x for x in range(24)]
            wait_for_spread(fog, {BASE: 5 - n})  # the managed one is back; the others gone
        finally:
            stop.set()
    assert f"re-executing as {version}" in log_of(fog, managed)
    assert "did not come up on this device last time" in log_of(fog, managed)
    for i in down:
        assert f"re-executing as {version}" in log_of(fog, i)
        proc = fog.nodes[i]
        assert proc is not None and proc.poll() == 70
    coordinator = (fog.dir / "coordinator.log").read_text()
    assert f"{ids[f'local-{managed}']} back {version}" in coordinator


def test_a_tampered_or_mislabelled_wheel_is_refused_with_a_sentence(
    fog: LocalFog, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path, f"{BASE}+x")
    url, auth = f"{fog.url}/v1/agent/releases", {"authorization": f"Bearer {fog.admin_key}"}
    cases = [
        ({"version": f"{BASE}+y"}, wheel.read_bytes(), 422, "says version"),
        ({"version": f"{BASE}+x"}, b"not a zip", 422, "not a wheel"),
        ({"version": "../../etc"}, wheel.read_bytes(), 422, "not an agent version"),
        ({"version": f"{BASE}+x", "canary": "0%"}, wheel.read_bytes(), 422, "share"),
    ]
    for params, body, status, words in cases:
        r = httpx.post(url, params=params, content=body, headers=auth)
        assert r.status_code == status and words in r.json()["error"], r.text
    r = httpx.post(
        url,
        params={"version": f"{BASE}+x"},
        content=wheel.read_bytes(),
        headers={"authorization": f"Bearer {fog.api_key}"},
    )
    assert r.status_code == 403
    r = httpx.get(f"{fog.url}/v1/rollouts/ro_nope", headers=auth)
    assert r.status_code == 404


# -- the store: one active roll-out per subject, cancel ----------------------------------------


def test_one_active_roll_out_per_subject_and_cancel_ends_it(store: Store) -> None:
    policy = RolloutPolicy(min_outcomes=5)
    ro = rows.start(
        store,
        kind="agent",
        subject="agent",
        old_version="1",
        new_version="2",
        policy=policy,
        now=1.0,
    )
    assert ro.state.value == "active" and ro.share == 0.1
    with pytest.raises(rows.RolloutRefused, match="still active"):
        rows.start(
            store,
            kind="agent",
            subject="agent",
            old_version="1",
            new_version="3",
            policy=policy,
            now=2.0,
        )
    done = rows.cancel(store, ro.id, "the operator", 3.0)
    assert done.state.value == "cancelled" and not done.serves_new("any-node")
    with pytest.raises(rows.RolloutRefused, match="over already"):
        rows.cancel(store, ro.id, "the operator", 4.0)
    steps = rows.steps_of(store, [ro.id])[ro.id]
    assert [s["action"] for s in steps] == ["start", "cancel"]
    assert rows.evaluate(store, 5.0) == []  # nothing active to judge


# -- app canaries ------------------------------------------------------------------------------


def app_code(where: Path, tag: str, factor: int, *, broken: bool = False) -> Path:
    """A customer's app: draw(x) answers (tag, x * factor), or raises when `broken`."""
    where.mkdir(parents=True)
    body = "    raise RuntimeError('this version is broken')\n" if broken else ""
    (where / "fogapp_canary.py").write_text(
        f"def draw(x):\n{body}    return ({tag!r}, x * {factor})\n"
    )
    return where


def app_work_until(
    fog: LocalFog, app: Any, rid: str, states: set[str], allowed: dict[str, int], limit_s: float
) -> dict[str, Any]:
    """Jobs of the app until the roll-out is in one of `states`; every result must be of a
    version in `allowed` (tag -> factor): a failed task fails the job, and the test."""
    deadline = time.monotonic() + limit_s
    while True:
        for x, (tag, y) in zip(range(20), app.map(range(20), timeout=120), strict=True):
            assert y == x * allowed[tag], (tag, x, y)
        ro = admin_get(fog, f"/v1/rollouts/{rid}")
        if ro["state"] in states:
            return dict(ro)
        assert time.monotonic() < deadline, f"still {ro['state']}: {ro['reason']}"


def test_an_app_version_that_fails_every_task_is_rolled_back_and_its_jobs_finish_on_the_old(
    fog: LocalFog, tmp_path: Path
) -> None:
    with Client(fog.url, fog.api_key, replicas=1) as client:
        one = client.publish_app(
            "canary", path=app_code(tmp_path / "one", "one", 2), function="fogapp_canary:draw"
        )
        r = subprocess.run(
            [sys.executable, "-m", "fogwheel", "apps", "publish", "canary",
             str(app_code(tmp_path / "two", "two", 3, broken=True)),
             "--function", "fogapp_canary:draw", "--canary", "25%"],
            env={"FOGWHEEL_COORDINATOR": fog.url, "FOGWHEEL_API_KEY": fog.api_key, "PATH": ""},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        [rid] = [w.removesuffix(":") for w in r.stderr.split() if w.startswith("ro_")]
        app = client.app("canary")
        ro = app_work_until(fog, app, rid, {"done", "rolled_back"}, {"one": 2}, 180)
        assert ro["state"] == "rolled_back", ro["reason"]
        last = ro["history"][-1]
        assert last["action"] == "rollback" and last["new"]["ok"] == 0
        assert last["new"]["failed"] >= 2 and last["old"]["ok"] > 0
        assert app.info()["current"] == one.id  # never changed
        assert list(app.map(range(6), timeout=60)) == [("one", 2 * x) for x in range(6)]


def test_a_healthy_app_version_reaches_every_device_and_becomes_current(
    fog: LocalFog,
    tmp_path: Path,
    browser: Any,  # noqa: F811 (tests/test_console.py's)
) -> None:
    with Client(fog.url, fog.api_key, replicas=1) as client:
        client.publish_app(
            "steady", path=app_code(tmp_path / "one", "one", 2), function="fogapp_canary:draw"
        )
        two = client.publish_app(
            "steady",
            path=app_code(tmp_path / "two", "two", 3),
            function="fogapp_canary:draw",
            make_current=False,
        )
        r = httpx.post(
            f"{fog.url}/v1/apps/steady/rollouts",
            json={"version": two.id, "canary": "25%", "min_outcomes": 5},
            headers={"authorization": f"Bearer {fog.api_key}"},
        )
        assert r.status_code == 201, r.text
        app = client.app("steady")
        ro = app_work_until(
            fog, app, r.json()["id"], {"done", "rolled_back"}, {"one": 2, "two": 3}, 180
        )
        assert ro["state"] == "done", ro["reason"]
        assert [h["action"] for h in ro["history"]] == ["start", "promote", "promote", "done"]
        assert app.info()["current"] == two.id
        assert list(app.map(range(6), timeout=60)) == [("two", 3 * x) for x in range(6)]
        # the console shows it, steps and reasons, and the operator the agents' spread
        page = signed_in(browser, fog, fog.admin_key)  # type: ignore[arg-type]
        page.click(".tab[data-view=rollouts]")
        page.wait_for_selector(f".rollout-now[data-rollout='{ro['id']}'][data-state=done]")
        text = page.inner_text("#rollouts")
        assert "promoted 25% → 50%" in text and "done at 100%" in text
        assert page.locator(".rollout-steps tbody tr").count() == 4
        assert BASE in page.inner_text("#agent-spread")
        shoot(page, tmp_path, "rollouts")
        no_script_ran(page)
        mine = signed_in(browser, fog, fog.api_key)  # type: ignore[arg-type]
        mine.click(".tab[data-view=rollouts]")
        mine.wait_for_selector(f".rollout-now[data-rollout='{ro['id']}']")
        assert mine.locator("#agent-spread").count() == 0  # the operator's alone
        no_script_ran(mine)
        # bad input: a 4xx with a sentence
        for body, status in [
            ({"version": "nope"}, 404),
            ({"version": two.id, "canary": "0%"}, 422),
            ({"version": two.id}, 409),  # it is current already: nothing to roll
        ]:
            r = httpx.post(
                f"{fog.url}/v1/apps/steady/rollouts",
                json=body,
                headers={"authorization": f"Bearer {fog.api_key}"},
            )
            assert r.status_code == status and r.json()["error"], r.text


def test_the_judge_counts_each_agent_version_and_promotes_then_rolls_back(store: Store) -> None:
    """Outcomes come from attempts by the version their node said (since it said it); a
    crash on the new version is a failure of it; every decision is a recorded step."""
    from fogwheel.protocol import ErrorInfo, SyncIn, TaskReport
    from tests.test_store import T0, job, join, ok

    old, new = join(store, "old"), join(store, "new")
    rows.note_agent_version(store, old, "1", T0)
    rows.note_agent_version(store, new, "2", T0)
    ro = rows.start(
        store,
        kind="agent",
        subject="agent",
        old_version="1",
        new_version="2",
        policy=RolloutPolicy(steps=(0.5, 1.0), min_outcomes=3),
        now=T0,
    )
    store.create_job("c1", job(40, max_attempts=5), T0)

    def run(node: str, n: int, t: float, crash: bool = False) -> None:
        leased = store.sync(node, SyncIn(want=n, slots_free=n), t).tasks
        assert len(leased) == n
        reports = [
            TaskReport(
                task_id=x["task_id"],
                attempt=x["attempt"],
                ok=False,
                error=ErrorInfo(kind="crash", type="", message="worker exited"),
            )
            if crash
            else ok(x["task_id"], x["attempt"])
            for x in leased
        ]
        store.sync(node, SyncIn(results=reports), t + 0.5)

    run(old, 3, T0 + 1)
    run(new, 2, T0 + 1)
    [held] = rows.evaluate(store, T0 + 2)
    assert held.decision.action == "hold" and (held.old, held.new) == (Arm(3, 0), Arm(2, 0))
    run(new, 1, T0 + 3)
    [promoted] = rows.evaluate(store, T0 + 4)
    assert promoted.decision.action == "promote" and promoted.new == Arm(3, 0)
    run(old, 3, T0 + 5)
    run(new, 3, T0 + 5, crash=True)
    [back] = rows.evaluate(store, T0 + 6)
    assert back.decision.action == "rollback", back.decision.reason
    assert (back.old, back.new) == (Arm(3, 0), Arm(0, 3))  # counted since the step began
    got = rows.get(store, ro.id)
    assert got is not None and got.state.value == "rolled_back"
    assert not got.serves_new(new) and got.wanted(new) == "1"
    steps = rows.steps_of(store, [ro.id])[ro.id]
    assert [s["action"] for s in steps] == ["start", "promote", "rollback"]
    assert (
        steps[-1]["new"] == {"ok": 0, "failed": 3} and "rolled back at 100%" in steps[-1]["reason"]
    )


def test_canary_devices_that_do_not_come_up_on_the_new_agent_are_its_failures(
    store: Store,
) -> None:
    """A device says it will re-execute (accepted); its first sync on the new version settles
    it up, its installed version coming back settles it back, a preflight that fails settles
    it back at once, silence past the bound settles it late; each but up is a failure."""
    from fogwheel.protocol import SyncIn
    from tests.test_store import T0, job, join, ok

    ids = [join(store, f"n{i}") for i in range(16)]
    for n in ids:
        rows.note_agent_version(store, n, "1", T0)
    ro = rows.start(
        store,
        kind="agent",
        subject="agent",
        old_version="1",
        new_version="2",
        policy=RolloutPolicy(steps=(0.25, 1.0), min_outcomes=3),
        now=T0,
    )
    floor = canary_floor(ro.id, ids, 0.25)  # 4 devices, and those the hash puts in
    canary = [n for n in ids if ro.wanted(n, floor, canary_baseline(ro.id, ids, 0.25)) == "2"]
    with pytest.raises(rows.RolloutRefused, match="not in the canary"):
        rows.switch_accepted(store, next(n for n in ids if n not in canary), "2", T0 + 1)
    others = [n for n in ids if n not in canary[:4]]  # on 1: its outcomes
    with pytest.raises(rows.RolloutRefused, match="no active agent roll-out offers"):
        rows.switch_accepted(store, canary[0], "3", T0 + 1)
    for n in canary[:3]:
        assert rows.switch_accepted(store, n, "2", T0 + 1) == ro.id
    rows.switch_accepted(store, canary[0], "2", T0 + 1.5)  # said twice: one switch
    store.create_job("c1", job(8), T0)
    for _ in range(8):  # the old version's outcomes
        for n in others:
            leased = store.sync(n, SyncIn(want=2, slots_free=2), T0 + 2).tasks
            done = [ok(x["task_id"], x["attempt"]) for x in leased]
            store.sync(n, SyncIn(results=done), T0 + 2.5)
    [held] = rows.evaluate(store, T0 + 3, come_up_s=10.0)
    assert held.decision.action == "hold" and held.devices is not None
    assert (held.devices.starting, held.devices.failed) == (3, 0), held.devices
    rows.note_agent_version(store, canary[0], "2", T0 + 4)  # its first sync on 2: up
    assert rows.switch_back(store, canary[1], "2", T0 + 4) == ro.id  # came back on 1
    rows.switch_accepted(store, canary[3], "2", T0 + 4, failed=True)  # its preflight failed
    with pytest.raises(rows.RolloutRefused, match="no open switch"):
        rows.switch_back(store, canary[1], "2", T0 + 5)
    [back] = rows.evaluate(store, T0 + 12, come_up_s=10.0)  # canary[2]: silent 11 s of 10
    assert back.decision.action == "rollback", back.decision.reason
    assert back.decision.reason.startswith(
        "rolled back at 25%: 3 of 4 canary devices did not come back on 2 within 10 s "
        "(2 back on the old version); new 3/3 failed (100%), old 0/8 (0%)"
    ), back.decision.reason
    steps = rows.steps_of(store, [ro.id])[ro.id]
    assert steps[-1]["action"] == "rollback" and steps[-1]["new"] == {"ok": 0, "failed": 3}


# -- the node's checks before it runs a byte of an offered agent ------------------------------


def _offer(key: Any, version: str, data: bytes) -> dict[str, Any]:
    from fogwheel.agent_release import sign_release

    sha = hashlib.sha256(data).hexdigest()
    return {
        "version": version,
        "sha": sha,
        "size": len(data),
        "signature": sign_release(key, version, sha, len(data)),
        "rollout": "ro_test",
    }


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_an_offer_runs_nothing_unless_signed_whole_and_of_the_package(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fogwheel.node import selfupdate as su
    from fogwheel.signing import public_key_b64

    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pub = public_key_b64(key)
    good = build_wheel(tmp_path, f"{BASE}+ok").read_bytes()

    def fetch_of(data: bytes) -> Any:
        return lambda version, dest, max_bytes: dest.write_bytes(data)

    cases = [
        (_offer(other, "9.9", good), good, "not the coordinator's"),  # another key signed it
        ({**_offer(key, "9.9", good), "size": len(good) + 1}, good, "not the coordinator's"),
        (_offer(key, "9.9", good), good[:-1] + b"x", "not the one signed"),  # tampered on the way
        (_offer(key, "9.9", z := _zip({"../evil.py": b"x"})), z, "not a file of the package"),
        (_offer(key, "9.9", z := _zip({"fogwheel/../../x": b"x"})), z, "not a file of the package"),
        (_offer(key, "9.9", z := _zip({"other/x.py": b"x"})), z, "not a file of the package"),
        (_offer(key, "9.9", z := _zip({}, symlink="fogwheel/link")), z, "not a regular file"),
        (_offer(key, "9.9", z := _zip({"fogwheel/x.py": b"1"})), z, "no fogwheel package"),
        (_offer(key, "9.9", good), good, "does not start here"),  # it says another version
        ({"version": BASE + "+old", "rollout": "r"}, b"", "installed with"),
    ]
    for offer, served, words in cases:
        with pytest.raises(su.UpdateRefused, match=words):
            su.prepare(offer, public_key=pub, data_dir=tmp_path / "node", fetch=fetch_of(served))
    assert sorted(p.name for p in (tmp_path / "node" / "agent").iterdir()) == []  # nothing left
    target = su.prepare(
        _offer(key, f"{BASE}+ok", good), public_key=pub, data_dir=tmp_path / "node",
        fetch=fetch_of(good),
    )  # fmt: skip
    assert target.path == tmp_path / "node" / "agent" / f"{BASE}+ok"
    assert (target.path / "fogwheel" / "__init__.py").is_file()


def test_a_version_that_never_synced_is_not_tried_again_at_once(tmp_path: Path) -> None:
    from fogwheel.node import selfupdate as su

    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / su.TRYING).write_text(f"{BASE}+crashy\n")  # re-executed, never synced
    updater = su.SelfUpdater(tmp_path, lambda: "", lambda *a: None, lambda t: None, lambda: 100.0)
    assert not (tmp_path / "agent" / su.TRYING).exists()
    updater.offered({"version": f"{BASE}+crashy", "sha": "a" * 64, "size": 1, "signature": "x"})
    assert not updater._busy  # refused without a try
    (tmp_path / "agent" / su.TRYING).write_text(f"{BASE}\n")  # this very version: it came up
    updater = su.SelfUpdater(tmp_path, lambda: "", lambda *a: None, lambda t: None, lambda: 100.0)
    updater.offered(None)  # its first answered sync
    assert not (tmp_path / "agent" / su.TRYING).exists()
