"""`fogwheel owners|tokens|keys revoke|nodes revoke|earnings --owner` as an operator and an
owner run them, against a real coordinator."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from fogwheel.localfog import LocalFog
from tests.adversarial.hostile import HostileNode

FOGWHEEL = [sys.executable, "-m", "fogwheel"]


def run(fog: LocalFog, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOGWHEEL_")}
    env["FOGWHEEL_COORDINATOR"] = fog.url
    env["FOGWHEEL_ADMIN_KEY"] = fog.admin_key if key is None else ""
    if key is not None:
        env["FOGWHEEL_OWNER_KEY"] = key
    return subprocess.run([*FOGWHEEL, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory):
    with LocalFog(0, workdir=tmp_path_factory.mktemp("fog")) as f:
        yield f


@pytest.mark.parametrize("group", ["owners", "tokens"])
def test_the_new_command_groups_document_themselves(group: str) -> None:
    res = subprocess.run([*FOGWHEEL, group, "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "create" in res.stdout


def test_an_operator_makes_an_owner_and_a_capped_token_the_owner_sees_and_revokes(fog) -> None:
    made = run(fog, "owners", "create", "alice-home")
    assert made.returncode == 0, made.stderr
    owner_key = made.stdout.strip()
    assert owner_key.startswith("fwo_") and "created" in made.stderr
    [alice] = [
        o
        for o in json.loads(run(fog, "owners", "list", "--json").stdout)["owners"]
        if o["name"] == "alice-home"
    ]

    tok = run(
        fog,
        "tokens",
        "create",
        "--owner",
        alice["id"],
        "--max-devices",
        "2",
        "--rate",
        "600",
        "--expires",
        "30d",
    )
    assert tok.returncode == 0, tok.stderr
    join_string = tok.stdout.strip()
    assert "#sha256:" in join_string and "up to 2 devices" in tok.stderr
    devices = [HostileNode(fog.url, join_string, name=f"d{i}") for i in range(3)]
    assert [d.join().status_code for d in devices] == [201, 201, 403]

    mine = json.loads(run(fog, "tokens", "list", "--json", key=owner_key).stdout)["tokens"]
    assert [(t["joined"], t["max_devices"]) for t in mine] == [(2, 2)]
    assert "2/2" in run(fog, "tokens", "list", key=owner_key).stdout

    earned = run(fog, "earnings", "--owner", "--json", key=owner_key)
    assert earned.returncode == 0, earned.stderr
    assert {d["node_id"] for d in json.loads(earned.stdout)["devices"]} == {
        devices[0].node_id,
        devices[1].node_id,
    }
    assert "earned by 2 devices" in run(fog, "owners", "earnings", alice["id"]).stdout

    gone = run(fog, "nodes", "revoke", devices[0].node_id, key=owner_key)
    assert gone.returncode == 0, gone.stderr
    assert devices[0].sync(want=1).status_code == 401
    assert run(fog, "tokens", "revoke", mine[0]["id"], key=owner_key).returncode == 0
    assert HostileNode(fog.url, join_string).join().status_code == 401


def test_the_operator_revokes_a_customer_key(fog) -> None:
    made = run(fog, "keys", "create", "--name", "acme", "--json")
    assert made.returncode == 0, made.stderr
    customer = json.loads(made.stdout)
    auth = {"authorization": f"Bearer {customer['api_key']}"}
    assert httpx.get(f"{fog.url}/v1/jobs", headers=auth).status_code == 200
    res = run(fog, "keys", "revoke", customer["customer_id"])
    assert res.returncode == 0 and "revoked" in res.stdout
    assert httpx.get(f"{fog.url}/v1/jobs", headers=auth).status_code == 401
    again = run(fog, "keys", "revoke", customer["customer_id"])
    assert again.returncode == 1 and "no customer" in again.stderr and "HTTP 404" in again.stderr


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (("tokens", "create", "--expires", "soon"), "is not a duration"),
        (("tokens", "create", "--owner", "o-nobody"), "no owner o-nobody"),
        (("tokens", "revoke", "t-nobody"), "no join token t-nobody"),
        (("nodes", "revoke", "n-nobody"), "no device n-nobody"),
    ],
)
def test_mistakes_get_one_sentence_and_a_failing_status(fog, args, phrase) -> None:
    res = run(fog, *args)
    assert res.returncode != 0 and phrase in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_an_owner_key_cannot_act_as_the_operator(fog) -> None:
    owner_key = run(fog, "owners", "create", "mallory").stdout.strip()
    res = run(fog, "tokens", "create", key=owner_key)
    assert res.returncode == 1 and "no admin key" in res.stderr
    env_key = run(fog, "owners", "list", key=owner_key)
    assert env_key.returncode == 1


def test_fogwheel_nodes_shows_each_devices_owner_and_quota(fog) -> None:
    owner_id = json.loads(run(fog, "owners", "create", "carol", "--json").stdout)["owner_id"]
    made = json.loads(run(fog, "tokens", "create", "--owner", owner_id, "--json").stdout)
    dev = HostileNode(fog.url, made["join_string"], name="carols-box")
    assert dev.join().status_code == 201
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOGWHEEL_")}
    env |= {"FOGWHEEL_COORDINATOR": fog.url, "FOGWHEEL_API_KEY": fog.api_key, "COLUMNS": "200"}
    res = subprocess.run([*FOGWHEEL, "nodes"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    [line] = [ln for ln in res.stdout.splitlines() if dev.node_id in ln]
    assert owner_id in line and " 2 " in line  # a new device's quota


def test_the_operator_commands_take_several_coordinators_and_skip_one_that_is_down(fog) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on: a coordinator down
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOGWHEEL_")}
    env |= {"FOGWHEEL_COORDINATOR": f"{down},{fog.url}", "FOGWHEEL_ADMIN_KEY": fog.admin_key}
    made = subprocess.run(
        [*FOGWHEEL, "owners", "create", "bob-home"], capture_output=True, text=True, env=env
    )
    assert made.returncode == 0, made.stderr  # a POST that surely never left goes on
    listed = subprocess.run(
        [*FOGWHEEL, "owners", "list", "--json"], capture_output=True, text=True, env=env
    )
    assert "bob-home" in listed.stdout
    env["FOGWHEEL_COORDINATOR"] = down
    alone = subprocess.run(
        [*FOGWHEEL, "owners", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    assert alone.returncode == 1
    assert f"cannot reach the coordinator at {down}" in alone.stderr
