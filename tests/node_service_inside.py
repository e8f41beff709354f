"""Run inside tests/systemd_container.sh's systemd (as root): install a node as a service, run
a job on it, pause and resume it mid-job, uninstall it. Prints one JSON line of what it saw.

It is a script, not a test module: tests/test_node_service.py starts it with nsenter and checks
what it printed. The coordinator is a LocalFog of no nodes, in the container's own loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VENV = "/opt/fogwheel"
FOGWHEEL = [f"{VENV}/bin/python", "-m", "fogwheel"]
seen: dict[str, Any] = {"transcript": []}


def sh(*cmd: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run a command; keep what it printed for the docs (tests/test_node_service.py)."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    shown = " ".join(
        "fogwheel" if i == 0 and c.endswith("python") else c for i, c in enumerate(cmd)
    )
    shown = shown.replace("fogwheel -m fogwheel", "fogwheel")
    seen["transcript"].append({"cmd": shown, "rc": r.returncode, "out": r.stdout, "err": r.stderr})
    if check and r.returncode != 0:
        seen["failed"] = shown
        print(json.dumps(seen), flush=True)
        sys.exit(1)
    return r


def make_venv() -> None:
    """A venv of the distribution's python3 that imports the fogwheel under test."""
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", VENV], check=True)
    site = next(Path(VENV, "lib").glob("python3*/site-packages"))
    (site / "fogwheel-under-test.pth").write_text(
        "import site; site.addsitedir('/opt/fogwheel-site')\n"
    )


def wait_for(what: str, check: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.25)
    seen["failed"] = f"timed out waiting for {what}"
    print(json.dumps(seen), flush=True)
    sys.exit(1)


def status() -> dict[str, Any]:
    r = sh(*FOGWHEEL, "node", "status", "--json", check=False)
    seen["transcript"].pop()  # polled often: not for the transcript
    try:
        return dict(json.loads(r.stdout))
    except ValueError:
        return {}


def main() -> None:
    from fogwheel import Client
    from fogwheel.localfog import LocalFog

    os.chdir("/tmp")  # nsenter leaves the cwd of the caller's mount namespace
    make_venv()
    fog = LocalFog(nodes=0, lease_seconds=6.0, workdir="/tmp/fog")
    fog.start()
    try:
        token = Path("/root/join")
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"FOGWHEEL_JOIN_TOKEN={fog.join_string}\n")
        seen["join_string"] = fog.join_string
        sh(
            *FOGWHEEL,
            "node",
            "install",
            "--coordinator",
            fog.url,
            "--token-file",
            str(token),
            "--cores",
            "2",
            "--name",
            "old laptop",
        )
        show = sh(
            "systemctl",
            "show",
            "fogwheel-node.service",
            "-p",
            "MainPID,ActiveState,User,NoNewPrivileges,ExecStart,NRestarts,UnitFileState,MemoryMax,CPUWeight",
        )
        props = dict(line.split("=", 1) for line in show.stdout.splitlines() if "=" in line)
        seen["props"] = props
        pid = int(props["MainPID"])
        seen["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        seen["main_user"] = sh("ps", "-o", "user=", "-p", str(pid)).stdout.strip()
        seen["environ_has_token"] = fog.join_token in Path(f"/proc/{pid}/environ").read_text(
            errors="replace"
        )
        seen["unit_has_token"] = (
            fog.join_token in Path("/etc/systemd/system/fogwheel-node.service").read_text()
        )
        token_stat = os.stat("/etc/fogwheel/join-token")
        seen["token_mode"] = oct(token_stat.st_mode & 0o777)
        seen["token_uid"] = token_stat.st_uid
        seen["data_dir_mode"] = oct(os.stat("/var/lib/fogwheel").st_mode & 0o777)
        agent = wait_for("the agent's status", lambda: status().get("agent"))
        seen["sandbox"] = agent.get("sandbox")

        with Client(fog.url, api_key=fog.api_key, replicas=1) as client:
            # a job runs on the service, under bubblewrap, inside the unit's hardening
            seen["squares"] = list(client.map(_square, range(6)))
            sh(*FOGWHEEL, "node", "status")

            # pause mid-job: the tasks in hand go back, none runs while paused; resume: all
            # finish, each once
            futures = client.submit_many(_slow, [((i,), {}) for i in range(6)])
            wait_for("tasks running", lambda: (status().get("agent") or {}).get("running", 0) >= 2)
            sh(*FOGWHEEL, "node", "pause")
            paused = status()
            seen["paused_status"] = paused
            job_id = futures[0].job_id
            time.sleep(4.0)
            tasks = client.tasks(job_id)
            seen["states_while_paused"] = sorted(t["state"] for t in tasks)
            seen["outcomes_while_paused"] = sorted(
                h.get("outcome") or "-" for t in tasks for h in t["history"]
            )
            sh(*FOGWHEEL, "node", "status")
            sh(*FOGWHEEL, "node", "resume")
            seen["slow"] = [f.result(timeout=120) for f in futures]
            tasks = client.tasks(job_id)
            seen["accepted_attempts"] = sorted(
                sum(h.get("outcome") == "accepted" for h in t["history"]) for t in tasks
            )
            seen["released_attempts"] = sum(
                h.get("outcome") == "released" for t in tasks for h in t["history"]
            )

        # a crash is restarted (Restart=on-failure)
        sh("systemctl", "kill", "-s", "KILL", "fogwheel-node.service")
        wait_for(
            "a restart",
            lambda: (
                sh(
                    "systemctl", "show", "-p", "NRestarts", "--value", "fogwheel-node"
                ).stdout.strip()
                not in ("", "0")
            ),
            timeout=60,
        )
        seen["journal"] = sh("journalctl", "-u", "fogwheel-node", "--no-pager", "-o", "cat").stdout
        sh(*FOGWHEEL, "node", "uninstall", "--purge")
        seen["after_uninstall"] = {
            "unit": Path("/etc/systemd/system/fogwheel-node.service").exists(),
            "token": Path("/etc/fogwheel/join-token").exists(),
            "data": Path("/var/lib/fogwheel").exists(),
            "user": subprocess.run(["getent", "passwd", "fogwheel"], check=False).returncode == 0,
            "active": sh("systemctl", "is-active", "fogwheel-node", check=False).stdout.strip(),
        }
    finally:
        fog.stop()
    print(json.dumps(seen), flush=True)


def _square(x: int) -> int:
    return x * x


def _slow(i: int) -> int:
    import time

    time.sleep(3.0)
    return i + 100


if __name__ == "__main__":
    main()
