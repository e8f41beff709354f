"""Guest code runs in bubblewrap: no network, no credential, no writes outside its scratch dir.

Real node agents (a LocalFog) run hostile tasks; each must fail, and the same node must then
run the next task as if nothing happened.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fogwheel import Client
from fogwheel.errors import CommandFailed, TaskFailed
from fogwheel.localfog import LocalFog
from fogwheel.node.sandbox import GUEST_UID_BASE, Bubblewrap, Limits, detect
from fogwheel.node.slots import guest_env


@pytest.fixture(scope="module")
def fog() -> Iterator[LocalFog]:
    with LocalFog(1, lease_seconds=5.0) as f:
        yield f


@pytest.fixture
def client(fog: LocalFog) -> Iterator[Client]:
    with Client(fog.url, fog.api_key, replicas=1) as c:  # one node: nobody to check it
        yield c


FOGWHEEL_NODE = [sys.executable, "-m", "fogwheel", "node", "--coordinator", "http://127.0.0.1:9"]


def square(x: int) -> int:
    return x * x


def connect(host: str, port: int) -> str:
    import socket

    with socket.create_connection((host, port), timeout=5):
        return "connected"


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def write(path: str) -> str:
    with open(path, "w") as f:
        f.write("escaped")
    return "written"


def fork_bomb() -> None:
    while True:
        os.fork()


def _host_path(tag: str) -> Path:
    return Path(f"/tmp/fogwheel-{tag}-{secrets.token_hex(6)}")


# -- detection ----------------------------------------------------------------------------


def test_detect_finds_bubblewrap_here() -> None:
    found = detect()
    assert isinstance(found, Bubblewrap) and found.confined
    assert detect() is found  # the answer is cached


def test_detect_answers_none_without_a_working_bwrap(monkeypatch) -> None:
    monkeypatch.setenv("FOGWHEEL_BWRAP", "/nonexistent/bwrap")
    assert detect() is None
    assert detect("false") is None  # a program that runs but is not a working sandbox


@pytest.mark.parametrize(
    ("limits", "command", "check"),
    [
        (
            Limits(file_bytes=1 << 20),
            "head -c 3000000 /dev/zero > big",
            lambda res, scratch: (scratch / "big").stat().st_size == 1 << 20,
        ),
        (
            Limits(memory_bytes=64 << 20),
            f"{sys.executable} -c 'bytearray(200 << 20)'",
            lambda res, scratch: "MemoryError" in res.stderr,
        ),
        (
            Limits(processes=20),
            "for i in $(seq 40); do sleep 2 & done; wait",
            lambda res, scratch: "fork" in res.stderr or "Resource" in res.stderr,
        ),
    ],
    ids=["file size", "memory", "processes"],
)
def test_the_sandbox_applies_its_rlimits(tmp_path, limits, command, check) -> None:
    sandbox = detect().for_slot(0, tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    sandbox.hand_over(scratch)
    argv = sandbox.wrap(
        ["sh", "-c", command], scratch=scratch, limits=limits, env=guest_env(scratch)
    )
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert check(res, scratch), res.stderr


# -- files in scratch: never through a link (safefs) --------------------------------------


def test_outputs_are_read_without_following_any_link(tmp_path) -> None:
    from fogwheel.node import safefs

    secret = tmp_path / "node.json"
    secret.write_text("credential")
    scratch = tmp_path / "scratch"
    (scratch / "sub").mkdir(parents=True)
    (scratch / "sub" / "ok.txt").write_text("honest")
    (scratch / "link.txt").symlink_to(secret)
    (scratch / "dirlink").symlink_to(tmp_path)
    os.mkfifo(scratch / "fifo")
    with safefs.opened_dir(scratch) as fd:
        assert safefs.read_file(fd, "sub/ok.txt", 100) == b"honest"
        for name in ("link.txt", "dirlink/node.json", "fifo", "sub", "../node.json", "/etc/passwd"):
            with pytest.raises(safefs.Unsafe):
                safefs.read_file(fd, name, 100)
        with pytest.raises(safefs.Unsafe, match="larger than"):
            safefs.read_file(fd, "sub/ok.txt", 3)
        # an entry planted before the agent writes an input is refused, never written through
        (scratch / "input.txt").symlink_to(tmp_path / "planted")
        src = tmp_path / "src"
        src.write_text("input")
        with pytest.raises(FileExistsError):
            safefs.place(fd, "input.txt", src)
        with pytest.raises(safefs.Unsafe):
            safefs.place(fd, "dirlink/x", src)
        assert not (tmp_path / "planted").exists() and not (tmp_path / "x").exists()
        assert sorted(safefs.files_under(fd, "sub")) == ["sub/ok.txt"]
    assert secret.read_text() == "credential"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_handing_scratch_over_never_chowns_through_a_link(tmp_path) -> None:
    from fogwheel.node import safefs

    outside = tmp_path / "outside"
    outside.write_text("host file")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "link").symlink_to(outside)
    (scratch / "d").mkdir()
    (scratch / "d" / "f").write_text("x")
    safefs.chown_tree(scratch, 12345)
    assert (scratch / "d" / "f").stat().st_uid == 12345
    assert outside.stat().st_uid == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="control groups need a root agent here")
def test_the_groups_of_a_dead_agent_are_swept_and_a_live_ones_kept(tmp_path) -> None:
    from fogwheel.node import cgroups

    hierarchy = cgroups.detect()
    assert hierarchy is not None
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = hierarchy.group(cgroups.group_name(tmp_path, 0, "worker"))  # ours: we live
    stale = [
        root / f"fogwheel-00000000-{dead.pid}-1-slot0-worker" for root in hierarchy.roots.values()
    ]
    for p in stale:
        p.mkdir()
    try:
        assert hierarchy.sweep() >= len(stale)
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in live.paths.values())
    finally:
        live.remove()


def test_the_seccomp_filter_compiles() -> None:
    from fogwheel.node.seccomp_filter import compile_filter

    program = compile_filter()
    assert program is not None and len(program) % 8 == 0  # struct sock_filter: 8 bytes each
    assert detect().seccomp == program


def test_a_secrets_file_is_private_and_reads_back(tmp_path) -> None:
    from fogwheel.errors import FogwheelError
    from fogwheel.secretfile import read_env_file, read_token_file, write_env_file

    path = tmp_path / "fog.env"
    write_env_file(path, {"FOGWHEEL_API_KEY": "fwc_a b'c", "FOGWHEEL_JOIN_TOKEN": "fwj_x#sha256:y"})
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_env_file(path)["FOGWHEEL_API_KEY"] == "fwc_a b'c"
    assert read_token_file(path) == "fwj_x#sha256:y"
    bare = tmp_path / "token"
    bare.write_text("fwj_bare\n")
    bare.chmod(0o600)
    assert read_token_file(bare) == "fwj_bare"
    bare.chmod(0o640)
    with pytest.raises(FogwheelError, match="chmod 600"):
        read_token_file(bare)


def test_a_node_without_a_sandbox_refuses_to_start_and_says_what_to_do(tmp_path) -> None:
    env = {**os.environ, "FOGWHEEL_BWRAP": "/nonexistent/bwrap"}
    res = subprocess.run(
        [*FOGWHEEL_NODE, "--token", "fwj_x", "--data-dir", str(tmp_path / "node")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode != 0
    said = " ".join(res.stderr.split())
    assert "no usable sandbox (bubblewrap)" in said
    assert "apt-get install bubblewrap" in said and "--unsafe-no-sandbox" in said
    assert not (tmp_path / "node" / "node.json").exists()  # it did not even join


def test_a_node_run_with_unsafe_no_sandbox_works_and_warns(monkeypatch) -> None:
    monkeypatch.setenv("FOGWHEEL_BWRAP", "/nonexistent/bwrap")
    with (
        LocalFog(1, node_args=["--unsafe-no-sandbox"]) as unsafe,
        Client(unsafe.url, unsafe.api_key, replicas=1) as c,
    ):
        assert c.submit(square, 9).result(timeout=30) == 81
        [node] = c.nodes()
        assert "sandbox" not in node["capabilities"]
        log = (unsafe.dir / "node-0.log").read_text()
    assert "WARNING" in log and "UNCONFINED" in log
    assert log.count("UNCONFINED") >= 2  # once at start, once for the job


def test_a_sandboxed_node_advertises_it(client: Client) -> None:
    [node] = client.nodes()
    assert "sandbox" in node["capabilities"]


# -- python tasks -------------------------------------------------------------------------


def test_a_task_cannot_reach_the_coordinator_or_the_internet(client: Client, fog: LocalFog) -> None:
    with pytest.raises(ConnectionRefusedError):
        client.submit(connect, "127.0.0.1", fog.port).result(timeout=30)
    with pytest.raises(OSError, match="unreachable"):
        client.submit(connect, "1.1.1.1", 53).result(timeout=30)
    assert client.submit(square, 2).result(timeout=30) == 4


def test_a_task_cannot_read_the_node_credential(client: Client, fog: LocalFog) -> None:
    credential = fog.dir / "node-0" / "node.json"
    assert credential.exists()
    with pytest.raises((FileNotFoundError, PermissionError)):
        client.submit(read, str(credential)).result(timeout=30)
    listing = client.submit(lambda p: os.listdir(p), str(fog.dir / "node-0")).result(timeout=30)
    assert "node.json" not in listing and "cache" not in listing
    env = client.submit(lambda: dict(os.environ)).result(timeout=30)
    assert not [k for k in env if k.startswith("FOGWHEEL")]


def test_a_task_cannot_write_outside_its_scratch_dir(client: Client, fog: LocalFog) -> None:
    for target in (_host_path("escaped"), fog.dir / "node-0" / "planted", Path("/var/tmp/x")):
        with pytest.raises(OSError):
            client.submit(write, str(target)).result(timeout=30)
        assert not target.exists()
    assert client.submit(write, "inside.txt").result(timeout=30) == "written"


def test_each_task_gets_a_fresh_scratch_dir_as_its_cwd(client: Client) -> None:
    def leave_a_file(i: int) -> tuple[str, list[str]]:
        found = os.listdir(".")
        Path(f"file-{i}").write_text("x")
        return os.getcwd(), found

    seen = list(client.map(leave_a_file, range(3), timeout=60))
    assert [found for _, found in seen] == [[], [], []]
    assert len({cwd for cwd, _ in seen}) == 3


def test_a_fork_bomb_fails_and_the_node_carries_on(client: Client) -> None:
    t0 = time.monotonic()
    # the process limit (fork fails: BlockingIOError) or, with a control group, the memory of
    # all the copies together, whichever the bomb reaches first
    with pytest.raises((BlockingIOError, TaskFailed)) as info:
        client.submit(fork_bomb).result(timeout=60)
    if not isinstance(info.value, BlockingIOError):
        assert "memory limit of 256 MB exceeded" in str(info.value)
    assert time.monotonic() - t0 < 30
    assert client.submit(square, 6).result(timeout=30) == 36


def test_processes_a_task_left_behind_die_with_its_worker(client: Client) -> None:
    def start_and_hang() -> None:
        import subprocess
        import time

        subprocess.Popen(["sleep", "60"], start_new_session=True)
        time.sleep(30)

    [fut] = client.submit_many(start_and_hang, [((), {})], wall_s=1.5)
    with pytest.raises(TaskFailed, match="wall-time limit"):
        fut.result(timeout=60)
    if os.geteuid() == 0:
        _wait_until_gone("sleep")
    assert client.submit(square, 8).result(timeout=30) == 64


def test_a_forged_worker_answer_cannot_run_code_in_the_agent(client: Client) -> None:
    marker = _host_path("pwned")

    def forge(marker: str) -> str:
        import pickle
        import stat
        import struct

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        data = pickle.dumps({"ok": True, "value": Payload()})
        for fd in range(3, 64):
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.write(fd, struct.pack("!I", len(data)) + data)
            except OSError:
                pass
        return "sent"

    with pytest.raises(TaskFailed, match="broke its protocol"):
        client.submit(forge, str(marker)).result(timeout=60)
    assert not marker.exists()
    assert client.submit(square, 7).result(timeout=30) == 49


# -- command tasks ------------------------------------------------------------------------


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_command_cannot_reach_the_network(client: Client, fog: LocalFog) -> None:
    code = f"import socket; socket.create_connection(('127.0.0.1', {fog.port}), timeout=5)"
    with pytest.raises(CommandFailed) as info:
        client.run(_python(code)).result(timeout=60)
    assert "ConnectionRefusedError" in info.value.result.stderr


def test_a_command_cannot_read_the_credential_or_write_outside(
    client: Client, fog: LocalFog
) -> None:
    with pytest.raises(CommandFailed) as info:
        client.run(["cat", str(fog.dir / "node-0" / "node.json")]).result(timeout=60)
    assert "No such file" in info.value.result.stderr
    target = _host_path("escaped")
    with pytest.raises(CommandFailed) as info:
        client.run(["sh", "-c", f"echo x > {target}"]).result(timeout=60)
    assert "Read-only file system" in info.value.result.stderr
    assert not target.exists()


def test_a_command_fork_bomb_is_contained_and_the_node_carries_on(client: Client) -> None:
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 30"
    [fut] = client.run_many([["sh", "-c", bomb]], wall_s=3.0)
    with pytest.raises(TaskFailed, match="wall-time limit"):
        fut.result(timeout=60)
    if os.geteuid() == 0:  # guests ran under their own uid; none of them is left
        _wait_until_gone("sh")
    res = client.run(["echo", "still here"]).result(timeout=60)
    assert res.stdout == "still here\n"


def _wait_until_gone(name: str) -> None:
    deadline = time.monotonic() + 5
    while _guest_processes(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _guest_processes(name) == []


def _guest_processes(name: str) -> list[int]:
    """Processes called `name` running as a root agent's guest uid."""
    out = []
    for p in psutil.process_iter(["uids", "name"]):
        uids = p.info["uids"]
        if uids and uids.real >= GUEST_UID_BASE and p.info["name"] == name:
            out.append(p.pid)
    return out


def test_a_missing_program_fails_with_a_clear_message(client: Client) -> None:
    with pytest.raises(TaskFailed, match="cannot start 'no-such-program'"):
        client.run(["no-such-program"]).result(timeout=60)
