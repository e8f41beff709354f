"""The same lifecycle cases in-process (SDK -> app -> agents through the transport seam, no
sockets) and as real processes (a coordinator and agents started by LocalFog).

In-process, the coordinator is `build_app(...)` behind Starlette's `TestClient`; the SDK is
`Client(http=that client)` and each agent is `Agent(config, http=...)` running in a thread,
its requests passed to the same client through a `Link` that a test can cut, which is how a
node is lost without a word (a partition; as real processes, a SIGKILL)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from fogwheel import Client
from fogwheel.coordinator.server import CoordinatorConfig, build_app, open_store
from fogwheel.errors import RemoteTraceback, TaskCancelled
from fogwheel.localfog import LocalFog
from fogwheel.node.agent import Agent, NodeConfig
from fogwheel.node.sandbox import detect
from fogwheel.signing import join_string

API_KEY = "fwc_" + "i" * 32
JOIN_TOKEN = "fwj_" + "j" * 32
LEASE_S = 2.0  # short, so that a lost node's task comes back within seconds
NODES = 3
SLEEP_S = 419  # a command nobody else runs: its process is findable with ps


class Link(httpx.BaseTransport):
    """An agent's way to the in-process app: every request handed to the shared TestClient,
    until the link is cut (then a connection error, as from a vanished network)."""

    def __init__(self, app: TestClient) -> None:
        self.app = app
        self.cut = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.cut:
            raise httpx.ConnectError("link cut", request=request)
        r = self.app.send(request)
        headers = [(k, v) for k, v in r.headers.multi_items() if k != "content-encoding"]
        return httpx.Response(r.status_code, headers=headers, content=r.content)


class InProcessFog:
    """A coordinator app and node agents in this process, joined by the transport seam."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        config = CoordinatorConfig(
            data_dir=workdir / "coordinator",
            api_key=API_KEY,
            join_token=JOIN_TOKEN,
            lease_seconds=LEASE_S,
        )
        config.data_dir.mkdir(parents=True)
        self.store, _ = open_store(config)
        self.http = TestClient(build_app(config, self.store))
        self.http.__enter__()
        key = self.http.get("/v1/coordinator/key").json()["public_key"]
        self.join = join_string(JOIN_TOKEN, key)
        self.agents: list[Agent] = []
        self.links: list[Link] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def client(self) -> Client:
        return Client(api_key=API_KEY, http=self.http, replicas=1)

    def add_node(self) -> None:
        i = len(self.agents)
        link = Link(self.http)
        config = NodeConfig(
            coordinator="http://testserver",
            token=self.join,
            cores=1,
            data_dir=self.dir / f"node-{i}",
            name=f"inproc-{i}",
            serve=False,  # no chunk server: no sockets
            unsafe_no_sandbox=detect() is None,
        )
        agent = Agent(config, http=httpx.Client(transport=link, base_url="http://testserver"))
        thread = threading.Thread(target=self._run, args=(agent,), name=f"agent-{i}", daemon=True)
        self.agents.append(agent)
        self.links.append(link)
        self.threads.append(thread)
        thread.start()

    def _run(self, agent: Agent) -> None:
        try:
            agent.run()
        except BaseException as e:  # seen by the test at the end
            self.errors.append(e)

    def node_id(self, i: int) -> str | None:
        return self.agents[i].node_id

    def lose_node(self, i: int) -> None:
        self.links[i].cut = True

    def live_nodes(self) -> int:
        r = self.http.get("/v1/nodes", headers={"authorization": f"Bearer {API_KEY}"})
        return sum(n["state"] == "up" for n in r.json()["nodes"])

    def close(self) -> None:
        for agent in self.agents:
            agent.request_stop()
            agent.request_stop()  # the second time: abort, kill what runs
        for thread in self.threads:
            thread.join(timeout=30)
        self.http.__exit__(None, None, None)
        self.store.close()
        assert not [t for t in self.threads if t.is_alive()], "an agent did not stop"
        assert not self.errors, self.errors


class ProcessFog:
    """The same, as real processes on loopback (LocalFog)."""

    def __init__(self, workdir: Path) -> None:
        self.fog = LocalFog(0, lease_seconds=LEASE_S, workdir=workdir)
        self.fog.start()

    def client(self) -> Client:
        return Client(self.fog.url, self.fog.api_key, replicas=1)

    def add_node(self) -> None:
        self.fog.add_node()

    def node_id(self, i: int) -> str | None:
        path = self.fog.dir / f"node-{i}" / "node.json"
        return json.loads(path.read_text())["node_id"] if path.exists() else None

    def lose_node(self, i: int) -> None:
        self.fog.kill_node(i, signal.SIGKILL)

    def live_nodes(self) -> int:
        r = httpx.get(f"{self.fog.url}/v1/nodes", headers=self.fog.headers, timeout=10)
        return sum(n["state"] == "up" for n in r.json()["nodes"])

    def close(self) -> None:
        self.fog.stop()


Fog = InProcessFog | ProcessFog


