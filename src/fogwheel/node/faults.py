"""Fault injection for tests of verification: a node that returns wrong results.

Off unless the node's own environment sets `FOGWHEEL_FAULT=wrong-results[:RATE]`; nothing the
coordinator sends can turn it on. A wrong result is a valid pickle of a different value (a
string naming this lie), so only a comparison with another node's result can expose it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
import random
from typing import Any

ENV = "FOGWHEEL_FAULT"


class Faults:
    def __init__(self, spec: str | None = None) -> None:
        spec = spec if spec is not None else os.environ.get(ENV, "")
        kind, _, rate = spec.partition(":")
        self.wrong_rate = float(rate or 1.0) if kind == "wrong-results" else 0.0
        self._rng = random.Random()

    @property
    def active(self) -> bool:
        return self.wrong_rate > 0

    def tamper(self, report: dict[str, Any]) -> dict[str, Any]:
        """Replace a successful result by a wrong one, at the configured rate."""
        if not report.get("ok") or self._rng.random() >= self.wrong_rate:
            return report
        lie = pickle.dumps(f"wrong result {self._rng.getrandbits(64):016x}")
        value = {
            "sha": hashlib.sha256(lie).hexdigest(),
            "size": len(lie),
            "data": base64.b64encode(lie).decode(),
        }
        return {**report, "value": value}
