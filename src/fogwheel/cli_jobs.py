"""Stopping and watching jobs: Ctrl-C, `fogwheel cancel`, `fogwheel attach`, `fogwheel logs`.

Ctrl-C works as in `docker run`: during a command that waits for a job (run, mapreduce,
render, kmer, train, attach), the first Ctrl-C says it is cancelling the job on the fog and
gives a moment in which a second Ctrl-C leaves the job running instead (and says how to
reattach or cancel it later); either way the command exits 130. A cancelled job's unfinished
tasks are never run again, the nodes running them stop them at their next sync, and nobody
is charged or paid for them; finished tasks keep their results and their charges.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import as_completed
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from fogwheel.cli import ApiKeyOpt, CoordinatorOpt, _client, _fail, err, out

GRACE_S = 2.0  # after the first Ctrl-C: the time a second one has to leave the job running
MAX_TASKS_SHOWN = 100  # `fogwheel logs JOB` without a task: the first this many tasks


def _jobs_text(job_ids: list[int]) -> str:
    return f"job {job_ids[0]}" if len(job_ids) == 1 else "jobs " + ", ".join(map(str, job_ids))


def _say(message: str, style: str | None = None) -> None:
    err.print(Text(message, style=style or ""), highlight=False, soft_wrap=True)


@contextlib.contextmanager
def stopping(client: Any) -> Iterator[None]:
    """Ctrl-C inside this block cancels on the fog the jobs this client still waits for
    (`Client.pending_jobs`), unless a second Ctrl-C comes within GRACE_S; exits 130."""
    try:
        yield
    except KeyboardInterrupt:
        _interrupted(client)
        raise typer.Exit(130) from None


def _interrupted(client: Any) -> None:
    jobs = client.pending_jobs()
    if not jobs:
        _say("interrupted")
        return
    it = "it" if len(jobs) == 1 else "them"
    try:
        # inside the try: a second Ctrl-C can arrive as soon as the line is out, before the
        # print returns
        _say(
            f"cancelling {_jobs_text(jobs)} on the fog… (press Ctrl-C again to leave {it} running)"
        )
        time.sleep(GRACE_S)
    except KeyboardInterrupt:
        _left_running(jobs)
        return
    done: list[int] = []
    try:
        for job_id in client.pending_jobs():  # those that finished meanwhile keep "done"
            client.cancel(job_id)
            done.append(job_id)
    except KeyboardInterrupt:
        _left_running([j for j in jobs if j not in done], maybe=True)
    except Exception as e:  # unreachable, say: the job goes on, and the user must know it
        left = [j for j in jobs if j not in done]
        _say(f"could not cancel {_jobs_text(left)}: {e}", "red")
        _left_running(left)
        return
    if done:
        _say(
            f"cancelled {_jobs_text(done)} on the fog: tasks that had not finished will not "
            "run or cost anything"
        )


def _left_running(jobs: list[int], maybe: bool = False) -> None:
    if not jobs:
        return
    ids = " ".join(map(str, jobs))
    verb = "may still be running" if maybe else "left running"
    _say(
        f"{_jobs_text(jobs)} {verb} on the fog: `fogwheel attach {jobs[0]}` watches it, "
        f"`fogwheel cancel {ids}` stops it, `fogwheel logs {jobs[0]}` shows its output"
    )


# -- fogwheel cancel ------------------------------------------------------------------------


def cancel(
    job_ids: Annotated[
        list[int], typer.Argument(help="The jobs to cancel (ids from `fogwheel jobs`).")
    ],
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Cancel jobs: their unfinished tasks never run again and cost nothing.

    Nodes running them stop at their next sync (within seconds) and are not paid for them;
    finished tasks keep their results and charges.

    Example: fogwheel cancel 12 13
    """
    from fogwheel.errors import FogwheelError

    failed = 0
    with _client(coordinator, api_key, 0) as client:
        for job_id in job_ids:
            try:
                before = client.job(job_id)
                if before["state"] != "running":
                    _say(f"job {job_id} is already {before['state']}: nothing to cancel")
                    continue
                client.cancel(job_id)
            except FogwheelError as e:
                err.print(Text.assemble(("error:", "red"), " ", str(e)), highlight=False)
                failed += 1
                continue
            _say(
                f"cancelled job {job_id} ({before['name']}): {before['finished']} of "
                f"{before['total']} tasks had finished; the others will not run"
            )
    if failed:
        raise typer.Exit(1)


# -- fogwheel attach ------------------------------------------------------------------------


