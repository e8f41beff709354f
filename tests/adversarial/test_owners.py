"""Owners against attackers: token caps and rates, revocation, restarts with a new token, and
colluding devices of one owner (finding 6 of issue 10; docs/owners.md).

Each test drives a real coordinator (LocalFog) over HTTP and asserts that the harm did not
happen: Sybils past a token's cap are refused, revoked secrets get 401, an old join token dies
with a restart, and several devices of one owner agreeing on a wrong answer never beat an
honest device."""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any

import httpx
import pytest

from fogwheel import Client
from fogwheel.localfog import LocalFog
from tests.adversarial.hostile import HostileNode


def cube(x: int) -> int:
    busy = sum(k * k for k in range(20_000))
    return x * x * x + busy - busy


def admin(fog: LocalFog) -> httpx.Client:
    return httpx.Client(
        base_url=fog.url, headers={"authorization": f"Bearer {fog.admin_key}"}, timeout=30
    )


def new_owner(fog: LocalFog, name: str) -> tuple[str, str]:
    with admin(fog) as a:
        r = a.post("/v1/owners", json={"name": name})
        assert r.status_code == 201, r.text
        return r.json()["owner_id"], r.json()["owner_key"]


def new_token(fog: LocalFog, **body: Any) -> dict[str, Any]:
    with admin(fog) as a:
        r = a.post("/v1/tokens", json=body)
        assert r.status_code == 201, r.text
        return r.json()


def join_body(token: str, i: int) -> dict[str, Any]:
    return {
        "token": token,
        "name": f"sybil-{i}",
        "cores": 1024,
        "memory_mb": 1 << 24,
        "disk_mb": 16 << 20,
        "platform": "Linux-sybil",
        "capabilities": [],
    }


def test_a_thousand_joins_from_one_token_are_refused_past_its_cap_and_its_rate(tmp_path) -> None:
    with LocalFog(0, workdir=tmp_path) as fog:
        owner, _ = new_owner(fog, "mallory")
        capped = new_token(fog, owner_id=owner, max_devices=25, rate_per_hour=100_000)
        slow = new_token(fog, owner_id=owner, max_devices=1000, rate_per_hour=60)
        statuses: dict[str, list[int]] = {"capped": [], "slow": []}
        sentences: set[str] = set()
        t0 = time.perf_counter()
        with httpx.Client(base_url=fog.url, timeout=30) as http:
            for i in range(1000):
                for name, tok in (("capped", capped), ("slow", slow)):
                    if i >= 100 and name == "slow":
                        continue  # the rate limit shows within 100 tries
                    r = http.post("/v1/nodes/join", json=join_body(tok["token"], i))
                    statuses[name].append(r.status_code)
                    if r.status_code != 201:
                        sentences.add(r.json()["error"])
                        if r.status_code == 429:
                            assert int(r.headers["retry-after"]) >= 1
        seconds = time.perf_counter() - t0
        assert statuses["capped"].count(201) == 25
        assert set(statuses["capped"][25:]) == {403}
        assert statuses["slow"].count(201) == 6  # the bucket holds a tenth of an hour's rate
        assert set(statuses["slow"][6:]) == {429}
        assert any("admitted its 25 devices" in s for s in sentences)
        assert any("too many joins" in s for s in sentences)
        with admin(fog) as a:
            nodes = a.get("/v1/nodes").json()["nodes"]
            tokens = {t["id"]: t for t in a.get("/v1/tokens").json()["tokens"]}
        assert len(nodes) == 31
        assert (
            max(n["cores"] for n in nodes) <= 64 and max(n["memory_mb"] for n in nodes) <= 1 << 20
        )
        assert all(n["quota"] == 2 and n["owner_id"] == owner for n in nodes)
        assert tokens[capped["id"]]["joined"] == 25
        print(f"1,100 joins answered in {seconds:.1f} s")


