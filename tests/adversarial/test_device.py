"""The device is protected from guest work, and guest work cannot read the node.

Real node agents under bubblewrap (a LocalFog) run a customer's hostile tasks: a background
process or thread that swaps an output file for a link to the node's credential while the
agent collects it, a memory bomb spread over four processes, a disk fill, a fork bomb, system
calls that make namespaces or trace, a look at the host's network interfaces, kept state past
its quota; and every secret of `fogwheel up` is looked for on process command lines. Each test
asserts that the harm did not happen and that the node's other slot carries on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fogwheel import Client
from fogwheel.errors import TaskFailed
from fogwheel.localfog import LocalFog
from fogwheel.node.sandbox import detect

WAIT = 300.0  # generous: six engineers share two cores
SCRATCH_MB = 64
KEEP_MB = 1

pytestmark = pytest.mark.skipif(detect() is None, reason="needs a working bubblewrap")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="control groups and tmpfs scratch need a root agent"
)


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    node_args = ["--scratch-mb", str(SCRATCH_MB), "--keep-mb", str(KEEP_MB)]
    workdir = tmp_path_factory.mktemp("device")
    with LocalFog(1, cores_per_node=2, workdir=workdir, node_args=node_args, sandbox=True) as f:
        yield f


@pytest.fixture
def client(fog: LocalFog) -> Iterator[Client]:
    with Client(fog.url, fog.api_key, replicas=1) as c:  # one node: nobody to check it
        yield c


def credential(fog: LocalFog) -> str:
    return str(json.loads((fog.dir / "node-0" / "node.json").read_text())["credential"])


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    import time

    time.sleep(3)
    return x * x


# -- finding 2: outputs swapped for links ---------------------------------------------------

SWAPPER = """
import os, sys
targets = sys.argv[1:]
open("started", "w").close()
n = 0
while True:
    n += 1
    t = targets[n % len(targets)]
    try:
        if n % 3 == 0:
            os.link(t, "hard")  # a hard link to a host file: refused across mounts
            os.replace("hard", "out.txt")
        else:
            os.symlink(t, "link")
            os.replace("link", "out.txt")
        with open("real", "w") as f:
            f.write("honest")
        os.replace("real", "out.txt")
    except OSError:
        pass
