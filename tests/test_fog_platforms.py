"""An environment that names no platform is resolved for the fog's devices, not for the
customer's machine (docs/envs.md): the coordinator says which platforms its live devices'
Pythons install wheels for (GET /v1/platforms), and the SDK resolves for them."""

from __future__ import annotations

import sys

import httpx
import pytest

from fogwheel.envs import Env, by_machine, this_machine_tags

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
PYTAG = f"cp{sys.version_info.major}{sys.version_info.minor}"


def test_tags_are_resolved_one_machine_at_a_time() -> None:
    tags = [
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "manylinux_2_17_aarch64",
        "linux_x86_64",
        "musllinux_1_2_aarch64",
        "linux_armv7l",
        "weird",
    ]
    assert by_machine(tags) == [
        ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"],
        ["manylinux_2_17_aarch64", "musllinux_1_2_aarch64"],
        ["linux_armv7l"],
        ["weird"],
    ]


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory):
    from fogwheel.localfog import LocalFog

    with LocalFog(2, workdir=tmp_path_factory.mktemp("fog")) as f:
        yield f


def join_device(fog, platform: str) -> None:
    """A device that says its Python's platform in its first sync, as an agent does."""
    joined = httpx.post(
        f"{fog.url}/v1/nodes/join",
        json={
            "token": fog.join_string,
            "name": "pi",
            "cores": 4,
            "memory_mb": 512,
            "disk_mb": 8000,
        },
    )
    assert joined.status_code == 201, joined.text
    cred = joined.json()["credential"]
    synced = httpx.post(
        f"{fog.url}/v1/nodes/me/sync",
        json={"slots_free": 4, "env_platform": platform, "envs": []},
        headers={"authorization": f"Bearer {cred}"},
    )
    assert synced.status_code == 200, synced.text


def test_the_fog_says_its_platforms_and_the_sdk_resolves_for_them(fog) -> None:
    from fogwheel.client import Client

    with Client(fog.url, fog.api_key) as client:
        [own] = wait_for_platforms(client, lambda ps: sum(p["nodes"] for p in ps) >= 2)
        assert (own["python"], own["nodes"]) == (PY, 2)
        assert own["platform"].startswith(f"{PYTAG}-")
        assert own["tags"] == this_machine_tags(PY)
        env = Env(pip=["tabulate"])
        assert client._for_the_fog(env) is env  # all this machine's: built as it is here
        pinned = Env(pip=["tabulate"], platforms=["manylinux2014_aarch64"])
        assert client._for_the_fog(pinned) is pinned  # a platform named is the customer's

        join_device(fog, f"{PYTAG}-aarch64-glibc_2_36")
        platforms = wait_for_platforms(client, lambda ps: len(ps) == 2)
        assert [p["nodes"] for p in platforms] == [2, 1]  # most devices first
        assert platforms[1]["arch"] == "aarch64"
        wide = client._for_the_fog(env)
        assert set(this_machine_tags(PY)) < set(wide.platforms)
        assert "manylinux_2_17_aarch64" in wide.platforms
        assert [g[0].endswith("aarch64") for g in by_machine(wide.platforms)].count(True) == 1
        # a device of another Python does not count for this one's environment
        join_device(fog, "cp39-x86_64-glibc_2_31")
        assert set(client._for_the_fog(env).platforms) == set(wide.platforms)


def test_platforms_need_a_key(fog) -> None:
    r = httpx.get(f"{fog.url}/v1/platforms")
    assert r.status_code == 401
    problem = r.json()  # RFC 9457 (docs/api.md): a sentence that says what to send
    assert "bearer" in str(problem).lower() or "key" in str(problem).lower()


def wait_for_platforms(client, ready, timeout: float = 30.0) -> list[dict]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        got = client.platforms()
        if ready(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)
