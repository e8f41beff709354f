"""Every `period_s` seconds, the fog's figures into the flywheel's history (core/flywheel.py).

One loop a coordinator process; with several processes on one database each tries every slot
and the first insert wins, so the history neither doubles nor stops when one process does.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.concurrency import run_in_threadpool

from fogwheel.core import flywheel
from fogwheel.store import Store

log = logging.getLogger("fogwheel.coordinator")


def take_sample(store: Store, period_s: float, keep_s: float, now: float) -> bool:
    """Count the fog now and record it; True when this call wrote the slot."""
    counts = store.flywheel_counts(now, store.price_sheet())
    return store.record_sample(flywheel.sample(counts, now, period_s), keep_s)


async def sample_forever(
    store: Store, period_s: float, keep_s: float = flywheel.DEFAULT_KEEP_S
) -> None:
    """Sample at the start of each slot, for as long as the coordinator runs."""
    while True:
        try:
            await run_in_threadpool(take_sample, store, period_s, keep_s, time.time())
        except Exception:
            log.exception("flywheel sample failed; the next one is in %.0f s", period_s)
        now = time.time()
        await asyncio.sleep(period_s - now % period_s + 0.01)
