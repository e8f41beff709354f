"""A node as a service (issue #16 item 3): the unit file's text from options, refused when an
option could inject into it, checked by `systemd-analyze verify`; `fogwheel node install
--dry-run` and an install into a temp root (`--root`, real `systemctl --root` and
`systemd-sysusers --root`); pause and resume on the pure node machine and on a real agent
joined to a real coordinator running a job; and, where this machine allows, the whole path
in a real systemd booted in namespaces of its own (tests/systemd_container.sh)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fogwheel import __version__
from fogwheel.core import nodeservice as svc
from fogwheel.core.nodestate import (
    Kill,
    NodeState,
    PauseRequested,
    ResumeRequested,
    Run,
    Settings,
    SleepUntil,
    Sync,
    SyncAnswered,
    TaskFinished,
    Tick,
)
from fogwheel.node import control

NOW = 1_000.0
HERE = Path(__file__).parent
SYSTEM_PYTHON = "/usr/bin/python3"  # outside /root and /home, where a service can see it
JOIN = "fwj_abcdefghijklmnopqrstuvwx#sha256:" + "ab" * 32


def options(**kw: Any) -> svc.ServiceOptions:
    return svc.ServiceOptions(
        **{"coordinator": "http://192.0.2.7:8470", "python": "/opt/fw/bin/python", **kw}
    )


# -- the pure node machine: pause and resume ------------------------------------------------


def lease(tid: int, attempt: int = 1) -> dict[str, Any]:
    return {"task_id": tid, "attempt": attempt, "lease_expires": NOW + 15, "kind": "python"}


def sync(m: NodeState, now: float = NOW) -> Sync:
    [s] = [i for i in m.handle(Tick(now)) if isinstance(i, Sync)]
    return s


def answered(m: NodeState, now: float = NOW, tasks: tuple[dict[str, Any], ...] = ()) -> list[Any]:
    return m.handle(SyncAnswered(now, tasks=tasks, signed=(True,) * len(tasks)))


def busy_node() -> NodeState:
    """One slot: task 1 running, task 2 queued."""
    m = NodeState(Settings(slots=1))
    sync(m)
    out = answered(m, tasks=(lease(1), lease(2)))
    assert [i.lease["task_id"] for i in out if isinstance(i, Run)] == [1]
    return m


def test_a_pause_stops_what_runs_hands_everything_back_at_once_and_asks_for_nothing() -> None:
    m = busy_node()
    out = m.handle(PauseRequested(NOW + 1))
    assert [(i.task_id, i.why) for i in out if isinstance(i, Kill)] == [(1, "pause")]
    m.handle(TaskFinished(1, NOW + 1.1, None))  # its slot comes back without a result
    s = sync(m, NOW + 1.1)  # at once: no waiting for the next renewal
    assert sorted(s.body["release"]) == [1, 2] and s.body["want"] == 0 and s.body["renew"] == []
    # a lease that arrives anyway (sent before the pause was known) goes straight back
    out = answered(m, NOW + 1.2, tasks=(lease(3),))
    assert not [i for i in out if isinstance(i, Run)]
    assert sync(m, NOW + 2).body["release"] == [3]  # in the next poll


def test_a_pause_with_finish_lets_the_running_task_report_and_hands_back_the_queue() -> None:
    m = busy_node()
    out = m.handle(PauseRequested(NOW + 1, finish=True))
    assert not [i for i in out if isinstance(i, Kill)]
    assert sync(m, NOW + 1).body["release"] == [2]
    answered(m, NOW + 1.1)
    m.handle(TaskFinished(1, NOW + 2, {"task_id": 1, "attempt": 1, "ok": True, "wall_s": 1.0}))
    s = sync(m, NOW + 2.1)
    assert [r["task_id"] for r in s.body["results"]] == [1] and s.body["want"] == 0


def test_a_paused_node_with_nothing_in_hand_polls_at_its_idle_pace_not_in_a_busy_loop() -> None:
    m = NodeState(Settings(slots=2, poll_s=0.5))
    m.handle(PauseRequested(NOW))
    sync(m)
    answered(m, NOW)
    [sleep] = [i for i in m.handle(Tick(NOW + 0.01)) if isinstance(i, SleepUntil)]
    assert sleep.t >= NOW + 0.5


def test_resume_asks_for_work_again_and_runs_a_handed_back_task_leased_again() -> None:
    m = busy_node()
    m.handle(PauseRequested(NOW + 1))
    m.handle(TaskFinished(1, NOW + 1.1, None))
    sync(m, NOW + 1.1)
    answered(m, NOW + 1.2)  # the coordinator has tasks 1 and 2 back
    m.handle(ResumeRequested(NOW + 2))
    assert sync(m, NOW + 2).body["want"] > 0
    # a hand-back is no attempt (core/tasks.py): the same (task, attempt) comes again, and it
    # is a new lease, not a replay
    out = answered(m, NOW + 2.1, tasks=(lease(2), lease(1)))
    assert [i.lease["task_id"] for i in out if isinstance(i, Run)] == [2]
    assert m.queue == {1: None}


def test_a_replayed_lease_of_a_task_that_was_finished_not_handed_back_is_still_refused() -> None:
    m = NodeState(Settings(slots=1))
    sync(m)
    answered(m, tasks=(lease(1),))
    m.handle(TaskFinished(1, NOW + 1, {"task_id": 1, "attempt": 1, "ok": True, "wall_s": 1.0}))
    sync(m, NOW + 1.1)
    m.handle(SyncAnswered(NOW + 1.2, acked=(1,)))
    sync(m, NOW + 3)
    out = answered(m, NOW + 3.1, tasks=(lease(1),))  # the old answer again
    assert not [i for i in out if isinstance(i, Run)]


# -- the unit file, pure --------------------------------------------------------------------


def test_the_unit_runs_the_agent_as_its_own_user_with_the_secret_only_as_a_credential() -> None:
    text = svc.unit_text(options(cores=2, name="Anna's old laptop"))
    assert "User=fogwheel\n" in text and "StateDirectory=fogwheel\n" in text
    assert "LoadCredential=join:/etc/fogwheel/join-token\n" in text
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert "--token-file %d/join" in exec_start and "--token " not in exec_start
    assert '--name "Anna\'s old laptop"' in exec_start
    # a device in a home serves CDN shares through its router: not on loopback (docs/cdn.md)
    assert "--serve-host 0.0.0.0" in exec_start
    assert "--serve-host 127.0.0.1" in svc.unit_text(options(serve_host="127.0.0.1"))
    for line in (
        "Restart=on-failure",
        "WantedBy=multi-user.target",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "CPUWeight=20",
        "MemoryMax=50%",
        "StandardOutput=journal",
        "Delegate=yes",
    ):
        assert f"\n{line}\n" in text, line
    # what bubblewrap needs stays allowed (tests/test_node_service.py's real systemd run)
    for line in ("RestrictNamespaces=", "SystemCallFilter=", "ProtectKernelTunables="):
        assert f"\n{line}" not in text, line


def test_the_plan_writes_the_secret_root_only_and_starts_the_service() -> None:
    plan = svc.plan_install(options(), JOIN)
    modes = {f.path: f.mode for f in plan.files}
    assert modes == {svc.SYSUSERS_PATH: 0o644, svc.TOKEN_PATH: 0o600, plan.unit_path: 0o644}
    assert [f.text for f in plan.files if f.path == svc.TOKEN_PATH] == [
        f"FOGWHEEL_JOIN_TOKEN={JOIN}\n"
    ]
    assert all(JOIN not in f.text for f in plan.files if f.path != svc.TOKEN_PATH)
    assert plan.commands[-1] == ("systemctl", "enable", "--now", "fogwheel-node.service")
    rooted = svc.plan_install(options(), JOIN, root=True)
    assert rooted.commands[-1] == ("systemctl", "enable", "fogwheel-node.service")
    assert ("systemctl", "daemon-reload") not in rooted.commands


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"name": "laptop\nExecStartPre=/bin/rm -rf /"}, "--name"),
        ({"name": "100%"}, "--name"),
        ({"name": "${HOME}"}, "--name"),
        ({"python": "/root/.venv/bin/python"}, "ProtectHome"),
        ({"python": "/home/anna/fw/bin/python"}, "ProtectHome"),
        ({"python": "python3"}, "absolute"),
        ({"python": "/opt/a b/python"}, "absolute"),
        ({"coordinator": "http://x/\nUser=root"}, "--coordinator"),
        ({"coordinator": "http://x/%n"}, "--coordinator"),
        ({"coordinator": "ftp://x"}, "--coordinator"),
        ({"memory_max": "lots"}, "--memory-max"),
        ({"memory_max": "0%"}, "--memory-max"),
        ({"cpu_weight": 0}, "--cpu-weight"),
        ({"user": "Root; rm"}, "--user"),
        ({"unit": "x.service"}, "--unit"),
        ({"extra_args": ("--token=abc",)}, "sets that itself"),
        ({"extra_args": ("a b",)}, "node option"),
        ({"serve_host": "0.0.0.0 --token x"}, "--serve-host"),
        ({"serve_host": "my-laptop"}, "--serve-host"),
    ],
)
def test_an_option_that_could_inject_into_the_unit_is_refused_with_the_option_named(
    change: dict[str, Any], says: str
) -> None:
    with pytest.raises(svc.ServiceError, match=says.replace("-", r"\-").replace("$", r"\$")):
        svc.unit_text(options(**change))


@pytest.mark.parametrize("bad", ["", "short", "has space#sha256:x", "x\nFOGWHEEL_ADMIN_KEY=y"])
def test_a_join_string_that_is_not_one_is_refused(bad: str) -> None:
    with pytest.raises(svc.ServiceError, match="TOKEN#sha256:PIN"):
        svc.token_text(bad)


# -- systemd-analyze verify -------------------------------------------------------------------


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "fogwheel-node.service"
    path.write_text(unit_text)
    return subprocess.run(
        ["systemd-analyze", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"needs {SYSTEM_PYTHON}")
def test_systemd_analyze_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    text = svc.unit_text(options(python=SYSTEM_PYTHON, cores=2, name="old laptop", uplink_mbit=4))
    r = _verify(text, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fogwheel-node.service" not in r.stderr, r.stderr  # its warnings name the file
    # the check can fail: a mistyped value is a warning that names the line
    broken = _verify(text.replace("MemoryMax=50%", "MemoryMax=lots"), tmp_path)
    assert "Invalid memory limit 'lots'" in broken.stderr


# -- the CLI: --dry-run, and an install into a temp root --------------------------------------


def fogwheel(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fogwheel", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_install_dry_run_prints_the_unit_and_the_commands_and_no_secret(tmp_path: Path) -> None:
    r = fogwheel(
        "node",
        "install",
        "--coordinator",
        "http://192.0.2.7:8470",
        "--python",
        SYSTEM_PYTHON,
        "--cores",
        "2",
        "--dry-run",
        "--root",
        str(tmp_path),
        env={"FOGWHEEL_JOIN_TOKEN": JOIN},
    )
    assert r.returncode == 0, r.stderr
    assert f"# would write {tmp_path}/etc/systemd/system/fogwheel-node.service" in r.stdout
    assert (
        f"ExecStart={SYSTEM_PYTHON} -m fogwheel node --coordinator http://192.0.2.7:8470"
        in r.stdout
    )
    assert f"# would run: systemctl --root={tmp_path} enable fogwheel-node.service" in r.stdout
    assert "fwj_" not in r.stdout + r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_install_refuses_an_interpreter_the_service_could_not_see() -> None:
    r = fogwheel(
        "node",
        "install",
        "--coordinator",
        "http://192.0.2.7:8470",
        "--python",
        "/root/.pyenv/versions/3/bin/python",
        "--dry-run",
    )
    assert r.returncode == 2
    assert "ProtectHome=yes hides /home, /root" in r.stderr and "/opt/fogwheel" in r.stderr


@pytest.mark.skipif(
    not (shutil.which("systemctl") and shutil.which("systemd-sysusers")),
    reason="needs systemctl and systemd-sysusers (they work offline on a --root)",
)
def test_install_into_a_root_writes_enables_and_uninstall_removes_it_all(tmp_path: Path) -> None:
    root = tmp_path / "root"
    token = tmp_path / "join"
    token.write_text(f"FOGWHEEL_JOIN_TOKEN={JOIN}\n")
    token.chmod(0o644)
    args = [
        "node",
        "install",
        "--coordinator",
        "http://192.0.2.7:8470",
        "--python",
        SYSTEM_PYTHON,
        "--token-file",
        str(token),
        "--root",
        str(root),
        "--no-check",
    ]
    refused = fogwheel(*args)
    assert refused.returncode == 2 and "chmod 600" in refused.stderr  # a secret others can read
    token.chmod(0o600)
    r = fogwheel(*args)
    assert r.returncode == 0, r.stderr
    assert "installed fogwheel-node.service under" in r.stdout
    unit = root / "etc/systemd/system/fogwheel-node.service"
    secret = root / "etc/fogwheel/join-token"
    assert unit.read_text() == svc.unit_text(options(python=SYSTEM_PYTHON), version=__version__)
    assert secret.read_text() == f"FOGWHEEL_JOIN_TOKEN={JOIN}\n"
    assert secret.stat().st_mode & 0o777 == 0o600
    wants = root / "etc/systemd/system/multi-user.target.wants/fogwheel-node.service"
    assert os.readlink(wants) == "/etc/systemd/system/fogwheel-node.service"
    passwd = (root / "etc/passwd").read_text()
    assert "fogwheel:x:" in passwd and ":/var/lib/fogwheel:/usr/sbin/nologin" in passwd
    assert JOIN not in unit.read_text()

    gone = fogwheel("node", "uninstall", "--root", str(root), "--purge")
    assert gone.returncode == 0, gone.stderr
    assert not unit.exists() and not secret.exists() and not wants.is_symlink()
    assert not (root / svc.SYSUSERS_PATH.lstrip("/")).exists()
    assert "fogwheel:x:" not in (root / "etc/passwd").read_text()
    again = fogwheel("node", "uninstall", "--root", str(root))
    assert again.returncode == 1 and "no fogwheel-node.service is installed" in again.stderr


def test_install_without_root_or_systemd_says_what_to_do_instead() -> None:
    if os.geteuid() == 0 and control.__name__ and Path("/run/systemd/system").is_dir():
        pytest.skip("this machine runs systemd as root: the install would be real")
    r = fogwheel(
        "node",
        "install",
        "--coordinator",
        "http://192.0.2.7:8470",
        "--python",
        SYSTEM_PYTHON,
        "--no-check",
        env={"FOGWHEEL_JOIN_TOKEN": JOIN},
    )
    assert r.returncode == 1
    assert "run it with sudo" in r.stderr or "systemd is not running" in r.stderr


# -- pause and resume on a real agent and a real coordinator ----------------------------------


def _slow(i: int) -> int:
    import time

    time.sleep(2.0)
    return i * 10


def _status(d: Path) -> dict[str, Any]:
    return control.read_status(d) or {}


def _until(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_pause_hands_held_tasks_back_they_finish_elsewhere_once_and_resume_picks_up(
    tmp_path: Path,
) -> None:
    from fogwheel import Client
    from fogwheel.localfog import LocalFog

    with LocalFog(nodes=2, lease_seconds=6.0, workdir=tmp_path / "fog") as fog:
        # a third node whose owner paused it before it ever started: it stays out of the work
        pre = fog.dir / "node-2"
        pre.mkdir()
        control.write_pause(pre, finish=False, now=time.time())
        fog.add_node()
        fog.wait_for_nodes(3)
        d0 = fog.dir / "node-0"
        with Client(fog.url, api_key=fog.api_key, replicas=1) as client:
            futures = client.submit_many(_slow, [((i,), {}) for i in range(8)])
            _until("node 0 running a task", lambda: _status(d0).get("running", 0) >= 1)
            paused = fogwheel("node", "pause", "--data-dir", str(d0))
            assert paused.returncode == 0, paused.stderr
            assert "paused: work handed back" in paused.stdout
            s = _status(d0)
            assert s["paused"] and s["running"] == 0 and s["queued"] == 0 and s["handing_back"] == 0
            finished_when_paused = s["tasks_finished"]
            shown = fogwheel("node", "status", "--data-dir", str(d0), "--json")
            assert json.loads(shown.stdout)["paused"] is True
            time.sleep(3.0)  # the other node works on; this one takes nothing
            assert _status(d0)["tasks_finished"] == finished_when_paused
            resumed = fogwheel("node", "resume", "--data-dir", str(d0))
            assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stderr
            assert [f.result(timeout=120) for f in futures] == [i * 10 for i in range(8)]
            tasks = client.tasks(futures[0].job_id)
            history = [h for t in tasks for h in t["history"]]
            assert (
                sorted(sum(h["outcome"] == "accepted" for h in t["history"]) for t in tasks)
                == [1] * 8
            )
            node0 = _status(d0)["node_id"]
            assert any(h["outcome"] == "released" and h["node_id"] == node0 for h in history)
            # resumed, it takes work again
            again = client.submit_many(_slow, [((i,), {}) for i in range(4)])
            assert [f.result(timeout=120) for f in again] == [0, 10, 20, 30]
            later = [h for t in client.tasks(again[0].job_id) for h in t["history"]]
            assert any(h["node_id"] == node0 for h in later)
            # the pre-paused node never held a task
            node2 = _until("node 2's status", lambda: _status(pre).get("node_id"))
            assert _status(pre)["paused"] is True
            assert not any(h["node_id"] == node2 for h in history + later)


def test_a_pause_file_that_is_not_ours_still_pauses_and_never_crashes_the_reader(
    tmp_path: Path,
) -> None:
    (tmp_path / control.PAUSE_FILE).write_bytes(b"\xff" * 10_000_000)
    assert control.read_pause(tmp_path) == control.PauseOrder()
    (tmp_path / control.PAUSE_FILE).unlink()
    (tmp_path / control.PAUSE_FILE).symlink_to("/etc/shadow")
    assert control.read_pause(tmp_path) == control.PauseOrder()
    (tmp_path / control.PAUSE_FILE).unlink()
    assert control.read_pause(tmp_path) is None
    control.write_pause(tmp_path, finish=True, now=5.0)
    assert control.read_pause(tmp_path) == control.PauseOrder(finish=True, at=5.0)
    (tmp_path / control.STATUS_FILE).write_text("[1, 2]")
    assert control.read_status(tmp_path) is None


# -- the whole path in a real systemd ---------------------------------------------------------


def _container_possible() -> str | None:
    """Why a systemd cannot be booted in namespaces here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, cgroups)"
    for tool in ("unshare", "nsenter", "bwrap", "systemctl"):
        if not shutil.which(tool):
            return f"needs {tool}"
    if not os.access("/lib/systemd/systemd", os.X_OK):
        return "needs /lib/systemd/systemd"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "needs overlayfs"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"needs {SYSTEM_PYTHON}"
    mine = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if mine != str(sys.version_info[:2]):
        return f"{SYSTEM_PYTHON} is Python {mine}, not this one's {sys.version_info[:2]}"
    import fogwheel

    src = Path(fogwheel.__file__).resolve()
    if src.is_relative_to("/tmp"):  # the unit's PrivateTmp=yes hides an editable checkout
        return (
            f"fogwheel is imported from {src.parent} under /tmp, which the unit's "
            "PrivateTmp=yes hides from the service: run from a checkout elsewhere (e.g. /work)"
        )
    return None