@pytest.fixture(scope="module", params=["in-process", "processes"])
def fog(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fog]:
    workdir = tmp_path_factory.mktemp(request.param)
    f: Fog = InProcessFog(workdir) if request.param == "in-process" else ProcessFog(workdir)
    try:
        for _ in range(NODES):
            f.add_node()
        wait_for(f"{NODES} nodes to join", lambda: f.live_nodes() >= NODES)
        yield f
    finally:
        f.close()


@pytest.fixture
def client(fog: Fog) -> Iterator[Client]:
    with fog.client() as c:
        yield c


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return got


def square(x: int) -> int:
    return x * x


def divide(a: float, b: float) -> float:
    return a / b


def nap_then(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


def sleepers() -> int:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return sum(line.split() == ["sleep", str(SLEEP_S)] for line in ps.stdout.splitlines())


# -- the cases ------------------------------------------------------------------------------


def test_submit_map_and_result_round_trip(client: Client) -> None:
    assert client.submit(square, 12).result(timeout=60) == 144
    assert list(client.map(square, range(20), timeout=60)) == [x * x for x in range(20)]


def test_a_task_error_comes_back_with_the_node_traceback(client: Client) -> None:
    with pytest.raises(ZeroDivisionError) as info:
        client.submit(divide, 1, 0).result(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback) and "in divide" in cause.tb


def test_a_cancelled_job_is_stopped_on_its_node(client: Client) -> None:
    fut = client.run(["sleep", str(SLEEP_S)], wall_s=120)
    wait_for("the command to start", lambda: sleepers() >= 1)
    client.cancel(fut.job_id)
    assert fut.cancelled() or isinstance(fut.exception(timeout=30), TaskCancelled)
    [task] = client.tasks(fut.job_id)
    assert task["state"] == "cancelled"
    # the node hears of it at its next sync (lost) and kills the program
    wait_for("the node to stop the command", lambda: sleepers() == 0, timeout=30)


def test_a_lost_nodes_task_is_run_again_elsewhere(fog: Fog, client: Client) -> None:
    fut = client.submit(nap_then, 7, 3.0)

    def holder() -> str | None:
        history = client.tasks(fut.job_id)[0]["history"]
        return history[0]["node_id"] if history else None

    node = wait_for("the task to be leased", holder)
    [victim] = [i for i in range(NODES) if fog.node_id(i) == node]
    fog.lose_node(victim)
    assert fut.result(timeout=60) == 7
    history = client.tasks(fut.job_id)[0]["history"]
    assert (history[0]["node_id"], history[0]["outcome"]) == (node, "lost")
    assert history[-1]["node_id"] != node and history[-1]["outcome"] == "accepted"


# -- failover -------------------------------------------------------------------------------


class Coordinators(httpx.BaseTransport):
    """Several coordinator URLs of one fog, all served by the one in-process app (as several
    processes on one database would be); any of them can be taken down."""

    def __init__(self, app: TestClient) -> None:
        self.app = app
        self.down: set[str] = set()
        self.asked: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.asked.append(host)
        if host in self.down:
            raise httpx.ConnectError(f"{host} is down", request=request)
        request.url = request.url.copy_with(host="testserver")
        request.headers["host"] = "testserver"
        return Link(self.app).handle_request(request)


def test_a_node_fails_over_to_the_next_coordinator_when_joining_and_syncing(
    tmp_path: Path,
) -> None:
    fog = InProcessFog(tmp_path)
    routes = Coordinators(fog.http)
    routes.down.add("a.test")  # down from the start: the node joins through b
    config = NodeConfig(
        coordinator="http://a.test:8470, http://b.test:8470/v1",
        coordinators=["http://c.test:8470"],
        token=fog.join,
        cores=1,
        data_dir=tmp_path / "node",
        serve=False,
        unsafe_no_sandbox=detect() is None,
    )
    agent = Agent(config, http=httpx.Client(transport=routes))
    assert agent.urls == ["http://a.test:8470", "http://b.test:8470", "http://c.test:8470"]
    thread = threading.Thread(target=fog._run, args=(agent,), daemon=True)
    fog.agents.append(agent)
    fog.threads.append(thread)
    thread.start()
    try:
        with fog.client() as client:
            assert client.submit(square, 3).result(timeout=60) == 9
            routes.down = {"b.test"}  # b goes down mid-run: the node moves on to c
            routes.asked.clear()
            assert list(client.map(square, range(5), timeout=60)) == [0, 1, 4, 9, 16]
            wait_for("a sync through c", lambda: "c.test" in routes.asked)
            routes.down = {"a.test", "b.test", "c.test"}  # all down: it waits, then retries
            time.sleep(1.0)
            routes.down = set()
            assert client.submit(square, 4).result(timeout=60) == 16
    finally:
        fog.close()
    assert json.loads((tmp_path / "node" / "node.json").read_text())["coordinator"] == (
        "http://b.test:8470"
    )


def test_the_node_command_takes_several_coordinators_separated_by_commas() -> None:
    from fogwheel.cli import _node_coordinators

    assert _node_coordinators("http://a:1/v1, http://b:2/") == "http://a:1,http://b:2"
    with pytest.raises(Exception, match="not a coordinator URL"):
        _node_coordinators("http://a:1,ftp://b")
