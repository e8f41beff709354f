"""core/reach.py: a device's reachability, the paths a fetcher tries, the rendezvous' bounds."""

from __future__ import annotations

import pytest

from fogwheel.core import reach


def test_an_announced_address_that_answered_is_direct() -> None:
    p = reach.probed(True, False, "203.0.113.7", 0, "http://203.0.113.7:4000", 10.0)
    assert (p.reach, p.url, p.at) == ("direct", "http://203.0.113.7:4000", 10.0)


def test_a_connect_back_that_answered_is_direct_at_the_address_it_connects_from() -> None:
    p = reach.probed(False, True, "203.0.113.7", 4000, "http://192.168.1.2:4000", 10.0)
    assert (p.reach, p.url) == ("direct", "http://203.0.113.7:4000")
    assert "comes through its router" in p.reason


def test_no_inbound_connection_means_the_rendezvous() -> None:
    p = reach.probed(False, False, "203.0.113.7", 4000, "http://192.168.1.2:4000", 10.0)
    assert (p.reach, p.url) == ("rendezvous", "nat://203.0.113.7:4000")
    assert reach.reach_of(p.url) == "rendezvous"
    assert reach.reach_of("http://203.0.113.7:4000") == "direct"


def test_ipv6_peers_are_bracketed() -> None:
    p = reach.probed(False, False, "2001:db8::1", 4000, "http://[fd00::2]:4000", 1.0)
    assert p.url == "nat://[2001:db8::1]:4000"


@pytest.mark.parametrize(
    ("record", "can_punch", "paths"),
    [
        (None, True, ["punch", "relay"]),
        (reach.PunchRecord(1, 99.0), True, ["punch", "relay"]),
        (reach.PunchRecord(2, 99.0), True, ["relay"]),  # failed twice lately: relay at once
        (reach.PunchRecord(2, 99.0 - reach.PUNCH_RETRY_S), True, ["punch", "relay"]),  # stale
        (None, False, ["relay"]),  # a fetcher that cannot punch
    ],
)
def test_paths_for_a_device_behind_the_rendezvous(
    record: reach.PunchRecord | None, can_punch: bool, paths: list[str]
) -> None:
    assert reach.paths_for("rendezvous", record, 100.0, can_punch=can_punch) == paths


def test_a_direct_device_is_only_asked_directly() -> None:
    assert reach.paths_for("direct", reach.PunchRecord(5, 99.0), 100.0, can_punch=True) == [
        "direct"
    ]


def test_a_punch_that_works_starts_the_count_again() -> None:
    r = reach.after_punch(None, False, 1.0)
    r = reach.after_punch(r, False, 2.0)
    assert r == reach.PunchRecord(2, 2.0)
    assert reach.after_punch(r, True, 3.0) == reach.PunchRecord(0, 3.0)


def test_direct_holders_rank_before_the_rendezvous() -> None:
    assert reach.holder_rank("direct") < reach.holder_rank("rendezvous")


def _load(**kw: int) -> reach.Load:
    base = dict(node_calls=0, customer_calls=0, total_calls=0, node_relayed=0, customer_relayed=0)
    return reach.Load(**{**base, **kw})


@pytest.mark.parametrize(
    ("kind", "load", "size", "refused"),
    [
        ("relay", _load(), 1 << 20, None),
        ("punch", _load(total_calls=128), 0, "bound of calls"),
        ("punch", _load(customer_calls=16), 0, "16 punches or relays in flight"),
        ("relay", _load(node_calls=4), 0, "that device has as many"),
        ("relay", _load(node_relayed=64 << 20), 1, "relayed its share of bytes"),
        ("punch", _load(node_relayed=64 << 20), 0, None),  # a punch carries no relayed bytes
        ("relay", _load(customer_relayed=256 << 20), 1, "your relayed bytes"),
        ("relay", _load(relay_in_flight=64 << 20), 1, "holds as many bytes"),
    ],
)
def test_the_rendezvous_is_bounded(
    kind: reach.Path, load: reach.Load, size: int, refused: str | None
) -> None:
    why = reach.refusal(kind, load, reach.Bounds(), size)
    assert (why is None) if refused is None else (why is not None and refused in why)


def test_direct_share_counts_punched_shares_as_direct() -> None:
    assert reach.direct_share({"direct": 6, "punch": 2, "relay": 2}) == 0.8
    assert reach.direct_share({}) == 1.0