"""


def racer(i: int, targets: list[str], how: str) -> int:
    """Write out.txt, then leave a process (or a thread) swapping it for links to `targets`
    while the agent collects it. (A thread left by an earlier task may already be swapping
    this task's out.txt: then the task's own open may follow its link and fail.)"""
    import os
    import subprocess
    import sys
    import threading
    import time

    with open("out.txt", "w") as f:
        f.write("honest")
    if how == "process":
        subprocess.Popen([sys.executable, "-c", SWAPPER, *targets], start_new_session=True)
    else:
        code = compile(SWAPPER, "swapper", "exec")
        sys.argv = ["swapper", *targets]
        threading.Thread(target=exec, args=(code, {}), daemon=True).start()
    deadline = time.monotonic() + 5
    while not os.path.exists("started") and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep((i % 5) * 0.003)  # return at varied phases of the swapping
    return i


def test_a_leftover_swapping_outputs_for_links_never_reads_the_credential(
    client: Client, fog: LocalFog
) -> None:
    secret = credential(fog)
    node_json = str(fog.dir / "node-0" / "node.json")
    targets = [node_json, "/etc/passwd", "/etc/shadow"]
    calls = [((i, targets, "process" if i % 2 else "thread"), {}) for i in range(100)]
    futures = client.submit_many(racer, calls, outputs=["out.txt"], max_attempts=1, wall_s=60)
    honest = refused = 0
    for fut in futures:
        try:
            out = fut.result(WAIT)
        except Exception as e:  # refused (a link, not a plain file) or the task's own failure
            text = f"{e!r} {getattr(e, 'traceback', '')}"
            assert secret not in text and "root:" not in text, text
            refused += 1
            continue
        data = client.fetch(out.files["out.txt"])
        assert secret.encode() not in data and b"root:" not in data
        assert data in (b"honest", b""), data  # ("": two leftover threads raced each other)
        honest += 1
    assert honest + refused == 100
    assert honest > 0  # the honest file still comes back when it is there
    print(f"symlink race (python): {honest} honest, {refused} refused, 0 leaked")
    assert client.submit(square, 5).result(WAIT) == 25


def test_a_command_leaving_a_link_swapper_never_reads_the_credential(
    client: Client, fog: LocalFog
) -> None:
    secret = credential(fog)
    node_json = str(fog.dir / "node-0" / "node.json")
    swap = (
        "echo honest > out.txt; "
        f"(while :; do ln -sf {node_json} l; mv -f l out.txt; ln -sf /etc/passwd l; "
        "mv -f l out.txt; echo honest > t; mv -f t out.txt; done) & sleep 0.05"
    )
    futures = client.run_many([["sh", "-c", swap]] * 50, outputs=["out.txt"])
    honest = refused = 0
    for fut in futures:
        try:
            res = fut.result(WAIT)
        except TaskFailed as e:
            assert secret not in str(e) and "root:" not in str(e)
            refused += 1
            continue
        data = res.outputs["out.txt"]
        assert secret.encode() not in data and b"root:" not in data
        assert data == b"honest\n", data
        honest += 1
    assert honest + refused == 50
    print(f"symlink race (command): {honest} honest, {refused} refused, 0 leaked")


def test_a_worker_that_left_a_process_is_not_used_again(client: Client) -> None:
    def leave_one() -> int:
        import os
        import subprocess

        subprocess.Popen(["sleep", "300"], start_new_session=True)
        return os.getpid()

    [left] = client.submit_many(leave_one, [((), {})])
    left.result(WAIT)
    # the sleep the task left is gone as soon as it finished, before any other task came
    deadline = time.monotonic() + 30
    while _guest_sleeps() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _guest_sleeps() == []


def _guest_sleeps() -> list[int]:
    from fogwheel.node.sandbox import GUEST_UID_BASE

    out = []
    for p in psutil.process_iter(["uids", "name", "cmdline"]):
        uids = p.info["uids"]
        guest = uids and (uids.real >= GUEST_UID_BASE or os.geteuid() != 0)
        if guest and p.info["name"] == "sleep" and "300" in (p.info["cmdline"] or []):
            out.append(p.pid)
    return out


# -- finding 9: device limits -----------------------------------------------------------------


def memory_bomb(each_mb: int) -> str:
    """Four processes, each under the limit alone, together far over it."""
    import os
    import time

    kids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            block = b"x" * (each_mb << 20)  # touched: resident, not just reserved
            time.sleep(5)
            os._exit(len(block) & 0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)
    return "survived"


@needs_root
def test_a_memory_bomb_across_four_processes_fails_clearly_and_the_other_slot_carries_on(
    client: Client,
) -> None:
    [other] = client.submit_many(slow_square, [((9,), {})])
    [bomb] = client.submit_many(memory_bomb, [((100,), {})], memory_mb=256, max_attempts=1)
    with pytest.raises(TaskFailed, match="memory limit of 256 MB exceeded"):
        bomb.result(WAIT)
    assert other.result(WAIT) == 81
    assert client.submit(square, 4).result(WAIT) == 16


@needs_root
def test_a_command_memory_bomb_fails_clearly(client: Client) -> None:
    code = (
        "import os, time\n"
        "for _ in range(4):\n"
        "    if os.fork() == 0:\n"
        "        b = b'x' * (100 << 20); time.sleep(5); os._exit(0)\n"
        "[os.wait() for _ in range(4)]\n"
    )
    [bomb] = client.run_many([[sys.executable, "-c", code]], memory_mb=256)
    with pytest.raises(TaskFailed, match="memory limit of 256 MB exceeded"):
        bomb.result(WAIT)
    assert client.run(["echo", "fine"]).result(WAIT).stdout == "fine\n"


def fill_scratch() -> int:
    written = 0
    with open("fill", "wb") as f:
        while True:
            f.write(b"\0" * (1 << 20))
            f.flush()
            written += 1


@needs_root
def test_a_disk_fill_fails_with_the_scratch_quota_and_the_other_slot_carries_on(
    client: Client,
) -> None:
    [other] = client.submit_many(slow_square, [((3,), {})])
    [fill] = client.submit_many(fill_scratch, [((), {})], memory_mb=1024, max_attempts=1)
    with pytest.raises(TaskFailed, match=f"scratch quota of {SCRATCH_MB} MB exceeded"):
        fill.result(WAIT)
    assert other.result(WAIT) == 9
    [cmd] = client.run_many(
        [["dd", "if=/dev/zero", "of=fill", "bs=1M", "count=4096"]], memory_mb=1024
    )
    with pytest.raises(TaskFailed, match=f"scratch quota of {SCRATCH_MB} MB exceeded"):
        cmd.result(WAIT)
    assert client.submit(square, 3).result(WAIT) == 9  # the space came back


def fork_bomb() -> None:
    import os

    while True:
        os.fork()


def test_a_fork_bomb_fails_and_the_other_slot_carries_on(client: Client) -> None:
    [other] = client.submit_many(slow_square, [((7,), {})])
    [bomb] = client.submit_many(fork_bomb, [((), {})], max_attempts=1, wall_s=60)
    with pytest.raises(Exception) as info:
        bomb.result(WAIT)
    said = f"{type(info.value).__name__}: {info.value}"
    assert any(w in said for w in ("memory limit", "BlockingIOError", "temporarily")), said
    assert other.result(WAIT) == 49
    assert client.submit(square, 2).result(WAIT) == 4


# -- seccomp and the host's details -----------------------------------------------------------


def forbidden_calls() -> dict[str, str]:
    """Each call a guest must not make, and the errno it got (or 'allowed')."""
    import ctypes
    import errno
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    calls = {
        "unshare(CLONE_NEWUSER)": lambda: libc.unshare(0x10000000),
        "unshare(CLONE_NEWNS)": lambda: libc.unshare(0x00020000),
        "clone(CLONE_NEWUSER)": lambda: syscall(56, 0x10000000 | 17, 0, 0, 0, 0),
        "setns": lambda: syscall(308, 0, 0),
        "ptrace(PTRACE_TRACEME)": lambda: libc.ptrace(0, 0, 0, 0),
        "ptrace(PTRACE_ATTACH, 1)": lambda: libc.ptrace(16, 1, 0, 0),
        "keyctl": lambda: syscall(250, 0, 0, 0, 0, 0),
        "add_key": lambda: syscall(248, b"user", b"k", b"v", 1, -2),
        "bpf": lambda: syscall(321, 0, 0, 0),
        "mount": lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None),
        "perf_event_open": lambda: syscall(298, 0, 0, -1, -1, 0),
    }
    out = {}
    for name, call in calls.items():
        ctypes.set_errno(0)
        rc = call()
        code = ctypes.get_errno()
        if rc == 0 and name.startswith("clone"):
            os._exit(0)  # the filter let it through: this is the child, which must not go on
        out[name] = "allowed" if rc >= 0 else errno.errorcode.get(code, str(code))
    return out


def test_namespaces_ptrace_keyrings_bpf_and_mount_are_refused(client: Client) -> None:
    got = client.submit(forbidden_calls).result(WAIT)
    assert got == dict.fromkeys(got, "EPERM"), got
    failed = client.run(["unshare", "--user", "--map-root-user", "true"]).exception(WAIT)
    assert failed is not None
    assert "Operation not permitted" in failed.result.stderr  # type: ignore[attr-defined]


def network_view() -> dict[str, object]:
    import os
    import socket

    return {
        "sys_class_net": os.listdir("/sys/class/net") if os.path.isdir("/sys/class/net") else [],
        "interfaces": [name for _, name in socket.if_nameindex()],
        "cpus": os.cpu_count(),
    }


def test_the_guest_sees_no_host_interface(client: Client) -> None:
    host = {n for n in os.listdir("/sys/class/net") if n != "lo"}
    assert host, "this host has no interface but lo: nothing to hide"
    seen = client.submit(network_view).result(WAIT)
    assert not host & set(seen["sys_class_net"]), seen
    assert not host & set(seen["interfaces"]), seen
    assert seen["cpus"], seen  # libraries still learn the core count


# -- kept state within its quota ------------------------------------------------------------


def keep_some(kb: int) -> int:
    import os

    os.makedirs("keep", exist_ok=True)
    with open("keep/state", "wb") as f:
        f.write(os.urandom(kb << 10))
    return kb


def test_kept_state_beyond_the_quota_is_evicted_least_recent_first(
    client: Client, fog: LocalFog
) -> None:
    kept = fog.dir / "node-0" / "kept"
    for i in range(3):  # 600 KB each under a 1 MB quota
        [f] = client.submit_many(keep_some, [((600,), {})], keep=[(None, f"evict/{i}")])
        assert f.result(WAIT) == 600
        time.sleep(1.1)  # distinct mtimes
    entries = [p for p in kept.iterdir() if not p.name.startswith(".")]
    total = sum(p.stat().st_size for e in entries for p in e.rglob("*") if p.is_file())
    assert total <= KEEP_MB << 20, (entries, total)
    assert len(entries) == 1  # the most recent one

    def found() -> bool:
        import os

        return os.path.exists("keep/state")

    [last] = client.submit_many(found, [((), {})], keep=[("evict/2", None)])
    assert last.result(WAIT) is True
    [first] = client.submit_many(found, [((), {})], keep=[("evict/0", None)])
    assert first.result(WAIT) is False  # evicted
    [big] = client.submit_many(keep_some, [((2048,), {})], keep=[(None, "evict/big")])
    with pytest.raises(TaskFailed, match="keep quota of 1 MB"):
        big.result(WAIT)


# -- secrets on command lines -----------------------------------------------------------------


def _cmdlines(root_pids: list[int]) -> dict[int, str]:
    out = {}
    for pid in root_pids:
        try:
            top = psutil.Process(pid)
            procs = [top, *top.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            with contextlib.suppress(OSError):
                out[p.pid] = Path(f"/proc/{p.pid}/cmdline").read_bytes().decode(errors="replace")
    return out


def test_no_secret_of_a_local_fog_is_on_any_command_line(client: Client, fog: LocalFog) -> None:
    client.submit(square, 1).result(WAIT)  # workers and sandboxes are up too
    secrets = [fog.join_token, fog.api_key, fog.admin_key, credential(fog)]
    assert fog.coordinator is not None
    pids = [fog.coordinator.pid] + [p.pid for p in fog.nodes if p is not None]
    lines = _cmdlines(pids)
    assert len(lines) >= 3
    for pid, line in lines.items():
        for s in secrets:
            assert s not in line, f"process {pid} shows a secret on its command line: {line!r}"


def test_fogwheel_up_keeps_secrets_off_command_lines_and_writes_a_private_env_file(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fogwheel", "up", "-n", "1", "--data-dir", str(tmp_path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        lines = _cmdlines([proc.pid])
        assert len(lines) >= 3  # up, its coordinator and its node
        for key in ("api_key", "admin_key", "join_token", "join_string"):
            for pid, line in lines.items():
                assert info[key] not in line, f"{key} on the command line of {pid}: {line!r}"
        env_file = Path(info["env_file"])
        assert env_file.stat().st_mode & 0o777 == 0o600
        text = env_file.read_text()
        assert info["api_key"] in text and info["admin_key"] in text
        out = subprocess.run(
            ["sh", "-c", f". {env_file} && echo $FOGWHEEL_API_KEY"], capture_output=True, text=True
        )
        assert out.stdout.strip() == info["api_key"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def test_a_secrets_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    path.write_text("FOGWHEEL_ADMIN_KEY=fwa_x\n")
    path.chmod(0o644)
    res = subprocess.run(
        [sys.executable, "-m", "fogwheel", "coordinator", "--secrets-file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "chmod 600" in " ".join(res.stderr.split())


def test_a_node_joins_with_a_token_file_and_shows_no_token(fog: LocalFog, tmp_path: Path) -> None:
    token = tmp_path / "join-token"
    token.write_text(fog.join_string + "\n")
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOGWHEEL_")}
    node_dir = tmp_path / "node"
    cmd = [sys.executable, "-m", "fogwheel", "node", "--coordinator", fog.url]
    cmd += ["--token-file", str(token), "--data-dir", str(node_dir), "--cores", "1", "--no-serve"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (node_dir / "node.json").exists():
            assert proc.poll() is None, "the node exited instead of joining"
            assert time.monotonic() < deadline, "the node did not join with its token file"
            time.sleep(0.1)
        line = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert fog.join_token not in line
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
