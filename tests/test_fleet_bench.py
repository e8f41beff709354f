"""bench/fleet.py in its smallest form, so that it cannot rot: 50 devices, one SQLite
coordinator, a few seconds, no-op work kept queued. Figures are printed, never asserted
(speed is shown by the benchmark, not by a timed test); only that the run worked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "fleet.py"
KEYS = {"devices", "syncs_per_s", "p50_ms", "p99_ms", "errors", "tasks_per_s", "pg3_vs_pg1"}


def test_the_fleet_benchmark_runs_devices_that_sync_lease_and_report_over_http() -> None:
    cmd = [sys.executable, str(BENCH), "--devices", "50", "--setups", "sqlite", "--seconds", "3"]
    cmd += ["--ramp", "1", "--warmup", "1.5", "--queued", "60", "--batch", "30"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    print(run.stdout)
    assert set(figures) >= KEYS
    assert figures["devices"] == 50
    assert figures["errors"] == 0, figures
    assert figures["pg3_vs_pg1"] is None  # only one setup ran
    sqlite = figures["setups"]["sqlite"]
    assert sqlite["coordinator_tracebacks"] == 0
    assert figures["syncs_per_s"] > 0
    assert figures["tasks_per_s"] > 0, "the devices leased and reported no-op tasks"
    assert sqlite["idle_next_sync_s"] is None or sqlite["idle_next_sync_s"] >= 0.5
