"""Apps (docs/apps.md) on a real fog: versions published as signed bundles, work that runs the
current version (bound when each task is leased, recorded per attempt), the current version
switched, another customer's apps invisible (404), a tampered bundle refused by the node, and
bad input answered with a 4xx that says what is wrong."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fogwheel import apps
from fogwheel.client import Client
from fogwheel.core import apps as core
from fogwheel.localfog import LocalFog
from fogwheel.protocol import JobIn, SyncIn, TaskIn
from fogwheel.store import Store
from fogwheel.store import apps as app_rows
from tests.test_store import T0, join, ok, value


def code_dir(where: Path, tag: str, factor: int) -> Path:
    """A customer's project: a package the nodes do not have, and a module that uses it."""
    (where / "fogapp_lib").mkdir(parents=True)
    (where / "fogapp_lib" / "__init__.py").write_text(f"TAG = {tag!r}\n")
    (where / "fogapp_render.py").write_text(
        "import fogapp_lib\n\n"
        "def draw(x, scale=1):\n"
        f"    return (fogapp_lib.TAG, x * {factor} * scale)\n"
    )
    return where


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    with LocalFog(2, lease_seconds=5.0, workdir=tmp_path_factory.mktemp("fog")) as f:
        yield f


@pytest.fixture
def client(fog: LocalFog) -> Iterator[Client]:
    with Client(fog.url, fog.api_key, replicas=1) as c:
        yield c


