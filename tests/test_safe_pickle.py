"""The restricted decoder (fogwheel.safe_pickle): plain data and numpy decode; code never runs."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import io
import os
import pickle

import cloudpickle
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel import safe_pickle
from fogwheel.errors import RefusedValue, RemoteError
from fogwheel.node.worker import exception_report, uniform
from fogwheel.results import rebuild_exception
from fogwheel.safe_pickle import Decoder, Limits, loads


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


class BadInput(Exception):
    """A customer's own exception type."""


class _Call:
    """Pickles as a call of `fn(*args)`: what a hostile node would send."""

    def __init__(self, fn: object, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[object, ...]:
        return (self.fn, self.args)


class _Forged:
    """Pickles as `fn(*args)` followed by BUILD with `state`."""

    def __init__(self, fn: object, args: tuple[object, ...], state: object) -> None:
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self) -> tuple[object, ...]:
        return (self.fn, self.args, self.state)


def craft(*pieces: object) -> bytes:
    """A protocol-2 pickle of `pieces`: objects are saved as the pickler would, bytes are raw
    opcodes (memo slots 200+ are ours), then STOP."""
    buf = io.BytesIO()
    p = pickle._Pickler(buf, protocol=2)  # type: ignore[attr-defined]
    buf.write(b"\x80\x02")
    for piece in pieces:
        if isinstance(piece, bytes) and piece.startswith(b"!"):
            buf.write(piece[1:])
        else:
            p.save(piece)
    buf.write(b".")
    return buf.getvalue()


PLAIN = [
    None,
    True,
    2**100,
    -1.5,
    1 + 2j,
    "text ✓",
    b"\x00bytes",
    bytearray(b"ba"),
    [1, [2, [3]]],
    (1, (2,)),
    {"a": {"b": 1}},
    {1, 2},
    frozenset({"x"}),
    slice(1, 9, 2),
    range(2, 10, 3),
    decimal.Decimal("1.10"),
    fractions.Fraction(1, 3),
    datetime.datetime(2024, 5, 6, 7, 8, 9, 10),
    datetime.datetime(2024, 5, 6, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    datetime.date(2024, 1, 2),
    datetime.time(3, 4, 5),
    datetime.timedelta(days=3, seconds=4),
    collections.OrderedDict(a=1, b=2),
    collections.Counter("abracadabra"),
    collections.defaultdict(list, {1: [2]}),
    collections.deque([1, 2, 3], maxlen=5),
]

ARRAYS = [
    np.arange(10.0),
    np.arange(12, dtype=np.int32).reshape(3, 4).T,
    np.arange(10)[::3],
    np.zeros(3, dtype=[("a", "f8"), ("b", "i4")]),
    np.zeros(2, dtype=np.dtype([("a", "f8"), ("b", "i1")], align=True)),
    np.zeros((2, 2), dtype=("f4", (3,))),
    np.array(["ab", "c"]),
    np.array([b"ab", b"c"]),
    np.array([1, 2], dtype="M8[s]"),
    np.array([True, False]),
    np.array([1 + 1j]),
]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("value", PLAIN, ids=lambda v: type(v).__name__)
def test_plain_values_round_trip_in_every_protocol(value: object, protocol: int) -> None:
    for dump in (pickle.dumps, cloudpickle.dumps):
        out = loads(dump(value, protocol=protocol))
        assert out == value and type(out) is type(value)
    if isinstance(value, collections.defaultdict):
        assert loads(pickle.dumps(value)).default_factory is list


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: str(a.dtype))
def test_numpy_arrays_round_trip_with_their_dtype_and_shape(
    array: np.ndarray, protocol: int
) -> None:
    out = loads(pickle.dumps(array, protocol=protocol))
    assert isinstance(out, np.ndarray) and out.dtype == array.dtype and out.shape == array.shape
    assert np.array_equal(out, array)


@pytest.mark.parametrize(
    "scalar", [np.float64(2.5), np.int8(-3), np.bool_(True), np.datetime64("2020-01-01")]
)
def test_numpy_scalars_and_dtypes_round_trip(scalar: object) -> None:
    assert loads(pickle.dumps(scalar)) == scalar
    assert loads(pickle.dumps(np.dtype([("a", "<f8"), ("b", "<i4")]))) == np.dtype(
        [("a", "<f8"), ("b", "<i4")]
    )


