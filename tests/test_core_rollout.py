"""core/rollout: the canary judge (a one-sided score test with a margin) and who is in it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel.core.rollout import (
    Arm,
    Devices,
    RolloutPolicy,
    RolloutState,
    canary_baseline,
    canary_floor,
    decide,
    excess_lower_bound,
    in_canary,
    next_state,
    next_switch,
    parse_share,
    policy_for_canary,
    serves_new,
    switch_overdue,
    with_devices,
)
from fogwheel.errors import IllegalTransition

POLICY = RolloutPolicy()
counts = st.integers(min_value=0, max_value=400)
arms = st.builds(Arm, ok=counts, failed=counts)
steps = st.integers(min_value=0, max_value=len(POLICY.steps) - 1)


@given(old=arms, ok=counts, step=steps)
def test_a_single_failure_never_rolls_back(old: Arm, ok: int, step: int) -> None:
    for failed in (0, 1):
        assert decide(POLICY, step, old, Arm(ok, failed)).action != "rollback"


@given(old=arms, new=arms, step=steps)
def test_a_rollback_means_the_observed_excess_is_over_the_margin(
    old: Arm, new: Arm, step: int
) -> None:
    d = decide(POLICY, step, old, new)
    if d.action == "rollback":
        assert new.failure_rate - old.failure_rate > POLICY.margin
        assert d.share == 0.0


@given(old=arms, new=arms, step=steps)
def test_promotion_needs_min_outcomes_and_moves_one_step(old: Arm, new: Arm, step: int) -> None:
    d = decide(POLICY, step, old, new)
    if d.action in ("promote", "done"):
        assert new.total >= POLICY.min_outcomes
        assert new.failure_rate - old.failure_rate <= POLICY.margin
    if d.action == "promote":
        assert d.step == step + 1 and d.share == POLICY.steps[step + 1]
    if d.action == "done":
        assert step == len(POLICY.steps) - 1 and d.share == 1.0
    if d.action == "hold":
        assert d.step == step and d.share == POLICY.steps[step]


@given(old=arms, ok=counts, failed=counts, step=steps)
def test_more_failures_never_turn_a_rollback_into_something_else(
    old: Arm, ok: int, failed: int, step: int
) -> None:
    """Moving one success of the new version to a failure keeps a roll-back a roll-back."""
    if ok == 0:
        return
    before = decide(POLICY, step, old, Arm(ok, failed))
    after = decide(POLICY, step, old, Arm(ok - 1, failed + 1))
    if before.action == "rollback":
        assert after.action == "rollback"


@given(old=arms, new=arms, step=steps)
def test_every_decision_reads_as_a_sentence_with_the_counts(old: Arm, new: Arm, step: int) -> None:
    d = decide(POLICY, step, old, new)
    assert f"{new.failed}/{new.total}" in d.reason and f"{old.failed}/{old.total}" in d.reason


def test_a_version_failing_every_task_is_rolled_back_quickly() -> None:
    d = decide(POLICY, 0, Arm(ok=90, failed=0), Arm(ok=0, failed=5))
    assert d.action == "rollback"
    assert "rolled back at 10%" in d.reason and "5/5" in d.reason


def test_nothing_is_rolled_back_against_an_old_version_never_seen() -> None:
    assert decide(POLICY, 0, Arm(0, 0), Arm(0, 50)).action == "hold"


def test_a_healthy_version_walks_every_step_to_done() -> None:
    old, new = Arm(200, 4), Arm(20, 0)
    assert [decide(POLICY, s, old, new).action for s in range(3)] == ["promote", "promote", "done"]
    assert decide(POLICY, 0, old, new).reason.startswith("promoted 10% → 50%")


def test_an_excess_over_the_margin_not_yet_shown_holds() -> None:
    d = decide(POLICY, 0, Arm(100, 0), Arm(18, 2))  # 10 % against 0 %, 20 outcomes
    assert d.action == "hold" and "not yet shown" in d.reason


@pytest.mark.parametrize(("p_old", "n"), [(0.02, 300), (0.10, 200), (0.0, 150)])
def test_false_rollbacks_at_the_margin_are_rare(p_old: float, n: int) -> None:
    """The type I error at the boundary (p_new = p_old + margin) stays near alpha (seeded)."""
    rng = random.Random(15)
    p_new = p_old + POLICY.margin
    trials, wrong = 2000, 0
    for _ in range(trials):
        old_failed = sum(rng.random() < p_old for _ in range(n))
        new_failed = sum(rng.random() < p_new for _ in range(n))
        old, new = Arm(n - old_failed, old_failed), Arm(n - new_failed, new_failed)
        wrong += decide(POLICY, 0, old, new).action == "rollback"
    assert wrong / trials <= 2 * POLICY.alpha


def test_a_clear_regression_is_caught_with_a_modest_sample() -> None:
    """p_new = p_old + 30 %: 40 outcomes see it at least 9 times in 10."""
    rng = random.Random(16)
    caught = 0
    for _ in range(500):
        old_failed = sum(rng.random() < 0.05 for _ in range(200))
        new_failed = sum(rng.random() < 0.35 for _ in range(40))
        d = decide(POLICY, 0, Arm(200 - old_failed, old_failed), Arm(40 - new_failed, new_failed))
        caught += d.action == "rollback"
    assert caught / 500 >= 0.9


def test_the_bound_is_below_the_observed_difference() -> None:
    assert excess_lower_bound(Arm(90, 10), Arm(60, 40), 0.01) < 0.4 - 0.1


@given(
    rollout=st.text(max_size=12),
    device=st.text(max_size=24),
    a=st.floats(0, 1),
    b=st.floats(0, 1),
)
def test_in_canary_is_monotone_in_the_share(rollout: str, device: str, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    if in_canary(rollout, device, lo):
        assert in_canary(rollout, device, hi)
    assert in_canary(rollout, device, 1.0) and not in_canary(rollout, device, 0.0)


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_in_canary_picks_about_the_share_of_devices(share: float) -> None:
    inside = sum(in_canary("r1", f"node-{i}", share) for i in range(4000))
    assert abs(inside / 4000 - share) < 0.03


def test_in_canary_differs_between_roll_outs() -> None:
    a = {i for i in range(1000) if in_canary("r1", f"n{i}", 0.1)}
    b = {i for i in range(1000) if in_canary("r2", f"n{i}", 0.1)}
    assert a != b


@pytest.mark.parametrize(
    ("text", "share"), [("10%", 0.1), ("10", 0.1), ("0.25", 0.25), (" 100% ", 1.0), ("1", 1.0)]
)
def test_parse_share(text: str, share: float) -> None:
    assert parse_share(text) == pytest.approx(share)


@pytest.mark.parametrize("text", ["0%", "-5%", "150%", "ten", "", "nan"])
def test_parse_share_refuses_what_is_not_a_share(text: str) -> None:
    with pytest.raises(ValueError, match="share"):
        parse_share(text)


@pytest.mark.parametrize(
    ("share", "steps"),
    [(0.1, (0.1, 0.5, 1.0)), (0.6, (0.6, 1.0)), (1.0, (1.0,)), (0.5, (0.5, 1.0))],
)
def test_policy_for_canary(share: float, steps: tuple[float, ...]) -> None:
    assert policy_for_canary(share).steps == steps


@pytest.mark.parametrize(
    "kw",
    [
        {"steps": ()},
        {"steps": (0.5, 0.2, 1.0)},
        {"steps": (0.1, 0.5)},
        {"steps": (0.0, 1.0)},
        {"margin": 1.0},
        {"alpha": 0.0},
        {"min_outcomes": 0},
    ],
)
def test_a_policy_that_cannot_work_is_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RolloutPolicy(**kw)  # type: ignore[arg-type]


def test_a_step_outside_the_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="step 3"):
        decide(POLICY, 3, Arm(1, 0), Arm(1, 0))


@settings(max_examples=200)
@given(moves=st.lists(st.sampled_from(["hold", "promote", "rollback", "done", "cancel"])))
def test_a_finished_roll_out_moves_no_more(moves: list[str]) -> None:
    state = RolloutState.ACTIVE
    for move in moves:
        if state is not RolloutState.ACTIVE:
            with pytest.raises(IllegalTransition):
                next_state(state, move)  # type: ignore[arg-type]
            return
        state = next_state(state, move)  # type: ignore[arg-type]


def test_who_serves_the_new_version_in_each_state() -> None:
    assert serves_new(RolloutState.ACTIVE, 0.5, 0.3) and not serves_new(
        RolloutState.ACTIVE, 0.1, 0.3
    )
    assert serves_new(RolloutState.DONE, 0.0, 0.99)
    assert not serves_new(RolloutState.ROLLED_BACK, 1.0, 0.0)


@given(
    devices=st.sets(st.text(min_size=1, max_size=8), max_size=30),
    a=st.floats(0, 1),
    b=st.floats(0, 1),
)
def test_the_canary_floor_covers_the_share_rounded_up_and_grows(
    devices: set[str], a: float, b: float
) -> None:
    lo, hi = sorted((a, b))
    small, large = canary_floor("r", devices, lo), canary_floor("r", devices, hi)
    assert small <= large <= devices
    assert len(large) >= hi * len(devices) - 1e-9


def test_a_ten_percent_canary_of_four_devices_is_one_device() -> None:
    assert len(canary_floor("r9", ["a", "b", "c", "d"], 0.1)) == 1


# -- canary devices that did not come up on a new agent ---------------------------------------

devices = st.builds(
    Devices,
    version=st.just("0.2.0"),
    up=st.integers(0, 20),
    back=st.integers(0, 20),
    late=st.integers(0, 20),
    starting=st.integers(0, 5),
    bound_s=st.sampled_from([9.0, 90.0]),
)


@given(old=arms, new=arms, dev=devices, step=steps)
def test_a_device_that_did_not_come_up_is_a_failed_outcome_of_the_new_version(
    old: Arm, new: Arm, dev: Devices, step: int
) -> None:
    d = decide(POLICY, step, old, new, dev)
    plain = decide(POLICY, step, old, with_devices(new, dev))
    assert (d.action, d.step, d.share) == (plain.action, plain.step, plain.share)
    assert with_devices(new, dev) == Arm(new.ok, new.failed + dev.back + dev.late)
    if dev.failed:
        assert dev.sentence() in d.reason
        assert f"{dev.failed} of {dev.up + dev.failed} canary device" in d.reason
    else:
        assert "canary device" not in d.reason


@given(old=arms, new=arms, dev=devices, step=steps)
def test_more_devices_that_did_not_come_up_never_undo_a_rollback(
    old: Arm, new: Arm, dev: Devices, step: int
) -> None:
    if decide(POLICY, step, old, new, dev).action == "rollback":
        worse = Devices(dev.version, dev.up, dev.back, dev.late + 1, dev.starting, dev.bound_s)
        assert decide(POLICY, step, old, new, worse).action == "rollback"


def test_an_agent_that_never_starts_is_rolled_back_without_a_single_task_outcome() -> None:
    dev = Devices("0.2.0", up=1, back=1, late=2, bound_s=90.0)
    d = decide(POLICY, 0, Arm(40, 0), Arm(0, 0), dev)
    assert d.action == "rollback" and d.share == 0.0
    assert d.reason.startswith(
        "rolled back at 10%: 3 of 4 canary devices did not come back on 0.2.0 within 90 s "
        "(1 back on the old version); new 3/3 failed (100%), old 0/40 (0%)"
    ), d.reason
    # one device is never enough, whatever the baseline (it may be the device's fault)
    assert decide(POLICY, 0, Arm(400, 0), Arm(0, 0), Devices("0.2.0", late=1)).action == "hold"


@given(
    accepted=st.integers(0, 10**6),
    seen=st.integers(0, 10**6),
    wait=st.integers(0, 10**4),
    bound=st.integers(1, 10**3),
)
def test_a_switch_is_overdue_only_after_the_bound_of_silence(
    accepted: int, seen: int, wait: int, bound: int
) -> None:
    last = max(accepted, seen)
    assert switch_overdue(accepted, seen, last + wait, bound) == (wait > bound)
    if switch_overdue(accepted, seen, last + wait, bound):  # later stays overdue
        assert switch_overdue(accepted, seen, last + wait + 1.0, bound)


@pytest.mark.parametrize("first", ["up", "back", "late"])
def test_a_switch_is_settled_once(first: str) -> None:
    assert next_switch(None, first) == first  # type: ignore[arg-type]
    for then in ("up", "back", "late"):
        with pytest.raises(IllegalTransition):
            next_switch(first, then)  # type: ignore[arg-type]


@given(
    rollout=st.text(min_size=1, max_size=12),
    n=st.integers(min_value=2, max_value=12),
    share=st.floats(min_value=0.01, max_value=0.99),
)
def test_a_step_under_every_device_keeps_one_on_the_old_version(
    rollout: str, n: int, share: float
) -> None:
    devices = [f"n-{i}" for i in range(n)]
    kept = canary_baseline(rollout, devices, share)
    new = (canary_floor(rollout, devices, share) | {
        d for d in devices if in_canary(rollout, d, share)
    }) - kept  # fmt: skip
    assert len(kept) == 1 and len(new) < n  # a baseline for the judge, and old for retries
    assert kept == canary_baseline(rollout, devices, 0.01)  # the same device at every step
    assert canary_baseline(rollout, devices, 1.0) == frozenset()


def test_four_of_four_under_a_quarter_by_the_hash_still_leave_a_baseline() -> None:
    """Seen in tests/test_rollouts.py: every point of roll-out ro_3aa1431f323b's four devices
    fell below 25 %; the judge held with no old outcome while each failure was queued again."""
    rid, devices = "ro_3aa1431f323b", ["n-674e7742", "n-d38eef9d", "n-0273a3e1", "n-81faa26f"]
    assert all(in_canary(rid, d, 0.25) for d in devices)
    assert canary_baseline(rid, devices, 0.25) == {"n-81faa26f"}
