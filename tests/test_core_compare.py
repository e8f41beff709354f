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