def test_revoked_tokens_keys_and_device_credentials_get_401(tmp_path) -> None:
    with LocalFog(0, workdir=tmp_path) as fog, admin(fog) as a:
        owner, owner_key = new_owner(fog, "alice")
        tok = new_token(fog, owner_id=owner)
        assert "#sha256:" in tok["join_string"]
        dev = HostileNode(fog.url, tok["token"])
        assert dev.join().status_code == 201
        # the token: revoked by its owner, it admits nobody
        mine = httpx.post(
            f"{fog.url}/v1/tokens/{tok['id']}/revoke",
            headers={"authorization": f"Bearer {owner_key}"},
            timeout=10,
        )
        assert mine.status_code == 200 and mine.json()["revoked"] is True
        again = HostileNode(fog.url, tok["token"]).join()
        assert again.status_code == 401 and "revoked" in again.json()["error"]
        # the device: it held a task; revoked, it gets 401 and the task goes elsewhere
        with Client(fog.url, fog.api_key) as client:
            client.replicas = 1
            [future] = client.submit_many(cube, [((3,), {})])
            [lease] = dev.lease(1)
            assert a.post(f"/v1/nodes/{dev.node_id}/revoke").status_code == 200
            assert dev.sync(want=1).status_code == 401
            assert dev.report(dev.result(lease, value=pickle.dumps(-1))).status_code == 401
            fog.add_node()
            assert future.result(timeout=120) == 27
        states = {n["id"]: n["state"] for n in a.get("/v1/nodes").json()["nodes"]}
        assert states[dev.node_id] == "revoked"
        # a customer key
        made = a.post("/v1/customers", params={"name": "acme"}).json()
        key = {"authorization": f"Bearer {made['api_key']}"}
        assert httpx.get(f"{fog.url}/v1/jobs", headers=key).status_code == 200
        assert a.post(f"/v1/customers/{made['customer_id']}/revoke").status_code == 200
        gone = httpx.get(f"{fog.url}/v1/jobs", headers=key)
        assert gone.status_code == 401 and "revoked" in gone.json()["error"]
        # and nobody else may revoke
        other = httpx.post(
            f"{fog.url}/v1/customers/c-00000000/revoke", headers=fog.headers, timeout=10
        )
        assert other.status_code == 403


def test_a_coordinator_restarted_with_a_new_join_token_refuses_the_old_one(tmp_path) -> None:
    fog = LocalFog(0, workdir=tmp_path)
    fog.start()
    try:
        old = fog.join_token
        assert HostileNode(fog.url, old, name="before").join().status_code == 201
        fog.kill_coordinator()
        fog.join_token = "fwj_" + "n" * 32
        fog.start_coordinator()
        stale = HostileNode(fog.url, old, name="stale").join()
        assert stale.status_code == 401, stale.text
        assert HostileNode(fog.url, fog.join_token, name="after").join().status_code == 201
    finally:
        fog.stop()


def collude(fog: LocalFog, token: str, n: int, stop: threading.Event, lied: list[int]) -> None:
    """n devices of one owner: each leases whatever it can and returns the same wrong value."""
    lie = pickle.dumps(-666)
    devices = [HostileNode(fog.url, token, name=f"colluder-{i}") for i in range(n)]
    for d in devices:
        assert d.join().status_code == 201
    while not stop.is_set():
        for d in devices:
            r = d.sync(want=2, slots_free=2)
            if r.status_code != 200:
                continue
            leases = r.json()["tasks"]
            if leases:
                d.report(*[d.result(t, value=lie) for t in leases])
                lied[0] += len(leases)
        stop.wait(0.05)
    for d in devices:
        d.close()


@pytest.mark.parametrize("colluders", [3])
def test_colluding_devices_of_one_owner_never_out_vote_an_honest_device(
    tmp_path, colluders: int
) -> None:
    with LocalFog(0, workdir=tmp_path) as fog:
        owner, _ = new_owner(fog, "cartel")
        tok = new_token(fog, owner_id=owner)
        stop, lied = threading.Event(), [0]
        liars = threading.Thread(target=collude, args=(fog, tok["token"], colluders, stop, lied))
        liars.start()
        try:
            time.sleep(1.0)  # the colluders are in first, asking for work
            fog.add_node()
            fog.add_node()
            fog.wait_for_nodes(colluders + 2)
            with Client(fog.url, fog.api_key) as client:
                futures = client.submit_many(cube, [((i,), {}) for i in range(40)])
                answers = []
                for f in futures:
                    try:
                        answers.append(f.result(timeout=300))
                    except Exception as e:  # a clear failure is allowed; a wrong answer is not
                        answers.append(e)
                nodes = client.nodes()
        finally:
            stop.set()
            liars.join()
        wrong = [
            (i, a) for i, a in enumerate(answers) if not isinstance(a, Exception) and a != i**3
        ]
        assert wrong == []
        assert lied[0] > 0  # they did try
        assert sum(isinstance(a, int) for a in answers) >= 30
        cartel = [n for n in nodes if n["owner_id"] == owner]
        assert all(n["state"] == "quarantined" for n in cartel if n["disputed"])
        assert all(n["state"] != "quarantined" for n in nodes if n["owner_id"] != owner)