@pytest.mark.skipif(_container_possible() is not None, reason=str(_container_possible()))
def test_a_real_systemd_installs_runs_pauses_resumes_restarts_and_uninstalls_the_node(
    tmp_path: Path,
) -> None:
    import sysconfig

    box = tmp_path / "box"
    box.mkdir()
    boot = subprocess.Popen(
        [
            "bash",
            str(HERE / "systemd_container.sh"),
            str(box),
            sysconfig.get_paths()["purelib"],
            str(HERE.parent.resolve()),  # the checkout under test, wherever it was cloned
        ],
        stdout=open(box / "boot.log", "wb"),  # noqa: SIM115 - the child keeps it
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pid1 = None
    try:
        # bash execs unshare, whose one child becomes systemd, PID 1 of the namespaces
        children = Path(f"/proc/{boot.pid}/task/{boot.pid}/children")

        def booted() -> int | None:
            with contextlib.suppress(OSError, ValueError):
                [child] = children.read_text().split()
                if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"/lib/systemd/"):
                    return int(child)
            return None

        pid1 = _until("systemd to start", booted, timeout=60)
        _until(
            "systemd to finish booting",
            lambda: (
                subprocess.run(
                    ["nsenter", "-t", str(pid1), "-a", "systemctl", "is-system-running"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.strip()
                in ("running", "degraded")
            ),
            timeout=90,
        )
        r = subprocess.run(
            [
                "nsenter",
                "-t",
                str(pid1),
                "-a",
                sys.executable,
                str(HERE / "node_service_inside.py"),
            ],
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )
        (tmp_path / "inside.json").write_text(r.stdout)
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        assert "failed" not in seen, (seen["failed"], seen["transcript"][-1], r.stderr[-3000:])
        assert r.returncode == 0, r.stderr[-3000:]
        props = seen["props"]
        assert props["User"] == "fogwheel" and props["ActiveState"] == "active"
        assert props["UnitFileState"] == "enabled" and props["NoNewPrivileges"] == "yes"
        assert seen["main_user"] == "fogwheel"
        join_token = seen["join_string"].split("#")[0]
        assert join_token not in seen["cmdline"] and not seen["environ_has_token"]
        assert (
            not seen["unit_has_token"] and seen["token_mode"] == "0o600" and seen["token_uid"] == 0
        )
        assert seen["data_dir_mode"] == "0o750"
        assert seen["sandbox"].startswith("bubblewrap")  # it runs under the unit's hardening
        assert seen["squares"] == [0, 1, 4, 9, 16, 25]
        a = seen["paused_status"]["agent"]
        assert a["paused"] and a["running"] == 0 and a["queued"] == 0
        assert "running" not in seen["states_while_paused"]
        assert "released" in seen["outcomes_while_paused"]
        assert seen["slow"] == [100 + i for i in range(6)]
        assert seen["accepted_attempts"] == [1] * 6
        assert (
            "paused by the owner" in seen["journal"] and "resumed by the owner" in seen["journal"]
        )
        assert "replayed" not in seen["journal"]  # a handed-back task leased again just runs
        assert seen["after_uninstall"] == {
            "unit": False,
            "token": False,
            "data": False,
            "user": False,
            "active": "inactive",
        }
    finally:
        if pid1 is not None:
            os.kill(pid1, signal.SIGKILL)  # PID 1 of its namespace: everything in it dies
        with contextlib.suppress(ProcessLookupError):
            os.killpg(boot.pid, signal.SIGKILL)
        boot.wait(30)
        groups = (box / "cgroups").read_text().split() if (box / "cgroups").exists() else []
        deadline = time.monotonic() + 30  # killed processes leave their groups a moment later
        while groups and time.monotonic() < deadline:
            for group in groups:
                for sub in sorted(Path(group).glob("**/"), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            groups = [g for g in groups if Path(g).exists()]
            time.sleep(0.2)
        assert not groups, f"cgroups left behind: {groups}"
