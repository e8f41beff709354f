"""The SDK against several coordinators of one fog, and through a transport of its caller's.

`Client(url, …)` takes several coordinator URLs and moves to the next on a transport error
or a 502/503/504, sending a request again only where that is safe; `Client(…, http=…)` sends
every request through a ready `httpx.Client`, such as a `TestClient` over the app in this
process. The servers here are real: a coordinator app, a coordinator process, and a small
loopback HTTP server that answers what a failing balancer would.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel import Client, retry
from fogwheel import client as client_module
from fogwheel.coordinator.server import CoordinatorConfig, build_app, open_store
from fogwheel.errors import ApiError, ConfigError, CoordinatorUnreachable, TaskCancelled
from fogwheel.localfog import LocalFog

API_KEY = "fwc_" + "k" * 32


def _double(x: int) -> int:
    return 2 * x


# -- the transport seam ---------------------------------------------------------------------


@pytest.fixture
def app_client(tmp_path) -> Iterator[TestClient]:
    """A coordinator app in this process, reached through Starlette's TestClient."""
    config = CoordinatorConfig(data_dir=tmp_path, api_key=API_KEY, join_token="fwj_join")
    store, _ = open_store(config)
    with TestClient(build_app(config, store)) as http:
        yield http
    store.close()


def test_the_sdk_runs_through_a_ready_http_client_without_sockets(app_client) -> None:
    with Client(api_key=API_KEY, http=app_client, cancel_on_exit=False) as fog:
        assert fog.url == "http://testserver"
        blob = fog.put_blob(b"x" * 100_000)  # large: a real PUT through the app
        assert fog.blob(blob.sha).size == 100_000
        futures = fog.submit_many(_double, [((i,), {}) for i in range(3)], name="seam")
        job = fog.job(futures[0].job_id)
        assert (job["name"], job["total"]) == ("seam", 3)
        fog.cancel(futures[0].job_id)
        # the results watcher long-polls through the same client and hears of the cancel
        for f in futures:
            assert f.cancelled() or isinstance(f.exception(timeout=30), TaskCancelled)
    assert app_client.get("/v1/health").status_code == 200  # the owner's client stays open


def test_a_ready_http_client_needs_no_url_but_an_api_key(app_client) -> None:
    with pytest.raises(ConfigError, match="API key"):
        Client(http=app_client)
    app_client.headers["authorization"] = f"Bearer {API_KEY}"
    with Client(http=app_client) as fog:  # its own header will do
        assert fog.jobs() == []


# -- the failover policy, pure ----------------------------------------------------------------


def test_urls_come_as_a_list_or_with_commas_normalised_and_once_each() -> None:
    assert retry.coordinator_urls("http://a:1/v1, http://b:2/,http://a:1") == [
        "http://a:1",
        "http://b:2",
    ]
    assert retry.coordinator_urls(["http://a:1,http://b:2", "http://c:3"]) == [
        "http://a:1",
        "http://b:2",
        "http://c:3",
    ]
    with pytest.raises(ValueError, match="not a coordinator URL"):
        retry.coordinator_urls("http://a:1,ftp://b")
    with pytest.raises(ValueError, match="no coordinator URL"):
        retry.coordinator_urls(" , ")


def test_a_client_stays_on_one_coordinator_and_waits_only_after_a_full_round() -> None:
    c = retry.Coordinators(["http://a", "http://b", "http://c"])
    c.failed("http://a")
    assert (c.current, c.round_ended()) == ("http://b", False)
    c.failed("http://a")  # a late failure of one already left moves nothing
    assert c.current == "http://b"
    c.failed("http://b")
    c.failed("http://c")
    assert (c.current, c.round_ended(), c.rounds_failed()) == ("http://a", True, 1)
    c.answered("http://a")
    assert (c.current, c.round_ended(), c.rounds_failed()) == ("http://a", False, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4),
    st.lists(st.tuples(st.sampled_from(["failed", "answered"]), st.integers(0, 3)), max_size=40),
)
def test_failover_visits_every_url_once_a_round_and_an_answer_ends_the_round(
    n: int, events: list[tuple[str, int]]
) -> None:
    urls = [f"http://c{i}" for i in range(n)]
    c = retry.Coordinators(urls)
    for what, i in events:
        getattr(c, what)(urls[i % n])
        assert c.current in urls
    # from wherever it stands: failing the current one n times visits each once, ends a round
    c.answered(c.current)
    visited = []
    for k in range(n):
        visited.append(c.current)
        c.failed(c.current)
        assert c.round_ended() is (k == n - 1)
    assert sorted(visited) == urls and c.current == visited[0] and c.rounds_failed() == 1
    c.answered(c.current)
    assert (c.rounds_failed(), c.round_ended()) == (0, False)


