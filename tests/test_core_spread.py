"""core/spread.py: a CDN segment is judged by the devices its shares sit on, not by its share
count; the publisher's warning for a fog smaller than n says what one device failure does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fogwheel.core.spread import spread, too_few_devices, worst


def test_eight_shares_on_eight_devices_are_full() -> None:
    s = spread({f"s{i}": {f"d{i}"} for i in range(8)}, k=4, n=8)
    assert (s.state, s.shares, s.devices, s.after_one_loss) == ("full", 8, 8, 7)


def test_eight_shares_on_three_devices_are_degraded_not_full() -> None:
    holders = {f"s{i}": {f"d{i % 3}"} for i in range(8)}  # 3, 3, 2
    s = spread(holders, k=4, n=8)
    assert (s.state, s.shares, s.devices, s.after_one_loss) == ("degraded", 8, 3, 5)


def test_every_share_on_one_device_is_one_failure_from_loss() -> None:
    s = spread({f"s{i}": {"d0"} for i in range(8)}, k=4, n=8)
    assert (s.state, s.devices, s.after_one_loss) == ("at_risk", 1, 0)


def test_fewer_than_k_shares_on_live_devices_is_below_k() -> None:
    holders = {"s0": {"d0"}, "s1": {"d1"}, "s2": set(), "s3": set()}
    assert spread(holders, k=3, n=4).state == "below_k"
    assert spread({}, k=1, n=2).state == "below_k"


def test_a_second_holder_keeps_a_share_through_one_loss() -> None:
    # two devices, each share on both: losing either leaves every share
    s = spread({f"s{i}": {"d0", "d1"} for i in range(4)}, k=2, n=4)
    assert s.after_one_loss == 4 and s.state == "degraded"  # 2 devices for n=4


def test_worst_orders_the_states() -> None:
    assert worst(["full", "degraded"]) == "degraded"
    assert worst(["full", "below_k", "at_risk"]) == "below_k"
    assert worst([]) == "full"


def test_the_warning_for_a_small_fog_names_the_numbers_and_the_fix() -> None:
    w = too_few_devices(3, k=4, n=8)
    assert w is not None
    assert w.startswith("3 live devices for n=8: a segment's shares will sit on 3 devices")
    assert "up to 3 on one" in w and "losing 1 device still leaves 5 shares" in w
    assert w.endswith("add devices or use --n 3 --k 2")
    w = too_few_devices(2, k=5, n=8)
    assert w is not None and "losing 1 device can leave 4 shares, fewer than k=5" in w
    assert w.endswith("--n 2 --k 1")
    assert "no live device" in (too_few_devices(0, 4, 8) or "")
    assert too_few_devices(8, 4, 8) is None and too_few_devices(20, 4, 8) is None


@given(
    st.integers(1, 12),
    st.data(),
)
def test_spread_figures_hold_together(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, n))
    holders = {
        f"s{i}": data.draw(st.sets(st.sampled_from([f"d{j}" for j in range(6)]), max_size=3))
        for i in range(n)
    }
    s = spread(holders, k, n)
    assert 0 <= s.after_one_loss <= s.shares <= n
    assert s.devices <= 6
    if s.state == "full":
        assert s.shares == n and s.devices >= n and s.after_one_loss >= k
    if s.devices < n:
        assert s.state != "full"  # never full on fewer distinct devices than n
    if s.state in ("full", "degraded"):
        assert s.after_one_loss >= k