def attach(
    job_id: Annotated[int, typer.Argument(help="The job to watch (an id from `fogwheel jobs`).")],
    out_dir: Annotated[
        Path, typer.Option(help="Where to save a command job's output files.")
    ] = Path("."),
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Watch a job submitted earlier until it ends, with a progress bar, then show its
    results as `fogwheel run` would: a command job's stdout and stderr and its output files
    (in a folder per task when it has several), a Python job's values.

    Ctrl-C cancels the job (a second Ctrl-C leaves it running). Exits 1 if a task failed.

    Example: fogwheel attach 12
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from fogwheel import cli_waits as waits
    from fogwheel.errors import FogwheelError

    with _client(coordinator, api_key, 0) as client:
        try:
            job = client.job(job_id)
            futures = client.attach(job_id)
        except FogwheelError as e:
            raise _fail(str(e)) from None
        if job["state"] == "running":
            _say(
                f"watching job {job_id} ({job['name']}): {job['finished']} of {job['total']} "
                "tasks finished; Ctrl-C cancels it"
            )
        else:
            _say(f"job {job_id} ({job['name']}) is {job['state']}")
        columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        columns += (waits.notice.column(),)  # why it waits, while it does (cli_waits.py)
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(f"job {job_id} {job['name']}"[:60], total=len(futures))
            for _ in as_completed(futures):
                bar.advance(task)
        failures = sum(_show(f, job, out_dir) for f in futures)
    if failures:
        raise _fail(f"{failures} of {len(futures)} tasks of job {job_id} failed")


def _show(fut: Any, job: dict[str, Any], out_dir: Path) -> bool:
    """Print one task's result as `fogwheel run` does; True when it failed."""
    from fogwheel.errors import CommandFailed, FogwheelError

    many = job["total"] > 1
    if many:
        _say(f"── task {fut.index}", "dim")
    try:
        res = fut.result()
    except CommandFailed as e:
        if e.result is not None:
            sys.stdout.write(e.result.stdout)
            sys.stderr.write(e.result.stderr)
        _say(f"task {fut.index}: {e}", "red")
        return True
    except Exception as e:
        _say(f"task {fut.index}: {type(e).__name__}: {e}", "red")
        return True
    if job["kind"] != "command":
        out.print(repr(res), markup=False, highlight=False, soft_wrap=True)
        return False
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    for note in res.warnings:
        _say(f"warning: {note}", "yellow")
    try:
        for path in res.save(out_dir / str(fut.index) if many else out_dir, overwrite=True):
            _say(f"saved {path}")
    except FogwheelError as e:
        _say(f"task {fut.index}: {e}", "red")
        return True
    return False


# -- fogwheel logs --------------------------------------------------------------------------


def logs(
    job_id: Annotated[int, typer.Argument(help="The job (an id from `fogwheel jobs`).")],
    task: Annotated[
        int | None,
        typer.Argument(help="One task's index in the job (default: every task, in order)."),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Wait for tasks still running and show each as it ends."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON answers.")] = False,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Show what a job's tasks left behind: a command's stdout and stderr (the last 64 KiB
    of each), a Python task's traceback, and each attempt's node and outcome.

    Stdout goes to stdout, everything else to stderr. Ctrl-C stops following; the job goes on.

    Example: fogwheel logs 12 3
    """
    from fogwheel.errors import FogwheelError

    with _client(coordinator, api_key, 0) as client:
        try:
            job = client.job(job_id)
            total = job["total"]
            if task is not None and not 0 <= task < total:
                raise _fail(f"job {job_id} has tasks 0 to {total - 1}, not {task}", 2)
            indexes = [task] if task is not None else list(range(min(total, MAX_TASKS_SHOWN)))
            for i in indexes:
                entry = client.logs(job_id, i)
                while follow and entry["state"] in ("pending", "leased", "verifying"):
                    time.sleep(1.0)
                    entry = client.logs(job_id, i)
                _print_logs(entry, as_json, many=len(indexes) > 1)
        except FogwheelError as e:
            raise _fail(str(e)) from None
    if task is None and total > MAX_TASKS_SHOWN:
        _say(f"… and {total - MAX_TASKS_SHOWN} more tasks: name one, fogwheel logs {job_id} TASK")


def _print_logs(entry: dict[str, Any], as_json: bool, many: bool) -> None:
    if as_json:
        print(json.dumps(entry), flush=True)
        return
    head = f"task {entry['index']} of job {entry['job_id']}: {entry['state']}"
    if entry.get("returncode") is not None:
        head += f", exit status {entry['returncode']}"
    _say(("── " if many else "") + head, "bold")
    for a in entry["attempts"]:
        outcome = a["outcome"] or "running"
        _say(f"  attempt {a['n']} on {a['node_id']}: {outcome} ({a['reason']})", "dim")
    sys.stdout.write(entry.get("stdout") or "")
    sys.stdout.flush()
    sys.stderr.write(entry.get("stderr") or "")
    error = entry.get("error")
    if error and error.get("kind") != "exit":
        if error.get("traceback"):
            sys.stderr.write(error["traceback"].rstrip("\n") + "\n")
        elif error.get("message"):
            _say(f"{error['kind']}: {error['message']}", "red")
    if entry.get("note"):
        _say(entry["note"], "yellow")
    sys.stderr.flush()


def register(app: typer.Typer) -> None:
    """Add `cancel`, `attach` and `logs` to the `fogwheel` app."""
    app.command()(cancel)
    app.command()(attach)
    app.command()(logs)