plain_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.complex_numbers(allow_nan=False)
)
hashable = st.recursive(
    plain_leaves,
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
plain_data = st.recursive(
    plain_leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(hashable, inner, max_size=4)
        | st.sets(hashable, max_size=4)
        | st.frozensets(hashable, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(plain_data, st.sampled_from([2, 3, 4, 5]))
def test_any_plain_data_round_trips(value: object, protocol: int) -> None:
    assert loads(pickle.dumps(value, protocol=protocol)) == value
    assert loads(safe_pickle.dumps(value)) == value


@pytest.mark.parametrize(
    "fn, args",
    [
        (os.system, ("true",)),
        (eval, ("1+1",)),
        (exec, ("x = 1",)),
        (getattr, ("x", "upper")),
        (__import__, ("os",)),
        (open, ("/etc/passwd",)),
        (pickle.loads, (b"N.",)),
        (cloudpickle.loads, (b"N.",)),
    ],
    ids=lambda x: getattr(x, "__name__", "args"),
)
def test_a_global_outside_the_allow_list_is_refused_and_never_called(fn, args) -> None:
    with pytest.raises(RefusedValue) as info:
        loads(pickle.dumps(_Call(fn, *args)))
    assert "trusted_types" in str(info.value) and info.value.name


def test_the_shell_payload_never_runs(tmp_path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(RefusedValue, match=r"(os|posix):system"):
        loads(pickle.dumps(_Call(os.system, f"touch {marker}")))
    assert not marker.exists()


def test_a_customers_class_is_refused_until_trusted_and_the_message_says_how() -> None:
    data = pickle.dumps(Point(1, 2))
    with pytest.raises(RefusedValue) as info:
        loads(data)
    assert f"trusted_types=['{__name__}:Point']" in str(info.value)
    assert loads(data, trusted=[Point]) == Point(1, 2)
    assert loads(data, trusted=[f"{__name__}:Point"]) == Point(1, 2)


def test_a_class_made_from_a_script_by_value_is_named_by_reference() -> None:
    """On a node a customer's class comes from cloudpickle by value, so it is not the class
    its module would import: dumps names it by module and qualname all the same."""
    copy = type("Point", (), {"__module__": __name__, "__qualname__": "Point"})
    value = copy()
    value.x, value.y = 3, 4
    assert loads(safe_pickle.dumps(value), trusted=[Point]) == Point(3, 4)


def test_code_sent_by_value_is_refused_with_advice_to_return_data() -> None:
    with pytest.raises(RefusedValue, match="holds code") as info:
        loads(cloudpickle.dumps(lambda: 1))
    assert "trusted_types" not in str(info.value)


def test_containers_cannot_expand_a_range_or_allocate_from_a_size() -> None:
    for payload in (_Call(list, range(10**12)), _Call(bytearray, 10**12), _Call(bytes, 10**12)):
        with pytest.raises(RefusedValue):
            loads(pickle.dumps(payload))


def test_work_is_bounded_by_size_objects_and_depth() -> None:
    with pytest.raises(RefusedValue, match="over the decoder's limit"):
        loads(pickle.dumps(b"x" * 2000), limits=Limits(max_bytes=1000))
    with pytest.raises(RefusedValue, match="objects"):
        loads(pickle.dumps(list(range(5000))), limits=Limits(max_objects=1000))
    with pytest.raises(RefusedValue, match="nests deeper"):
        loads(b"\x80\x05" + b"(" * 2000 + b"t" * 2000 + b".")
    with pytest.raises(RefusedValue):
        loads(b"\x80\x05\x95garbage")


def test_object_arrays_and_object_dtypes_are_refused() -> None:
    for value in (np.array([1, None], dtype=object), np.dtype("O"), np.dtype([("a", "O")])):
        for protocol in (2, 5):
            with pytest.raises(RefusedValue, match="dtype"):
                loads(pickle.dumps(value, protocol=protocol))


def test_a_dtype_with_forged_flags_or_fields_outside_its_record_is_refused() -> None:
    forged = [
        (3, "|", None, None, None, 8, 1, 63),  # claims to hold Python objects
        (3, "|", None, ("a",), {"a": (np.dtype("f8"), 100)}, 8, 1, 16),  # field past the end
    ]
    for state in forged:
        with pytest.raises(RefusedValue):
            loads(pickle.dumps(_Forged(np.dtype, ("V8", False, True), state)))


def test_numpys_shared_dtypes_are_never_modified() -> None:
    state = (3, "<", None, None, None, -1, -1, 63)
    with pytest.raises(RefusedValue):
        loads(pickle.dumps(_Forged(np.dtype, ("f8", False, False), state)))
    assert np.dtype("f8").flags == 0 and not np.dtype("f8").hasobject


def test_a_dtype_used_before_it_is_built_or_built_twice_is_refused() -> None:
    from numpy._core.numeric import _frombuffer

    state = (3, "|", None, None, None, 8, 1, 0)
    dtype_call = (np.dtype, ("V8", False, True), b"!R", b"!q\xc8")  # REDUCE, BINPUT 200
    used_early = craft(
        *dtype_call, _frombuffer, b"!(", b"x" * 8, b"!h\xc8", (1,), "C", b"!tR", b"!0"
    )
    with pytest.raises(RefusedValue, match="before it is built"):
        loads(used_early)
    built_twice = craft(*dtype_call, state, b"!b0", b"!h\xc8", state, b"!b")
    with pytest.raises(RefusedValue, match="state"):
        loads(built_twice)


def test_array_bytes_must_fit_the_shape_and_subclasses_are_refused() -> None:
    from numpy._core.multiarray import _reconstruct

    arr = np.arange(4.0)
    short = (1, (100,), arr.dtype, False, arr.tobytes())
    with pytest.raises(RefusedValue, match="fit"):
        loads(pickle.dumps(_Forged(_reconstruct, (np.ndarray, (0,), b"b"), short)))
    with pytest.raises(RefusedValue):
        loads(pickle.dumps(np.matrix([[1, 2]])))
    with pytest.raises(RefusedValue):
        loads(pickle.dumps(np.ma.masked_array([1, 2])))


def test_a_shared_reference_bomb_decodes_cheaply() -> None:
    x: list[object] = [1.0]
    for _ in range(40):
        x = [x, x]
    out = loads(pickle.dumps(x))
    assert out[0] is out[1]


# -- exceptions: reported as fields, rebuilt from an allow-list --------------------------------


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as e:
        return e


def _roundtrip(exc: BaseException, decoder: Decoder | None = None) -> BaseException:
    err = exception_report(_raised(exc))["error"]
    assert "exc" not in err
    return rebuild_exception(decoder or Decoder(), err)


def test_builtin_exceptions_are_rebuilt_with_their_type_and_args() -> None:
    back = _roundtrip(ValueError("bad", 3))
    assert type(back) is ValueError and back.args == ("bad", 3)
    back = _roundtrip(KeyError("k"))
    assert type(back) is KeyError and str(back) == "'k'"
    back = _roundtrip(FileNotFoundError(2, "No such file or directory", "missing"))
    assert type(back) is FileNotFoundError and "missing" in str(back)


def test_a_customers_exception_is_rebuilt_only_when_trusted() -> None:
    back = _roundtrip(BadInput("nope"))
    assert isinstance(back, RemoteError) and back.type_name == f"{__name__}:BadInput"
    assert "trusted_types" in str(back) and "nope" in str(back)
    back = _roundtrip(BadInput("nope"), Decoder([BadInput]))
    assert type(back) is BadInput and back.args == ("nope",)


def test_a_node_cannot_name_a_dangerous_or_base_only_type() -> None:
    for name in ("os:system", "builtins:eval", "eval", "SystemExit", "KeyboardInterrupt"):
        back = rebuild_exception(Decoder(), {"type": name, "message": "x", "args": ["x"]})
        assert isinstance(back, RemoteError) and back.type_name == name


def test_args_that_are_not_plain_data_fall_back_to_the_message() -> None:
    err = exception_report(_raised(ValueError(Point(1, 2))))["error"]
    assert "args" not in err
    assert type(rebuild_exception(Decoder(), err)) is ValueError


def test_scratch_paths_and_addresses_read_the_same_on_every_node() -> None:
    a = uniform(
        "open /srv/n1/scratch/slot-0/task-3/x at 0x7f3a12bc4d10", "/srv/n1/scratch/slot-0/task-3"
    )
    b = uniform("open /srv/n2/data/slot-1/task-9/x at 0x7f00aa11bb22", "/srv/n2/data/slot-1/task-9")
    assert a == b == "open <scratch>/x at 0x..."
