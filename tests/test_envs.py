"""Python environments that travel (docs/envs.md): a function imports packages the nodes' own
Python lacks, built on each node once from blobs with the index unreachable to it, reused by
the next task, evicted under the quota, refused when a wheel is tampered with; placement
prefers a node that holds the environment and never places one a node cannot install."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from fogwheel import Env, envs
from fogwheel.client import Client
from fogwheel.core import envlock
from fogwheel.errors import TaskFailed
from fogwheel.localfog import LocalFog
from fogwheel.node.envs import EnvCache, EnvError, this_platform, unpack_wheel

REAL_PACKAGE = "tabulate==0.9.0"  # small, pure Python, on PyPI, not a fogwheel dependency
# The nodes' agents may reach the coordinator on loopback and nothing else: any other HTTP(S)
# goes to a proxy that is not there, and pip (were it run) to an index that is not there.
OFFLINE = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
}


def make_wheel(
    where: Path, name: str, version: str, files: dict[str, bytes], tag: str = "py3-none-any"
) -> Path:
    """A wheel as pip builds one (PEP 427): the files, METADATA, WHEEL and RECORD."""
    dist = f"{name}-{version}.dist-info"
    entries = dict(files)
    entries[f"{dist}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    )
    pure = "true" if tag.endswith("none-any") else "false"
    entries[f"{dist}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: {pure}\nTag: {tag}\n".encode()
    )
    record = []
    for path, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    entries[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    out = where / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, data in entries.items():
            z.writestr(path, data)
    return out


def use_both(_i: int) -> dict[str, object]:
    import fogtestpkg  # the wheel built in the test
    import tabulate  # from PyPI

    return {
        "value": fogtestpkg.VALUE,
        "table": tabulate.tabulate([[1, 2]], tablefmt="plain"),
        "where": fogtestpkg.__file__.split("/envs/")[1].split("/")[0][:12],
    }


def pkg_value(_x: object = None) -> int:
    import fogtestpkg

    return int(fogtestpkg.VALUE)


def node_stats(fog: LocalFog, n: int | None = None) -> list[dict[str, int]]:
    out = []
    for i in range(fog.n_nodes if n is None else n):
        path = fog.dir / f"node-{i}" / "envs" / "stats.json"
        out.append(json.loads(path.read_text()) if path.exists() else {})
    return out


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("wheels")
    make_wheel(where, "fogtestpkg", "1.0", {"fogtestpkg/__init__.py": b"VALUE = 41\n"})
    big = os.urandom(600_000)  # incompressible: two versions do not fit in a 1 MB quota
    for v in ("2.0", "3.0"):
        make_wheel(
            where,
            "fogtestpkg",
            v,
            {"fogtestpkg/__init__.py": f"VALUE = {v[0]}\n".encode(), "fogtestpkg/blob.bin": big},
        )
    make_wheel(
        where,
        "fogtestnative",
        "1.0",
        {"fogtestnative/__init__.py": b""},
        tag=f"cp{sys.version_info.major}{sys.version_info.minor}"
        f"-cp{sys.version_info.major}{sys.version_info.minor}-manylinux2014_aarch64",
    )
    return where


def test_the_real_package_is_not_installed_here() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "pip", "show", REAL_PACKAGE.split("==")[0]], capture_output=True
    )
    assert shown.returncode != 0, f"{REAL_PACKAGE} is installed here: the test proves nothing"


def test_packages_the_nodes_lack_run_from_an_environment_built_once_per_node_offline(
    tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOGWHEEL_ENV_CACHE", str(tmp_path / "cache"))
    env = Env(pip=[str(wheels / "fogtestpkg-1.0-py3-none-any.whl"), REAL_PACKAGE])
    with LocalFog(0, workdir=tmp_path / "fog") as fog:
        for _ in range(2):  # nodes without any way out but to the coordinator
            fog.add_node(env=OFFLINE)
        fog.wait_for_nodes(2)
        with Client(fog.url, fog.api_key, replicas=1, env=env) as client:
            t0 = time.monotonic()
            first = list(client.map(use_both, range(2), timeout=120))
            cold = time.monotonic() - t0
            assert {r["value"] for r in first} == {41}
            assert all("1  2" in r["table"] for r in first)
            # the job named the lock, and the lock is the one this machine resolved
            lock_sha = client.env_lock(env)
            assert first[0]["where"] == lock_sha[:12]
            t0 = time.monotonic()
            again = list(client.map(use_both, range(6), timeout=120))
            warm = time.monotonic() - t0
            assert {r["value"] for r in again} == {41}
        stats = node_stats(fog, 2)
        installs = [s.get("installs", 0) for s in stats]
        # each node that ran a task built the environment once, never twice
        assert all(n <= 1 for n in installs) and sum(installs) >= 1, installs
        print(f"cold {cold:.2f} s for 2 tasks, warm {warm:.2f} s for 6; installs {installs}")
    # the nodes never reached the index: their environment came from the coordinator's blobs
    for i in (0, 1):
        log = (fog.dir / f"node-{i}.log").read_text()
        assert "127.0.0.1:9" not in log


def test_a_second_run_of_the_same_env_resolves_and_uploads_nothing(
    tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOGWHEEL_ENV_CACHE", str(tmp_path / "cache"))
    env = Env(pip=[str(wheels / "fogtestpkg-1.0-py3-none-any.whl")])
    said: list[str] = []
    first = envs.build(env, said.append)
    assert not first.cached and any("pip wheel" in s for s in said)
    said.clear()
    second = envs.build(Env(pip=[str(wheels / "fogtestpkg-1.0-py3-none-any.whl")]), said.append)
    assert second.cached and second.sha == first.sha
    assert not any("pip" in s for s in said)


def test_placement_prefers_the_node_that_holds_the_environment_and_says_so(
    tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOGWHEEL_ENV_CACHE", str(tmp_path / "cache"))
    env = Env(pip=[str(wheels / "fogtestpkg-1.0-py3-none-any.whl")])
    with (
        LocalFog(2, workdir=tmp_path / "fog") as fog,
        Client(fog.url, fog.api_key, replicas=1, env=env) as client,
    ):
        [fut] = client.submit_many(pkg_value, [((), {})])
        assert fut.result(60) == 41
        holder = client.tasks(fut.job_id)[0]["history"][-1]["node_id"]
        time.sleep(2.0)  # its next syncs tell the coordinator it holds the environment
        for _ in range(3):
            [fut] = client.submit_many(pkg_value, [((), {})])
            assert fut.result(60) == 41
            [task] = client.tasks(fut.job_id)
            last = task["history"][-1]
            assert last["node_id"] == holder, task["history"]
            assert "its Python environment is already built here" in last["reason"]
        assert sum(s.get("installs", 0) for s in node_stats(fog)) == 1


def test_an_environment_no_node_can_install_is_never_placed_and_the_job_says_why(
    tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOGWHEEL_ENV_CACHE", str(tmp_path / "cache"))
    tag = "manylinux2014_aarch64"
    native = next(wheels.glob("fogtestnative-*.whl"))
    env = Env(pip=[str(native)], platforms=[tag])
    if this_platform().arch == "aarch64":
        pytest.skip("this machine is aarch64: the environment would fit it")
    with (
        LocalFog(1, workdir=tmp_path / "fog") as fog,
        Client(fog.url, fog.api_key, replicas=1) as client,
    ):
        [fut] = client.submit_many(pkg_value, [((), {})], env=env)
        deadline = time.monotonic() + 30
        while True:
            job = client.job(fut.job_id)
            waiting = job.get("waiting") or {}
            if waiting.get("reason") == "no-node-fits-environment" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert waiting.get("reason") == "no-node-fits-environment", job
        assert "aarch64" in waiting["sentence"] and waiting["stuck"] is True
        assert client.tasks(fut.job_id)[0]["history"] == []  # never leased
        client.cancel(fut.job_id)


def test_environments_over_the_quota_are_evicted_least_recently_used_first(
    tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOGWHEEL_ENV_CACHE", str(tmp_path / "cache"))
    two = Env(pip=[str(wheels / "fogtestpkg-2.0-py3-none-any.whl")])
    three = Env(pip=[str(wheels / "fogtestpkg-3.0-py3-none-any.whl")])
    with (
        LocalFog(1, workdir=tmp_path / "fog", node_args=["--env-mb", "1"]) as fog,
        Client(fog.url, fog.api_key, replicas=1) as client,
    ):
        assert list(client.map(pkg_value, [()], env=two, timeout=60)) == [2]
        assert list(client.map(pkg_value, [()], env=three, timeout=60)) == [3]
        held = [p.name for p in (fog.dir / "node-0" / "envs").iterdir() if len(p.name) == 64]
        assert held == [client.env_lock(three)]
        assert list(client.map(pkg_value, [()], env=two, timeout=60)) == [2]  # built again
        stats = node_stats(fog)[0]
        assert stats["installs"] == 3 and stats["evictions"] == 2


def test_a_tampered_wheel_blob_is_refused_with_a_clear_error(
    tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOGWHEEL_ENV_CACHE", str(tmp_path / "cache"))
    wheel = wheels / "fogtestpkg-1.0-py3-none-any.whl"
    env = Env(pip=[str(wheel)])
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with (
        LocalFog(1, workdir=tmp_path / "fog") as fog,
        Client(fog.url, fog.api_key, replicas=1) as client,
    ):
        client.env_lock(env)  # resolved and uploaded
        [stored] = [p for p in (fog.dir / "coordinator").rglob(sha) if p.is_file()]
        stored.write_bytes(stored.read_bytes().replace(b"VALUE = 41", b"VALUE = 66"))
        [fut] = client.submit_many(pkg_value, [((), {})], env=env, max_attempts=1)
        with pytest.raises(TaskFailed) as caught:
            fut.result(60)
        message = str(caught.value)
        assert "fogtestpkg-1.0-py3-none-any.whl" in message, message
        assert "hash check (tampered with)" in message, message
        assert not any((fog.dir / "node-0" / "envs").glob("[0-9a-f]" * 8 + "*"))


def test_the_node_refuses_a_wheel_whose_bytes_do_not_match_the_lock(
    tmp_path: Path, wheels: Path
) -> None:
    """Bytes changed on the way (a proxy, a disk): the node's own check refuses them."""
    wheel = wheels / "fogtestpkg-1.0-py3-none-any.whl"
    data = wheel.read_bytes()
    entry = envlock.wheel_of(wheel.name, hashlib.sha256(data).hexdigest(), len(data))
    lock = envlock.make_lock(this_platform().python, [entry])
    blobs = {lock.sha: lock.canonical(), entry.sha256: data.replace(b"41", b"66")}

    def fetch(sha: str, max_bytes: int, dest: Path) -> None:
        dest.write_bytes(blobs[sha][:max_bytes])

    cache = EnvCache(tmp_path / "envs", 1 << 20, this_platform())
    with pytest.raises(EnvError, match="do not match its SHA-256"), cache.ready(lock.sha, fetch):
        pass
    assert cache.held() == [] and cache.stats().refused == 1
    blobs[entry.sha256] = data  # the right bytes: built, and once only
    for _ in range(2):
        with cache.ready(lock.sha, fetch) as site:
            assert (site / "fogtestpkg" / "__init__.py").read_text() == "VALUE = 41\n"
    assert cache.held() == [lock.sha] and cache.stats().installs == 1