@pytest.fixture(scope="module")
def bob_key(fog: LocalFog) -> str:
    r = httpx.post(
        f"{fog.url}/v1/customers",
        params={"name": "bob"},
        headers={"authorization": f"Bearer {fog.admin_key}"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["api_key"])


def attempts_of(client: Client, job_id: int) -> list[dict[str, object]]:
    return [h for t in client.tasks(job_id) for h in t["history"]]


def test_results_come_from_the_current_version_and_follow_a_switch(
    client: Client, tmp_path: Path
) -> None:
    one = client.publish_app(
        "render", path=code_dir(tmp_path / "a", "one", 2), function="fogapp_render:draw",
        label="1.0",
    )  # fmt: skip
    assert one.current and one.new and one.label == "1.0"
    again = client.publish_app(
        "render", path=code_dir(tmp_path / "a2", "one", 2), function="fogapp_render:draw"
    )
    assert again.id == one.id and not again.new  # the same bundle is the same version
    render = client.app("render")
    assert list(render.map(range(3), timeout=60)) == [("one", 0), ("one", 2), ("one", 4)]
    assert render.submit(5, scale=10).result(60) == ("one", 100)

    two = client.publish_app(
        "render", path=code_dir(tmp_path / "b", "two", 3), function="fogapp_render:draw"
    )
    assert two.id != one.id and two.label == "v2" and two.current
    assert list(render.map([1, 2], timeout=60)) == [("two", 3), ("two", 6)]

    render.set_current("1.0")
    fut = render.submit(7)
    assert fut.result(60) == ("one", 14)
    info = render.info()
    assert info["current"] == one.id
    by_id = {v["id"]: v for v in info["versions"]}
    assert [v["label"] for v in info["versions"]] == ["1.0", "v2"]
    # every attempt recorded the version it ran: 5 calls of one, 2 of two, all finished
    ran = {vid: sum(v["outcomes"].values()) for vid, v in by_id.items()}
    assert ran == {one.id: 5, two.id: 2}, by_id
    assert "running" not in json.dumps([v["outcomes"] for v in by_id.values()])


def test_a_command_app_runs_its_command_line_then_the_tasks_arguments(client: Client) -> None:
    v = client.publish_app("greet", command=["/bin/sh", "-c", 'echo "hello $0 $1"'])
    assert v.command == ("/bin/sh", "-c", 'echo "hello $0 $1"')
    out = client.app("greet").submit("fog", "world").result(60)
    assert out.stdout.strip() == b"hello fog world" or out.stdout.strip() == "hello fog world"


def test_another_customer_never_sees_an_app(fog: LocalFog, client: Client, bob_key: str) -> None:
    client.publish_app("secret", function="json:dumps")  # from the node's own Python
    assert client.app("secret").submit([1, 2]).result(60) == "[1, 2]"
    bob = httpx.Client(base_url=fog.url, headers={"authorization": f"Bearer {bob_key}"})
    with bob:
        for method, path, body in [
            ("GET", "/v1/apps/secret", None),
            ("POST", "/v1/apps/secret/current", {"version": "v1"}),
            ("POST", "/v1/apps/secret/jobs", {"tasks": [{"argv": ["x"]}]}),
        ]:
            r = bob.request(method, path, json=body)
            assert r.status_code == 404, (path, r.text)
            assert "no app secret of yours" in r.json()["error"]
        assert [a["name"] for a in bob.get("/v1/apps").json()["apps"]] == []
    with Client(fog.url, bob_key, replicas=1) as bobs:  # his own app of the same name
        mine = bobs.publish_app("secret", function="json:loads")
        assert bobs.app("secret").submit("[3]").result(60) == [3]
    assert client.app("secret").info()["current"] != mine.id
    assert client.app("secret").submit([4]).result(60) == "[4]"


def test_a_tampered_bundle_is_refused_by_the_node(
    fog: LocalFog, client: Client, tmp_path: Path
) -> None:
    v = client.publish_app(
        "tampered", path=code_dir(tmp_path / "c", "real", 1), function="fogapp_render:draw"
    )
    code = client.app("tampered").info()["versions"][0]["code"]
    evil = apps.zip_code(code_dir(tmp_path / "evil", "evil", 1))
    assert hashlib.sha256(evil).hexdigest() != code["sha"]
    for i in range(fog.n_nodes):  # each node's cached copy of the code, changed on its disk
        cache = fog.dir / f"node-{i}" / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        (cache / code["sha"]).write_bytes(evil)
    [fut] = client.app("tampered").submit_many([((1,), {})], max_attempts=5)
    assert fut.result(90) == ("real", 1)  # never the changed code's answer
    history = attempts_of(client, fut.job_id)
    # each node refused its changed copy (and dropped it), then ran the code fetched afresh
    assert [h["outcome"] for h in history[:2]] == ["lost", "lost"], history
    assert history[-1]["outcome"] == "accepted"
    logs = "".join((fog.dir / f"node-{i}.log").read_text() for i in range(fog.n_nodes))
    assert logs.count(f"does not match its SHA-256 {code['sha'][:12]}") == 2, logs[-3000:]
    assert client.app("tampered").info()["current"] == v.id


def test_bad_input_is_a_4xx_that_says_what_is_wrong(
    fog: LocalFog, client: Client, tmp_path: Path
) -> None:
    good = core.Manifest("badin", "python", entry="json:dumps")
    http = httpx.Client(base_url=fog.url, headers=fog.headers, timeout=30)

    def publish(name: str, raw: bytes, **extra: object) -> httpx.Response:
        sha = client.put_blob(raw, upload=True).sha
        return http.post(f"/v1/apps/{name}/versions", json={"manifest": sha, **extra})

    with http:
        cases = [
            (publish("badin", good.canonical().replace(b'{"app"', b'{ "app"')), 422, "canonical"),
            (publish("other", good.canonical()), 422, "is of app badin, not other"),
            (publish("badin", b"[1]"), 422, "exactly the keys"),
            (publish("badin", good.canonical(), label="no spaces"), 422, "label"),
            (
                http.post("/v1/apps/badin/versions", json={"manifest": "0" * 64}),
                422,
                "not uploaded",
            ),
            (http.post("/v1/apps/Bad Name/versions", json={"manifest": "0" * 64}), 422, "name"),
            (http.get("/v1/apps/nothing-here"), 404, "no app nothing-here"),
        ]
        missing_code = core.Manifest(
            "badin", "python", entry="m:f", code=core.Code("1" * 64, 10)
        ).canonical()
        cases.append((publish("badin", missing_code), 422, "code 111111111111… is not uploaded"))
        assert publish("badin", good.canonical(), label="1").status_code == 201
        cmd = core.Manifest("badin", "command", command=("/bin/true",)).canonical()
        cases += [
            (publish("badin", cmd), 409, "runs python versions"),
            (
                publish(
                    "badin",
                    core.Manifest("badin", "python", entry="json:loads").canonical(),
                    label="1",
                ),
                409,
                "label 1 is taken",
            ),
            (http.post("/v1/apps/badin/current", json={"version": "v9"}), 404, "no version 'v9'"),
            (http.post("/v1/apps/badin/jobs", json={"tasks": [{"argv": ["x"]}]}), 422, "send args"),
            (http.post("/v1/apps/badin/jobs", json={"tasks": []}), 422, "tasks"),
            (
                http.post(
                    "/v1/apps/badin/jobs",
                    json={"tasks": [{"inputs": {core.CODE_FILE: {"sha": "2" * 64, "size": 1}}}]},
                ),
                422,
                "the app's own code",
            ),
        ]
        for r, status, words in cases:
            assert r.status_code == status, (words, r.text)
            assert words in r.text, (words, r.text)
    with pytest.raises(apps.AppCodeError, match="no such file"):
        client.publish_app("badin", path=tmp_path / "none", function="m:f")
    time.sleep(0)  # nothing ran: no task of a refused job was made


def fogwheel(fog: LocalFog, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FOGWHEEL_COORDINATOR": fog.url, "FOGWHEEL_API_KEY": fog.api_key}
    return subprocess.run(
        [sys.executable, "-m", "fogwheel", *args], env=env, capture_output=True, text=True
    )


def test_the_cli_publishes_shows_and_switches_versions(fog: LocalFog, tmp_path: Path) -> None:
    first = fogwheel(
        fog, "apps", "publish", "cli-render", str(code_dir(tmp_path / "a", "a", 1)),
        "--function", "fogapp_render:draw", "--version", "1.0",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "cli-render 1.0: published, current" in first.stderr
    one = first.stdout.strip()
    second = fogwheel(
        fog, "apps", "publish", "cli-render", str(code_dir(tmp_path / "b", "b", 1)),
        "-f", "fogapp_render:draw", "--no-current",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "cli-render v2: published, not current" in second.stderr
    two = second.stdout.strip()
    shown = fogwheel(fog, "apps", "show", "cli-render")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].startswith(f"* 1.0          {one[:12]}  fogapp_render:draw"), shown.stdout
    assert lines[2].startswith(f"  v2           {two[:12]}"), shown.stdout
    switched = fogwheel(fog, "apps", "set-current", "cli-render", two[:10])
    assert switched.returncode == 0 and switched.stdout.strip() == two, switched.stderr
    with Client(fog.url, fog.api_key, replicas=1) as c:
        assert c.app("cli-render").submit(2).result(60) == ("b", 2)
    listed = fogwheel(fog, "apps", "list")
    assert any(
        line.split()[:3] == ["cli-render", "python", "2"] for line in listed.stdout.splitlines()
    )
    missing = fogwheel(fog, "apps", "set-current", "cli-render", "nine")
    assert missing.returncode != 0 and "no version 'nine'" in missing.stderr
    bad = fogwheel(fog, "apps", "publish", "cli-render")
    assert bad.returncode != 0 and "PATH --function module:attr, or -- prog args" in bad.stderr


def test_a_function_app_runs_from_its_python_environment(client: Client, tmp_path: Path) -> None:
    from fogwheel import Env
    from tests.test_envs import make_wheel

    wheel = make_wheel(
        tmp_path,
        "fogapppkg",
        "1.0",
        {"fogapppkg/__init__.py": b"def value(x):\n    return x + 41\n"},
    )
    v = client.publish_app("from-env", function="fogapppkg:value", env=Env(pip=[str(wheel)]))
    assert v.env is not None and v.code_size is None
    assert list(client.app("from-env").map([1, 2], timeout=120)) == [42, 43]


def test_a_call_by_reference_and_with_env_run_in_the_environment_asked(
    fog: LocalFog, client: Client, tmp_path: Path
) -> None:
    from fogwheel import Env
    from tests.test_envs import make_wheel

    body = b"def value(x):\n    return x + 100\n"
    wheel = make_wheel(tmp_path, "fogcallpkg", "1.0", {"fogcallpkg/__init__.py": body})
    called = fogwheel(fog, "call", "fogcallpkg:value", "5", "--pip", str(wheel))
    assert called.returncode == 0 and called.stdout.strip() == "105", called.stderr
    code = code_dir(tmp_path / "code", "called", 2)
    shipped = fogwheel(fog, "call", "fogapp_render:draw", "4", "--path", str(code))
    assert shipped.returncode == 0 and shipped.stdout.strip() == '["called", 8]', shipped.stderr
    changed = code_dir(tmp_path / "code2", "changed", 3)  # the same module name, other code
    again = fogwheel(fog, "call", "fogapp_render:draw", "4", "--path", str(changed))
    assert again.returncode == 0 and again.stdout.strip() == '["changed", 12]', again.stderr
    bad = fogwheel(fog, "call", "not a reference")
    assert bad.returncode != 0 and "is not a function by reference" in bad.stderr

    def plus(x: int) -> int:
        import fogcallpkg

        return int(fogcallpkg.value(x))

    env = Env(pip=[str(wheel)])
    assert client.with_env(env).submit(plus, 1).result(60) == 101
    assert list(client.with_env(env).map(plus, [2, 3], timeout=60)) == [102, 103]


# -- the store: binding at lease time, and a job's environment on its devices -----------------


def _app_job(n: int) -> JobIn:
    return JobIn(
        kind="python",
        tasks=[TaskIn(args=value(str(i).encode())) for i in range(n)],
        replicas="adaptive",
    )


def test_a_replica_runs_its_siblings_version_and_new_leases_the_current_one(store: Store) -> None:
    a, b = join(store, "a", cores=1), join(store, "b", cores=1)
    with store.tx() as c:
        app_id = app_rows.ensure_app(c, "c1", "pinned", "python", T0)
        v1, _ = app_rows.add_version(
            c, app_id, core.Manifest("pinned", "python", entry="json:dumps"), "s1", None, {},
            set(), T0,
        )  # fmt: skip
        v2, _ = app_rows.add_version(
            c, app_id, core.Manifest("pinned", "python", entry="json:loads"), "s2", None, {},
            set(), T0,
        )  # fmt: skip
    assert v1["current"] and not v2["current"]  # the first version is current until changed
    store.create_job("c1", _app_job(1), T0, app_id=app_id)
    [first] = store.sync(a, SyncIn(want=1, slots_free=1), T0).tasks
    assert first["app"]["version"] == v1["id"] and first["fn"] is None
    assert json.loads(first["app"]["manifest"])["entry"] == "json:dumps"
    store.sync(a, SyncIn(results=[ok(first["task_id"], 1, b"x")]), T0 + 1)
    with store.tx() as c:
        app_rows.set_current(c, app_id, "v2")
    [check] = store.sync(b, SyncIn(want=1, slots_free=1), T0 + 2).tasks
    assert check["task_id"] != first["task_id"]  # the replica that checks a's result ...
    assert check["app"]["version"] == v1["id"]  # ... runs the version a ran
    store.create_job("c1", _app_job(1), T0 + 3, app_id=app_id)
    [fresh] = store.sync(a, SyncIn(want=1, slots_free=1), T0 + 3).tasks
    assert fresh["app"]["version"] == v2["id"]  # a new lease: the current version
    with store.read() as c:
        counts = app_rows.outcomes(c, app_id)
        assert app_rows.node_may_read(c, a, "0" * 64) is False
    assert counts == {v1["id"]: {"reported": 1, "running": 1}, v2["id"]: {"running": 1}}, counts


def test_env_progress_counts_the_devices_still_preparing_the_environment(store: Store) -> None:
    from fogwheel.core import envlock
    from fogwheel.node.envs import this_platform
    from fogwheel.store.envs import env_progress, register_env

    wheel = b"a wheel's bytes"
    sha = hashlib.sha256(wheel).hexdigest()
    store.own_blob("c1", sha, len(wheel))
    lock = envlock.make_lock(
        this_platform().python, [envlock.wheel_of("p-1.0-py3-none-any.whl", sha, len(wheel))]
    )
    register_env(store, "c1", lock, T0)
    node = join(store, "a", cores=2)
    platform = this_platform().describe()
    store.sync(node, SyncIn(want=0, envs=[], env_platform=platform), T0)
    job_id = store.create_job("c1", JobIn(**{**_app_job(2).model_dump(), "env": lock.sha}), T0)
    with store.read() as c:
        assert env_progress(c, "c1", job_id) == {"env": lock.sha, "nodes": 0, "preparing": 0}
    assert len(store.sync(node, SyncIn(want=2, slots_free=2), T0 + 1).tasks) == 2
    with store.read() as c:
        assert env_progress(c, "c1", job_id) == {"env": lock.sha, "nodes": 1, "preparing": 1}
    store.sync(node, SyncIn(envs=[lock.sha]), T0 + 2)  # built: the node says it holds it
    with store.read() as c:
        assert env_progress(c, "c1", job_id) == {"env": lock.sha, "nodes": 1, "preparing": 0}
        assert env_progress(c, "someone else", job_id) is None


def test_the_sdk_says_when_devices_are_preparing_the_environment(tmp_path: Path) -> None:
    """A device that holds a task of the job but has not built its environment yet: the
    client's wait notices say "preparing environment on 1 device" (a node driven by hand
    over HTTP, so that it stays in the middle of its build)."""
    from fogwheel import Env
    from fogwheel.client import Wait
    from fogwheel.node.envs import this_platform
    from tests.test_envs import make_wheel

    wheel = make_wheel(tmp_path, "fogprepkg", "1.0", {"fogprepkg/__init__.py": b"X = 1\n"})
    heard: list[Wait | None] = []
    with LocalFog(0, workdir=tmp_path / "fog") as fog:
        join = {"token": fog.join_token, "name": "slow", "cores": 1, "memory_mb": 512, "disk_mb": 9}
        cred = httpx.post(f"{fog.url}/v1/nodes/join", json=join, timeout=10).json()["credential"]
        node = httpx.Client(base_url=fog.url, headers={"authorization": f"Bearer {cred}"})
        with (
            node,
            Client(fog.url, fog.api_key, replicas=1, on_wait=lambda _j, w: heard.append(w)) as c,
        ):
            fut = c.with_env(Env(pip=[str(wheel)])).submit(json.dumps, [1])
            body = {
                "want": 1,
                "slots_free": 1,
                "envs": [],
                "env_platform": this_platform().describe(),
            }
            deadline = time.monotonic() + 30
            while not node.post("/v1/nodes/me/sync", json=body).json()["tasks"]:
                assert time.monotonic() < deadline, "the node was never leased the task"
                time.sleep(0.2)
            assert c.env_status(fut.job_id) == {"env": c.env_lock(Env(pip=[str(wheel)])),
                                                "nodes": 1, "preparing": 1}  # fmt: skip
            while not any(w and w.reason == "preparing-environment" for w in heard):
                assert time.monotonic() < deadline, heard
                time.sleep(0.2)
            fut.cancel()
    said = [w for w in heard if w and w.reason == "preparing-environment"]
    assert said[0].sentence.startswith("preparing environment on 1 device ") and not said[0].stuck


def test_mapping_an_app_over_nothing_submits_nothing(client: Client) -> None:
    client.publish_app("empty-map", function="json:dumps")
    assert list(client.app("empty-map").map([])) == []
