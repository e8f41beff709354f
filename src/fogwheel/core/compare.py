"""When two replicas' results agree: by content hash, or within a numeric tolerance.

Floating-point results can differ in their last bits between devices (BOINC's "fuzzy
comparison" problem). A job may ask for `tolerance` comparison: results are then decoded with a
restricted decoder that builds only plain data (numbers, strings, bytes, lists, tuples, dicts,
sets) and never imports or calls anything — a node's bytes are not trusted — and two results
agree when every number in them is `math.isclose` to its counterpart. Anything that will not
decode so is compared by hash.

Bounded work on untrusted bytes. A node chooses these bytes, so every step has a bound:
- decoding reads at most `MAX_DECODE` bytes and builds a value of at most `MAX_NODES` objects
  *counted as a tree* (a tuple named five times counts five times), nested at most `MAX_DEPTH`
  deep. Pickle's memo lets 150 bytes describe a list of 2**40 leaves (`[x, x]` forty times
  over). A mutable container (list, dict, set) named twice is refused outright (it could be
  filled after it was counted); an immutable one (a tuple, a frozenset) may be shared as long
  as the whole value, expanded, stays within the bound. So nothing later (comparison, `==`,
  hashing) can do more work than the bound;
- comparing two values visits at most `MAX_STEPS` nodes; past that the pair counts as
  "not close", and the results are compared by hash.
The decoder is a small interpreter over `pickletools.genops` (pure Python: it can count and
refuse as it goes, which the C unpickler cannot), for the opcodes that plain data uses.
"""

from __future__ import annotations

import math
import pickle
import pickletools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_DECODE = 1 << 20  # bytes: larger results are compared by hash
MAX_NODES = 1 << 20  # objects one decoded value may hold, counted as a tree
MAX_DEPTH = 100  # how deeply they may nest
MAX_STEPS = 100_000  # nodes one comparison (of one verdict) may visit: it runs under a lock

_PLAIN = {("builtins", n) for n in ("set", "frozenset", "complex", "bytearray", "slice")}
_TEXT = frozenset({"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"})
_INTS = frozenset({"INT", "LONG", "BININT", "BININT1", "BININT2", "LONG1", "LONG4"})
_BYTES = frozenset({"BINBYTES", "SHORT_BINBYTES", "BINBYTES8"})
_CONTAINERS = (list, tuple, dict, set, frozenset, slice)
_MUTABLE = (list, dict, set, bytearray)
_LEAVES = frozenset({int, float, str, bytes, bool, type(None), complex})


def _shareable(x: Any) -> bool:
    """Whether naming `x` twice may be allowed: anything but a mutable container, which
    could be filled after it was counted (an immutable one is counted each time it is named)."""
    return not isinstance(x, _MUTABLE)


@dataclass(frozen=True, slots=True)
class Tolerance:
    rel: float = 1e-9
    abs: float = 0.0


class _Mark:
    """The stack marker of MARK."""


_MARK = _Mark()


def _safe_bytearray(*args: Any) -> bytearray:
    # bytearray(10**12) would allocate a terabyte: only bytes or text become a bytearray
    if len(args) > 2 or (args and not isinstance(args[0], bytes | str)):
        raise pickle.UnpicklingError("bytearray from anything but bytes is not plain data")
    return bytearray(*args)


def _safe_set(*args: Any) -> set[Any]:
    return set(*args)


_CALLABLES: dict[str, Any] = {
    "set": _safe_set,
    "frozenset": frozenset,
    "complex": complex,
    "bytearray": _safe_bytearray,
    "slice": slice,
}