@pytest.mark.parametrize(
    "name, says",
    [("../evil.py", "leads outside"), ("/etc/passwd", "leads outside"), ("a/../../b", "outside")],
)
def test_a_wheel_entry_that_leads_outside_is_refused(tmp_path: Path, name: str, says: str) -> None:
    wheel = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(name, b"x")
    site = tmp_path / "site"
    site.mkdir()
    with pytest.raises(EnvError, match=says):
        unpack_wheel(wheel, site, 1 << 20)
    assert not (tmp_path / "evil.py").exists()


def test_a_zip_bomb_stops_at_the_quota(tmp_path: Path) -> None:
    wheel = tmp_path / "bomb-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/zeros", b"\0" * (8 << 20))
    site = tmp_path / "site"
    site.mkdir()
    with pytest.raises(EnvError, match="more than is left"):
        unpack_wheel(wheel, site, 1 << 20)


def test_a_job_naming_a_lock_that_is_not_uploaded_is_refused_with_422(tmp_path: Path) -> None:
    with LocalFog(0, workdir=tmp_path / "fog") as fog:
        body = {
            "kind": "python",
            "fn": {
                "sha": hashlib.sha256(b"x").hexdigest(),
                "size": 1,
                "data": base64.b64encode(b"x").decode(),
            },
            "tasks": [{}],
            "env": "a" * 64,
        }
        r = httpx.post(f"{fog.url}/v1/jobs", json=body, headers=fog.headers)
        assert r.status_code == 422, r.text
        assert "not uploaded" in r.json()["error"]
