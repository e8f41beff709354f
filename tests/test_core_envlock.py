"""The environment lock (core/envlock.py): one canonical form, bounded parsing, platform fit."""

from __future__ import annotations

import contextlib
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel.core import envlock as e

X86 = e.Platform("3.11", "x86_64", "glibc", (2, 36))
ARM = e.Platform("3.11", "aarch64", "glibc", (2, 36))
OLD_GLIBC = e.Platform("3.11", "x86_64", "glibc", (2, 12))
MUSL = e.Platform("3.11", "x86_64", "musl", (1, 2))

NUMPY_X86 = "numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
NUMPY_ARM = "numpy-2.1.3-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
NUMPY_ABI3 = "numpy-2.1.3-cp39-abi3-manylinux_2_28_x86_64.whl"
SIX = "six-1.16.0-py2.py3-none-any.whl"


def wheel(file: str, fill: str = "a") -> e.Wheel:
    return e.wheel_of(file, fill * 64, 1000)


def test_a_lock_parses_back_to_itself_and_its_name_is_the_hash_of_its_bytes() -> None:
    lock = e.make_lock("3.11", [wheel(SIX, "c"), wheel(NUMPY_X86)], ["numpy==2.1.*", "six"])
    again = e.parse(lock.canonical())
    assert again == lock
    assert lock.wheels[0].file == NUMPY_X86  # sorted by file name, whatever order they came in
    assert lock.sha == hashlib.sha256(lock.canonical()).hexdigest()
    assert lock.packages == ("numpy", "six")


@pytest.mark.parametrize(
    "mutate, says",
    [
        (lambda b: b | {"extra": 1}, "exactly"),
        (lambda b: b | {"python": "three"}, "version like"),
        (lambda b: b | {"format": 2}, "format 1"),
        (lambda b: b | {"wheels": [dict(b["wheels"][0], sha256="XYZ")]}, "64 lowercase hex"),
        (lambda b: b | {"wheels": [dict(b["wheels"][0], size=-1)]}, "whole number"),
        (lambda b: b | {"wheels": [dict(b["wheels"][0], size=True)]}, "whole number"),
        (lambda b: b | {"wheels": [dict(b["wheels"][0], file="../../etc/passwd.whl")]}, "not a"),
        (lambda b: b | {"wheels": [dict(b["wheels"][0], name="evil")]}, "not the file name's"),
        (lambda b: b | {"wheels": b["wheels"] * 2}, "twice"),
        (lambda b: b | {"wheels": b["wheels"] * (e.MAX_WHEELS + 1)}, "at most"),
    ],
)
def test_a_bad_lock_is_refused_with_a_sentence(mutate: object, says: str) -> None:
    body = json.loads(e.make_lock("3.11", [wheel(SIX)]).canonical())
    bad = mutate(body)  # type: ignore[operator]
    data = json.dumps(bad, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(e.LockError, match=says):
        e.parse(data)


def test_only_the_canonical_spelling_is_a_lock() -> None:
    lock = e.make_lock("3.11", [wheel(SIX)])
    spaced = json.dumps(json.loads(lock.canonical()), indent=1).encode()
    with pytest.raises(e.LockError, match="canonical"):
        e.parse(spaced)


def test_an_oversized_or_non_json_lock_is_refused_unread() -> None:
    with pytest.raises(e.LockError, match="at most"):
        e.parse(b" " * (e.MAX_LOCK_BYTES + 1))
    with pytest.raises(e.LockError, match="JSON"):
        e.parse(b"\xff\xfe not json")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parse_of_any_bytes_returns_a_lock_or_raises_lock_error(data: bytes) -> None:
    with contextlib.suppress(e.LockError):
        e.parse(data)


@pytest.mark.parametrize(
    "files, platform, picked",
    [
        ([NUMPY_X86, SIX], X86, {NUMPY_X86, SIX}),
        ([NUMPY_X86, NUMPY_ARM, SIX], ARM, {NUMPY_ARM, SIX}),
        ([NUMPY_X86, NUMPY_ABI3], X86, {NUMPY_X86}),  # its own ABI before abi3
        ([SIX], MUSL, {SIX}),  # pure Python installs anywhere
    ],
)
def test_choose_takes_the_most_preferred_wheel_of_each_package(
    files: list[str], platform: e.Platform, picked: set[str]
) -> None:
    lock = e.make_lock("3.11", [wheel(f, str(i)) for i, f in enumerate(files)])
    got = e.choose(lock, platform)
    assert isinstance(got, e.Fits)
    assert {w.file for w in got.wheels} == picked


@pytest.mark.parametrize(
    "files, platform, says",
    [
        ([NUMPY_X86], ARM, "no wheel of numpy for Python 3.11 on aarch64"),
        ([NUMPY_X86], OLD_GLIBC, "glibc 2.12"),  # manylinux_2_17 needs glibc 2.17
        ([NUMPY_X86], MUSL, "musl"),
    ],
)
def test_a_lock_without_a_wheel_for_the_platform_says_which_and_what_to_do(
    files: list[str], platform: e.Platform, says: str
) -> None:
    lock = e.make_lock("3.11", [wheel(f) for f in files])
    got = e.choose(lock, platform)
    assert isinstance(got, e.Unfit)
    assert says in got.reason
    assert "Env(platforms=" in got.reason


def test_another_python_or_an_unknown_platform_is_unfit() -> None:
    lock = e.make_lock("3.11", [wheel(SIX)])
    other = e.choose(lock, e.Platform("3.12", "x86_64", "glibc", (2, 36)))
    assert isinstance(other, e.Unfit) and "Env(python='3.12')" in other.reason
    assert "older than environments" in (e.fit_reason(lock, "") or "")
    assert e.fit_reason(lock, "garbage") is not None
    assert e.fit_reason(lock, X86.describe()) is None


def test_a_platform_round_trips_through_what_the_node_advertises() -> None:
    for p in (X86, ARM, OLD_GLIBC, MUSL):
        assert e.platform_of(p.describe()) == p
    assert e.platform_of("cp311-x86_64-glibc_2_36; rm -rf /") is None
    assert e.platform_of("x" * 1000) is None


def test_platform_tags_are_most_specific_first_with_the_legacy_aliases() -> None:
    tags = e.platform_tags(X86)
    assert tags[0] == "manylinux_2_36_x86_64"
    assert tags.index("manylinux2014_x86_64") == tags.index("manylinux_2_17_x86_64") + 1
    assert tags[-1] == "linux_x86_64"
    assert "manylinux_2_17_aarch64" not in tags
    assert e.platform_tags(ARM)[-2] == "manylinux2014_aarch64"  # aarch64 starts at 2.17
