"""core/compare.py: fuzzy agreement of numeric results, and a decoder that builds only data."""

from __future__ import annotations

import hashlib
import os
import pickle

import cloudpickle
import pytest

from fogwheel.core.compare import Tolerance, agreement_classes, close, plain_loads

TOL = Tolerance(rel=1e-6)


@pytest.mark.parametrize(
    ("a", "b", "agree"),
    [
        (1.0, 1.0 + 1e-9, True),
        (1.0, 1.001, False),
        ([1.0, 2.0], [1.0, 2.0 + 1e-8], True),
        ((1.0, "x"), [1.0, "x"], False),  # a tuple is not a list
        ({"loss": 0.25}, {"loss": 0.25 + 1e-9}, True),
        ({"loss": 0.25}, {"lost": 0.25}, False),
        (float("nan"), float("nan"), True),
        (True, 1, False),
        ("abc", "abc", True),
        (3, 3.0000000001, True),
        (1 + 2j, 1 + 2.0000000001j, True),
    ],
)
def test_numbers_agree_within_the_tolerance_and_everything_else_exactly(a, b, agree) -> None:
    assert close(a, b, TOL) is agree


def test_plain_data_decodes_from_what_the_sdk_sends() -> None:
    value = {"xs": [1.5, 2.5], "name": "run", "tags": {"a"}, "z": 1j}
    assert plain_loads(cloudpickle.dumps(value)) == value


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", [Boom(), Tolerance()])
def test_a_result_that_names_any_callable_or_class_is_refused(payload) -> None:
    with pytest.raises(pickle.UnpicklingError):
        plain_loads(pickle.dumps(payload))


def test_close_results_share_a_class_and_far_ones_do_not() -> None:
    def item(node: str, v: object) -> tuple[str, str, bytes]:
        raw = pickle.dumps(v)
        return node, hashlib.sha256(raw).hexdigest(), raw

    a, b, c = item("a", [0.1 + 0.2]), item("b", [0.3]), item("c", [0.31])
    classes = dict(agreement_classes([a, b, c], TOL))
    assert classes["a"] == classes["b"] == a[1]
    assert classes["c"] == c[1]


def test_results_that_are_not_plain_data_are_compared_by_hash() -> None:
    raw = pickle.dumps(Tolerance())
    d = hashlib.sha256(raw).hexdigest()
    assert agreement_classes([("a", d, raw), ("b", d, raw)], TOL) == [("a", d), ("b", d)]


# -- bounded work on untrusted bytes ---------------------------------------------------------


def _bomb(depth: int, leaf: float = 1.0) -> bytes:
    x: list = [leaf]
    for _ in range(depth):
        x = [x, x]
    return pickle.dumps(x)


def _tuple_bomb(depth: int) -> bytes:
    x: tuple = (1.0,)
    for _ in range(depth):
        x = (x, x)
    return pickle.dumps(x)


@pytest.mark.parametrize("payload", [_bomb(40), _tuple_bomb(40), _bomb(3)])
def test_a_shared_reference_is_refused_however_small(payload) -> None:
    with pytest.raises(pickle.UnpicklingError, match="shared"):
        plain_loads(payload)


def test_a_shared_tuple_is_allowed_while_the_value_expanded_stays_in_bounds() -> None:
    from fogwheel.core import compare

    pair = (1, "x")
    rows = [pair] * 1000  # one tuple, named a thousand times: 3,001 objects as a tree
    assert plain_loads(pickle.dumps(rows)) == rows
    wide = tuple(range(1000))
    with pytest.raises(pickle.UnpicklingError, match="expand"):
        plain_loads(pickle.dumps([wide] * (compare.MAX_NODES // 1000 + 10)))


def test_an_empty_list_named_twice_and_filled_later_is_refused() -> None:
    # [a, a] where a is empty when it is placed (twice) and gets filled afterwards
    ops = (
        b"\x80\x04]\x94(]\x94h\x01h\x01e"  # outer = [a, a], a = memo 1
        b"h\x01G?\xf0\x00\x00\x00\x00\x00\x00a0."  # a.append(1.0); POP; STOP
    )
    with pytest.raises(pickle.UnpicklingError, match="shared"):
        plain_loads(ops)


def test_nesting_deeper_than_the_bound_is_refused_before_anything_hashes_it() -> None:
    deep: tuple = ()
    for _ in range(150):
        deep = (deep, 1)
    with pytest.raises(pickle.UnpicklingError, match="deeper"):
        plain_loads(pickle.dumps(frozenset([deep])))


def test_more_objects_than_the_bound_are_refused(monkeypatch) -> None:
    from fogwheel.core import compare

    monkeypatch.setattr(compare, "MAX_NODES", 1000)
    with pytest.raises(pickle.UnpicklingError, match="objects"):
        plain_loads(pickle.dumps(list(range(1010))))
    assert plain_loads(pickle.dumps(list(range(900)))) == list(range(900))


def test_a_bytearray_is_built_only_from_bytes_never_from_a_size() -> None:
    # (builtins.bytearray, (10**12,)) would allocate a terabyte
    payload = b"\x80\x02cbuiltins\nbytearray\nq\x00\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85R."
    with pytest.raises(pickle.UnpicklingError):
        plain_loads(payload)
    for protocol in (3, 5):  # by REDUCE of bytes, and by BYTEARRAY8
        assert plain_loads(pickle.dumps(bytearray(b"ok"), protocol=protocol)) == bytearray(b"ok")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_decodes_in_every_protocol(protocol) -> None:
    value = [1, -2, 2**80, 1.5, "é", None, True, (1, (2,)), {"k": [0.5]}, frozenset({3}), 1j]
    if protocol >= 3:
        value.append(b"raw")
    assert plain_loads(pickle.dumps(value, protocol=protocol)) == value


def test_repeated_strings_and_empty_tuples_are_not_shared_references() -> None:
    rows = [{"loss": 0.1, "tag": ()}, {"loss": 0.2, "tag": ()}]
    assert plain_loads(cloudpickle.dumps(rows)) == rows


def test_comparing_two_bombs_is_bounded_and_they_are_compared_by_hash() -> None:
    import time

    a, b = _bomb(40), _bomb(40, leaf=1.0 + 1e-12)
    da, db = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()
    t0 = time.monotonic()
    classes = agreement_classes([("a", da, a), ("b", db, b)], TOL)
    assert time.monotonic() - t0 < 5  # naively: 2**40 leaves
    assert classes == [("a", da), ("b", db)]  # by hash: they do not agree


def test_a_comparison_past_its_budget_is_not_close() -> None:
    from fogwheel.core import compare

    big = [0.5] * (compare.MAX_STEPS + 10)
    assert close(big, list(big), TOL) is False
    assert close([0.5] * 1000, [0.5] * 1000, TOL) is True


def test_huge_integers_and_deep_values_never_raise_from_close() -> None:
    assert close(10**400, 1.0, TOL) is False
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert close(deep, deep, TOL) is False


def test_close_values_with_different_files_or_errors_are_not_one_class() -> None:
    """A liar's outputs never ride on an honest value's closeness: rests must be equal too."""
    tol = Tolerance(rel=1e-6)
    honest, liar = pickle.dumps(1.0), pickle.dumps(1.0 + 1e-9)
    same = agreement_classes([("a", "d1", honest), ("b", "d2", liar)], tol, ["r", "r"])
    assert same[0][1] == same[1][1]
    apart = agreement_classes([("a", "d1", honest), ("b", "d2", liar)], tol, ["r", "evil"])
    assert apart[0][1] != apart[1][1]
