"""The 512 MB ARM box (issue 16 item 4): bench/arm_device.py's measures, and the device itself.

The device's memory cgroup must count what it claims to: a process that outgrows the group is
OOM-killed and counted, and the peak is the group's. That runs on any machine where root may
make a memory cgroup. The whole emulated device (an arm64 Debian root through qemu-user, a
real node agent in it under 512 MB, the demo's job, a k-mer split, a refused DiLoCo round) is
slow, and needs the root that `python bench/arm_device.py` builds once (10-20 minutes) in
~/.cache/fogwheel-arm64: where it is not cached, that test skips and says so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "arm_device.py"
ROOT = Path.home() / ".cache" / "fogwheel-arm64" / "root"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("arm_device", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _group(bench: ModuleType, mb: int) -> object:
    if os.geteuid() != 0:
        pytest.skip("memory cgroups need root")
    try:
        return bench.DeviceGroup(mb)
    except (OSError, bench.BenchmarkFailed) as e:
        pytest.skip(f"no memory cgroup can be made here: {e}")


def _run_in(group: object, code: str) -> int:
    join = group.join_script()  # type: ignore[attr-defined]
    proc = subprocess.run(
        ["sh", "-c", f'{join} && exec "$@"', "sh", sys.executable, "-c", code], timeout=60
    )
    return proc.returncode


def test_the_device_group_counts_an_oom_kill_and_its_peak() -> None:
    bench = _bench()
    group = _group(bench, 64)
    try:
        group.reset_peak()  # type: ignore[attr-defined]
        # 32 MB fits in 64 MB; then 256 MB does not: the kernel kills it (SIGKILL, -9)
        assert _run_in(group, "b = bytearray(32 << 20); b[::4096] = b'x' * len(b[::4096])") == 0
        assert group.oom_kills() == 0  # type: ignore[attr-defined]
        assert 32 <= group.peak_mb() <= 64  # type: ignore[attr-defined]
        code = "b = bytearray(256 << 20); b[::4096] = b'x' * len(b[::4096])"
        assert _run_in(group, code) == -9
        assert group.oom_kills() >= 1  # type: ignore[attr-defined]
        assert 60 <= group.peak_mb() <= 64.1  # type: ignore[attr-defined]
    finally:
        group.remove()  # type: ignore[attr-defined]


def test_torch_goes_into_the_root_only_from_a_directory_that_holds_it(tmp_path: Path) -> None:
    bench = _bench()
    root = tmp_path / "root"
    (root / "usr/local/lib/python3.11/dist-packages").mkdir(parents=True)
    with pytest.raises(bench.BenchmarkFailed, match="no torch in"):
        bench.install_torch(root, tmp_path / "empty")
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch/version.py").write_text("__version__ = '2.9.1+cpu'\n")
    assert bench.install_torch(root, site) == "2.9.1+cpu"
    pth = root / "usr/local/lib/python3.11/dist-packages/torch-site.pth"
    assert pth.read_text().strip() == bench.TORCH_SITE
    assert (root / bench.TORCH_SITE.lstrip("/") / "torch/version.py").exists()
    assert bench.install_torch(root, None) is None and not pth.exists()  # a run without it


def test_the_mirror_is_the_one_apt_uses() -> None:
    mirror = _bench().debian_mirror()
    assert mirror.startswith(("http://", "https://")) and mirror.rstrip("/").endswith("debian")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_emulated_512_mb_arm64_device_runs_the_work_that_fits_and_refuses_the_rest() -> None:
    if not (ROOT / "usr" / "bin" / "python3").exists():
        pytest.skip(f"no arm64 root cached in {ROOT}: `python bench/arm_device.py` builds it")
    if os.geteuid() != 0 or not Path("/usr/lib/binfmt.d/qemu-aarch64.conf").exists():
        pytest.skip("needs root and qemu-user-static (apt-get install qemu-user-static)")
    args = ["--demo-tasks", "20", "--kmer-mbp", "0.2", "--no-x86", "--diloco-wait", "45"]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=840
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "aarch64" in figures["node_platform"]
    assert figures["advertised_memory_mb"] == 512  # the cgroup's limit, not the host's RAM
    assert figures["oom_kills"] == 0
    assert 10 < figures["agent_rss_mb"] < 512
    peaks = figures["peak_rss_mb"]
    assert 0 < peaks["demo"] < 512 and 0 < peaks["kmer"] < 512
    assert figures["kmer"]["exact"] is True
    diloco = figures["diloco"]
    assert diloco["placed"] is False and diloco["for_memory"] is True and peaks["diloco"] is None
    assert "it needs 1536 MB and the largest live node offers 512 MB" in diloco["sentence"]