class _Decoder:
    """One decoding: the stack, the memo, and the counters that bound it."""

    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.depth: dict[int, int] = {}  # id of a container -> how deep it nests
        self.used: set[int] = set()  # ids of mutable containers already placed in another
        self.size: dict[int, int] = {}  # id of a container -> its objects, counted as a tree
        self.expanded = 0  # every placement's size: at least the value's size as a tree
        self.alive: list[Any] = []  # everything built stays alive, so no id is reused
        self.nodes = 0

    # -- bookkeeping ---------------------------------------------------------------------

    def _count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise pickle.UnpicklingError(f"more than {MAX_NODES} objects: compared by hash")

    def _grow(self, n: int) -> None:
        self.expanded += n
        if self.expanded > MAX_NODES:
            raise pickle.UnpicklingError(
                f"shared references that expand past {MAX_NODES} objects: compared by hash"
            )

    def push(self, obj: Any) -> None:
        self._count()
        if type(obj) not in _LEAVES:
            self.alive.append(obj)  # a container's id is never reused while it is tracked
            if isinstance(obj, _CONTAINERS) and id(obj) not in self.depth:
                self.depth[id(obj)] = 1
        self.stack.append(obj)

    def _place_all(self, parent: Any, items: list[Any]) -> None:
        """`_place` each item, leaves (the most of them) in one step."""
        leaves = 0
        for x in items:
            if type(x) in _LEAVES:
                leaves += 1
            else:
                self._place(parent, x)
        if leaves:
            self._grow(leaves)
            pid = id(parent)
            self.size[pid] = self.size.get(pid, 1) + leaves

    def _place(self, parent: Any, child: Any) -> None:
        """`child` goes inside `parent`: refuse a container that is already elsewhere, and
        track how deep the parent now nests."""
        if not _shareable(child):
            key = id(child)
            if key in self.used or child is parent:
                raise pickle.UnpicklingError("shared references are refused: compared by hash")
            self.used.add(key)
        d = self.depth.get(id(child), 0) + 1
        if d > MAX_DEPTH:
            raise pickle.UnpicklingError(f"nested deeper than {MAX_DEPTH}: compared by hash")
        pid = id(parent)
        if d > self.depth.get(pid, 1):
            self.depth[pid] = d
        n = self.size.get(id(child), 1)
        self._grow(n)
        self.size[pid] = self.size.get(pid, 1) + n

    def build(self, kind: type, items: list[Any]) -> Any:
        """A tuple/frozenset/slice from `items`, after placing each (depth bounded first, so
        hashing a frozenset's items cannot recurse without end)."""
        depth, size = 1, 1
        for x in items:
            if not _shareable(x):
                if id(x) in self.used:
                    raise pickle.UnpicklingError("shared references are refused: compared by hash")
                self.used.add(id(x))
            depth = max(depth, self.depth.get(id(x), 0) + 1)
            size += self.size.get(id(x), 1)
        if depth > MAX_DEPTH:
            raise pickle.UnpicklingError(f"nested deeper than {MAX_DEPTH}: compared by hash")
        self._grow(size - 1)
        try:
            obj = kind(items)
        except TypeError as e:  # an unhashable item in a frozenset
            raise pickle.UnpicklingError(str(e)) from None
        self.alive.append(obj)
        self.depth[id(obj)] = depth
        self.size[id(obj)] = size
        return obj

    def pop_mark(self) -> list[Any]:
        for k in range(len(self.stack) - 1, -1, -1):
            if self.stack[k] is _MARK:
                items = self.stack[k + 1 :]
                del self.stack[k:]
                return items
        raise pickle.UnpicklingError("MARK missing")

    def top(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise pickle.UnpicklingError("stack underflow")
        return self.stack[-1]

    def pop(self) -> Any:
        obj = self.top()
        self.stack.pop()
        return obj

    def get(self, i: int) -> Any:
        if i not in self.memo:
            raise pickle.UnpicklingError(f"memo {i} was never set")
        obj = self.memo[i]
        if not _shareable(obj) and id(obj) in self.used:
            # Named again once it is inside another container: a shared reference.
            raise pickle.UnpicklingError("shared references are refused: compared by hash")
        self.push(obj)
        return obj

    # -- the opcodes -----------------------------------------------------------------------

    def run(self, data: bytes) -> Any:
        pending_global: tuple[str, str] | None = None
        for op, op_arg, _pos in pickletools.genops(data):
            name = op.name
            arg: Any = op_arg
            # the opcodes plain data uses most come first
            if name == "MEMOIZE":
                self.memo[len(self.memo)] = self.top()
                continue
            if name in _TEXT:
                self.push(str(arg))
                continue
            if name in _INTS:
                self.push(arg)
                continue
            if name in _BYTES:
                self.push(bytes(arg))
                continue
            if name == "MARK":
                self.stack.append(_MARK)
                continue
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                value = self.pop()
                if self.stack:
                    raise pickle.UnpicklingError("data after the value")
                return value
            if name == "POP":
                self.pop()
            elif name == "POP_MARK":
                self.pop_mark()
            elif name in ("NONE",):
                self.push(None)
            elif name == "NEWTRUE":
                self.push(True)
            elif name == "NEWFALSE":
                self.push(False)
            elif name in ("FLOAT", "BINFLOAT"):
                self.push(float(arg))
            elif name == "BYTEARRAY8":
                self.push(bytearray(arg))
            elif name == "EMPTY_LIST":
                self.push([])
            elif name == "EMPTY_DICT":
                self.push({})
            elif name == "EMPTY_SET":
                self.push(set())
            elif name == "EMPTY_TUPLE":
                self.push(())
            elif name == "APPEND":
                item = self.pop()
                self._append(self.top(), [item])
            elif name == "APPENDS":
                items = self.pop_mark()
                self._append(self.top(), items)
            elif name == "LIST":
                items = self.pop_mark()
                lst: list[Any] = []
                self._append(lst, items)
                self.push(lst)
            elif name == "SETITEM":
                v = self.pop()
                k = self.pop()
                self._setitems(self.top(), [k, v])
            elif name == "SETITEMS":
                items = self.pop_mark()
                self._setitems(self.top(), items)
            elif name == "DICT":
                items = self.pop_mark()
                d: dict[Any, Any] = {}
                self._setitems(d, items)
                self.push(d)
            elif name == "ADDITEMS":
                items = self.pop_mark()
                target = self.top()
                if not isinstance(target, set):
                    raise pickle.UnpicklingError("ADDITEMS to a non-set")
                fs = self.build(frozenset, items)  # bounds and hashes the items
                self.depth[id(target)] = max(self.depth.get(id(target), 1), self.depth[id(fs)])
                self.size[id(target)] = self.size.get(id(target), 1) + self.size[id(fs)] - 1
                target.update(fs)
            elif name == "FROZENSET":
                self.push(self.build(frozenset, self.pop_mark()))
            elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
                if name == "TUPLE":
                    items = self.pop_mark()
                else:
                    n = int(name[-1])
                    items = [self.pop() for _ in range(n)][::-1]
                self.push(self.build(tuple, items))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                self.memo[int(arg)] = self.top()
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                self.get(int(arg))
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, attr = str(arg).partition(" ")
                else:
                    attr, module = self.pop(), self.pop()
                if module == "__builtin__":  # protocols 0-2 name builtins so
                    module = "builtins"
                if (module, attr) not in _PLAIN:
                    raise pickle.UnpicklingError(f"{module}.{attr} is not plain data")
                pending_global = (module, attr)
                self.stack.append(_CALLABLES[attr])
                self._count()
            elif name == "REDUCE":
                args = self.pop()
                fn = self.pop()
                if pending_global is None or fn not in _CALLABLES.values():
                    raise pickle.UnpicklingError("REDUCE of something not plain")
                if not isinstance(args, tuple):
                    raise pickle.UnpicklingError("REDUCE arguments are not a tuple")
                try:
                    obj = fn(*args)
                except (TypeError, ValueError) as e:
                    raise pickle.UnpicklingError(str(e)) from None
                if isinstance(obj, _CONTAINERS):
                    self.depth[id(obj)] = 1 + max(
                        (self.depth.get(id(a), 0) for a in args), default=0
                    )
                    self.size[id(obj)] = self.size.get(id(args), 1)
                self.push(obj)
            else:
                raise pickle.UnpicklingError(f"pickle opcode {name} is not plain data")
        raise pickle.UnpicklingError("no STOP")

    def _append(self, target: Any, items: list[Any]) -> None:
        if not isinstance(target, list):
            raise pickle.UnpicklingError("APPEND to a non-list")
        self._place_all(target, items)
        target.extend(items)

    def _setitems(self, target: Any, items: list[Any]) -> None:
        if not isinstance(target, dict) or len(items) % 2:
            raise pickle.UnpicklingError("SETITEMS to a non-dict")
        self._place_all(target, items)
        try:
            for k in range(0, len(items), 2):
                target[items[k]] = items[k + 1]
        except TypeError as e:  # an unhashable key
            raise pickle.UnpicklingError(str(e)) from None


def plain_loads(data: bytes) -> Any:
    """Decode a pickle that holds only plain data, within the bounds above; raise
    UnpicklingError for anything else (a class, a callable, a shared reference, too much)."""
    if len(data) > MAX_DECODE:
        raise pickle.UnpicklingError("too large to compare by value")
    try:
        return _Decoder().run(data)
    except pickle.UnpicklingError:
        raise
    except (ValueError, EOFError, IndexError, KeyError, TypeError, OverflowError) as e:
        raise pickle.UnpicklingError(f"not a plain-data pickle: {e}") from None


class _OverBudget(Exception):
    pass


def close(a: Any, b: Any, tol: Tolerance, _budget: list[int] | None = None) -> bool:
    """Structural equality in which numbers need only be within the tolerance.

    At most `MAX_STEPS` nodes are visited (and at most `MAX_DEPTH` levels): past either, the
    answer is False — "not shown to be close" — so that the results are compared by hash."""
    budget = [MAX_STEPS] if _budget is None else _budget
    try:
        return _close(a, b, tol, budget, 0)
    except (_OverBudget, RecursionError, OverflowError):
        return False


def _close(a: Any, b: Any, tol: Tolerance, budget: list[int], depth: int) -> bool:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise _OverBudget
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        nan_a = isinstance(a, float) and math.isnan(a)
        nan_b = isinstance(b, float) and math.isnan(b)
        if nan_a or nan_b:
            return nan_a and nan_b
        return math.isclose(a, b, rel_tol=tol.rel, abs_tol=tol.abs)
    if isinstance(a, complex) and isinstance(b, complex):
        return _close(a.real, b.real, tol, budget, depth + 1) and _close(
            a.imag, b.imag, tol, budget, depth + 1
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(_close(x, y, tol, budget, depth + 1) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol, budget, depth + 1) for k in a)
    budget[0] -= _size(a) + _size(b)  # `==` below walks them (a decoded value is a tree)
    if budget[0] < 0:
        raise _OverBudget
    return type(a) is type(b) and a == b


def _size(x: Any) -> int:
    return len(x) if isinstance(x, set | frozenset | bytes | bytearray | str) else 1


@dataclass(frozen=True, slots=True)
class Decoded:
    """A result decoded for comparison; `value` is None (with `plain` False) when it is not
    plain data or exceeds the bounds, and is then compared by hash."""

    plain: bool
    value: Any = None


NOT_PLAIN = Decoded(False)


def decode(raw: bytes | None) -> Decoded:
    """The bounded decoding of one result's value bytes (None: nothing to compare by value)."""
    if raw is None:
        return NOT_PLAIN
    try:
        return Decoded(True, plain_loads(raw))
    except (pickle.UnpicklingError, RecursionError, MemoryError):
        return NOT_PLAIN


def agreement_classes(
    results: Sequence[tuple[str, str, bytes | Decoded | None]],
    tol: Tolerance,
    rests: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """Map `(node, digest, value)` to `(node, class)`: a result that is close to an earlier
    one takes that one's digest as its class, so that equal classes mean agreement.

    `value` is the raw value bytes, or their `decode` (made ahead, outside any database
    transaction), or None (compared by hash). `rests` (one per result) digests everything
    else the customer receives — output files, error fields: two results share a class only
    when their rests are equal too, so a liar's outputs or error never ride on an honest
    value's closeness. All the comparisons of one call share one budget of `MAX_STEPS`
    visited nodes."""
    if rests is not None and len(rests) != len(results):
        raise ValueError(f"{len(rests)} rests for {len(results)} results")
    reps: list[tuple[str, Any, str]] = []  # (class digest, decoded value, rest digest)
    out = []
    budget = [MAX_STEPS]
    for i, (node, digest, raw) in enumerate(results):
        rest = rests[i] if rests is not None else ""
        cls = digest
        dec = raw if isinstance(raw, Decoded) else decode(raw) if raw is not None else None
        if dec is not None and dec.plain:
            for rep_digest, rep_value, rep_rest in reps:
                if rep_digest == digest or (
                    rep_rest == rest and close(dec.value, rep_value, tol, budget)
                ):
                    cls = rep_digest
                    break
            else:
                reps.append((digest, dec.value, rest))
        out.append((node, cls))
    return out
