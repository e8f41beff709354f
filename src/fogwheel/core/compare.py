"""When two replicas' results agree: by content hash, or within a numeric tolerance.

Floating-point results can differ in their last bits between devices (BOINC's "fuzzy
comparison" problem). A job may ask for `tolerance` comparison: results are then decoded with a
restricted unpickler that builds only plain data (numbers, strings, bytes, lists, tuples, dicts,
sets) and never imports or calls anything — a node's bytes are not trusted — and two results
agree when every number in them is `math.isclose` to its counterpart. Anything that will not
decode so is compared by hash.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_PLAIN = {("builtins", n) for n in ("set", "frozenset", "complex", "bytearray", "slice")}
MAX_DECODE = 1 << 20  # bytes: larger results are compared by hash


@dataclass(frozen=True, slots=True)
class Tolerance:
    rel: float = 1e-9
    abs: float = 0.0


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def plain_loads(data: bytes) -> Any:
    """Decode a pickle that holds only plain data; raise UnpicklingError for anything else."""
    if len(data) > MAX_DECODE:
        raise pickle.UnpicklingError("too large to compare by value")
    return _PlainUnpickler(io.BytesIO(data)).load()


def close(a: Any, b: Any, tol: Tolerance) -> bool:
    """Structural equality in which numbers need only be within the tolerance."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=tol.rel, abs_tol=tol.abs)
    if isinstance(a, complex) and isinstance(b, complex):
        return close(a.real, b.real, tol) and close(a.imag, b.imag, tol)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(close(x, y, tol) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    return type(a) is type(b) and a == b


def agreement_classes(
    results: Sequence[tuple[str, str, bytes | None]], tol: Tolerance
) -> list[tuple[str, str]]:
    """Map `(node, digest, value bytes)` to `(node, class)`: a result that is close to an
    earlier one takes that one's digest as its class, so that equal classes mean agreement."""
    reps: list[tuple[str, Any]] = []  # (class digest, decoded value)
    out = []
    for node, digest, raw in results:
        cls = digest
        if raw is not None:
            try:
                value = plain_loads(raw)
            except Exception:  # not plain data: compared by hash
                value = None
            else:
                for rep_digest, rep_value in reps:
                    if close(value, rep_value, tol):
                        cls = rep_digest
                        break
                else:
                    reps.append((digest, value))
        out.append((node, cls))
    return out
