"""Per-task overhead of running a command in a program image, against the same command without.

Two measures. End to end: one local node with one slot (a real coordinator and agent,
bubblewrap), a job of N tasks of `/bin/true` run bare (the host's root, read-only), then the
same job in a busybox-static image built here, alternating, `--repeats` times; the per-task
time is the job's wall time over N (round trips included, so noisy on a loaded machine).
Sandbox start: the node's own `Bubblewrap.wrap` command line for `true`, bare and in the
unpacked image, started and waited for `--starts` times each, alternating; medians. And the
image's cold start on a node: `unpack_s`, the node's ImageCache fetching (from local files),
hashing and unpacking it once.

    python bench/images.py              # 40 tasks a job, 3 repeats
    python bench/images.py --tasks 10 --repeats 2

Progress goes to stderr; the last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fogwheel import Client
from fogwheel.image_build import build
from fogwheel.localfog import LocalFog
from fogwheel.node.images import ImageCache
from fogwheel.node.sandbox import Limits, detect
from fogwheel.node.slots import guest_env


def sandbox_starts(image: Path, tmp: Path, n: int) -> tuple[float, float]:
    """Median seconds to start and finish `true` in the slot sandbox: bare, in `image`."""
    found = detect()
    assert found is not None, "no working bubblewrap"
    slot = found.for_slot(0, tmp)
    scratch = tmp / "scratch"
    scratch.mkdir()
    slot.hand_over(scratch)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(n):
        for imaged in (False, True):
            box = slot.in_image(image) if imaged else slot
            with box.filter_fd() as fd:
                argv = box.wrap(
                    ["true"],
                    scratch=scratch,
                    limits=Limits(),
                    env=guest_env(scratch),
                    seccomp_fd=fd,
                )
                t0 = time.perf_counter()
                subprocess.run(argv, check=True, pass_fds=() if fd is None else (fd,), cwd=scratch)
                times[imaged].append(time.perf_counter() - t0)
    return statistics.median(times[False]), statistics.median(times[True])


def unpack_once(root: Path, tmp: Path) -> tuple[Path, float]:
    """The image of `root` unpacked by a node's ImageCache, and how long that took."""
    built = build(root)
    blobs = {hashlib.sha256(p.read_bytes()).hexdigest(): p.read_bytes() for p in built.layers}
    raw = built.manifest.canonical()
    blobs[hashlib.sha256(raw).hexdigest()] = raw
    built.cleanup()
    cache = ImageCache(tmp / "images", 1 << 30)
    t0 = time.perf_counter()
    with cache.use(built.manifest.image_id(), lambda sha, dest: dest.write_bytes(blobs[sha])) as p:
        took = time.perf_counter() - t0
    return p, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--starts", type=int, default=30)
    args = ap.parse_args()
    from test_images import busybox_root  # the same root the tests build

    with tempfile.TemporaryDirectory(prefix="fogwheel-bench-images-") as tmp:
        root = busybox_root(Path(tmp) / "root")
        unpacked, unpack_s = unpack_once(root, Path(tmp))
        bare_start, image_start = sandbox_starts(unpacked, Path(tmp), args.starts)
        print(
            f"sandbox start: bare {bare_start * 1000:.1f} ms, image {image_start * 1000:.1f} ms; "
            f"unpack {unpack_s:.3f} s",
            file=sys.stderr,
        )
        with (
            LocalFog(1, workdir=Path(tmp) / "fog") as fog,
            Client(fog.url, fog.api_key, replicas=1) as client,
        ):
            image = client.push_image(root)
            client.run(["/bin/true"], image=image).result(300)  # unpacked on the node
            bare, imaged = [], []
            for r in range(args.repeats):
                for label, img, out in (("bare", None, bare), ("image", image, imaged)):
                    t0 = time.perf_counter()
                    futs = client.run_many([["/bin/true"]] * args.tasks, image=img)
                    for f in futs:
                        f.result(600)
                    per = (time.perf_counter() - t0) / args.tasks
                    out.append(per)
                    print(f"repeat {r + 1} {label}: {per * 1000:.1f} ms a task", file=sys.stderr)
    overheads = [(i - b) * 1000 for b, i in zip(bare, imaged, strict=True)]
    print(
        json.dumps(
            {
                "tasks": args.tasks,
                "repeats": args.repeats,
                "bare_ms_per_task": [round(x * 1000, 1) for x in bare],
                "image_ms_per_task": [round(x * 1000, 1) for x in imaged],
                "image_overhead_ms": [round(x, 1) for x in overheads],
                "image_overhead_ms_median": round(statistics.median(overheads), 1),
                "sandbox_start_ms_bare": round(bare_start * 1000, 1),
                "sandbox_start_ms_image": round(image_start * 1000, 1),
                "sandbox_overhead_ms": round((image_start - bare_start) * 1000, 1),
                "unpack_s": round(unpack_s, 3),
                "image_mb": round(image.unpacked / 1e6, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