@pytest.mark.parametrize(
    ("method", "idempotent", "sent", "again"),
    [
        ("GET", None, True, True),
        ("PUT", None, True, True),  # blobs are named by their bytes
        ("POST", None, False, True),  # never left: no coordinator acted on it
        ("POST", None, True, False),  # may have been acted on
        ("POST", True, True, True),  # a submit with its client token, a cancel, a poll
        ("GET", False, True, False),
    ],
)
def test_a_request_is_sent_again_only_where_a_repeat_is_harmless(
    method: str, idempotent: bool | None, sent: bool, again: bool
) -> None:
    assert retry.may_resend(method, idempotent=idempotent, sent=sent) is again


# -- failover against real servers ------------------------------------------------------------


class _Balancer(http.server.BaseHTTPRequestHandler):
    """A balancer in front of a real coordinator that passes every request on but, for the
    requests named in `lose`, answers 502 after the coordinator acted: the worst case, a
    request done whose answer was lost. Every request is counted."""

    upstream: str
    lose: tuple[str, ...]
    seen: list[str]

    def _answer(self) -> None:
        line = f"{self.command} {self.path}"
        self.seen.append(line)
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
        r = httpx.request(
            self.command, self.upstream + self.path, content=body, headers=headers, timeout=30
        )
        status, data = r.status_code, r.content
        if any(line.startswith(lost) for lost in self.lose):
            status, data = 502, b'{"error": "bad gateway"}'
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def losing_balancer(upstream: str, *lose: str) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    attrs = {"upstream": upstream, "lose": lose, "seen": seen}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Balancer,), attrs))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def live() -> Iterator[LocalFog]:
    with LocalFog(nodes=0) as fog:
        yield fog


def test_a_dead_first_coordinator_is_passed_over_at_once(live: LocalFog) -> None:
    dead = _closed_port()
    lines: list[str] = []
    with Client([dead, live.url], live.api_key, on_retry=lines.append) as fog:
        assert fog.urls == (dead, live.url)
        assert fog.jobs() == [] and fog.nodes() == []
    # one failure, announced with where it went next and why; no wait (the round went on)
    assert lines == [f"retrying {live.url} ({dead}: connection refused), 1 of 16"]


def test_a_submit_whose_answer_was_lost_is_sent_again_and_makes_no_twin(
    live: LocalFog,
) -> None:
    with (
        losing_balancer(live.url, "POST /v1/jobs") as (proxy, seen),
        Client(f"{proxy},{live.url}", live.api_key, on_retry=lambda line: None) as fog,
    ):
        futures = fog.submit_many(_double, [((1,), {})], name="lost-answer")
        job_id = futures[0].job_id
        twins = [j for j in fog.jobs() if j["name"] == "lost-answer"]
        fog.cancel(job_id)
    assert [j["id"] for j in twins] == [job_id]  # the client token answered with the first
    assert sum(line == "POST /v1/jobs" for line in seen) == 1  # then the live one, directly


def test_a_post_that_may_have_been_acted_on_is_not_sent_again(live: LocalFog) -> None:
    fetches = "POST /v1/cdn/objects/x/fetches"
    with (
        losing_balancer(live.url, fetches) as (proxy, seen),
        Client([proxy, live.url], live.api_key) as fog,
        pytest.raises(ApiError) as caught,
    ):
        fog._request("POST", "/v1/cdn/objects/x/fetches", json={})
    assert caught.value.status == 502
    assert seen == [fetches]


def test_every_coordinator_down_names_them_all(monkeypatch) -> None:
    monkeypatch.setattr(client_module, "RETRY", retry.Backoff(attempts=3, first_s=0.01))
    a, b = _closed_port(), _closed_port()
    with (
        Client([a, b], "fwc_none", on_retry=lambda line: None) as fog,
        pytest.raises(CoordinatorUnreachable) as caught,
    ):
        fog.jobs()
    assert f"{a}, {b}" in str(caught.value) and "6 tries" in str(caught.value)


def test_several_urls_through_the_environment(live: LocalFog, monkeypatch) -> None:
    dead = _closed_port()
    monkeypatch.setenv("FOGWHEEL_COORDINATOR", f"{dead},{live.url}")
    monkeypatch.setenv("FOGWHEEL_API_KEY", live.api_key)
    with Client(on_retry=lambda line: None) as fog:
        assert fog.urls == (dead, live.url)
        assert isinstance(fog.nodes(), list)


def test_a_transport_error_is_a_failure_of_the_url_it_went_to() -> None:
    c = retry.Coordinators([_closed_port(), "http://127.0.0.1:9"])
    first = c.current
    with (
        httpx.Client(
            base_url=first, transport=retry.FailoverTransport(c, httpx.HTTPTransport())
        ) as http,
        pytest.raises(httpx.ConnectError),
    ):
        http.get("/v1/health")
    assert c.current == "http://127.0.0.1:9"
