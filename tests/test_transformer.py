"""The DiLoCo pieces: the byte Transformer, its pickle-free weights, the corpus, one round."""

from __future__ import annotations

import json
import os
import struct

import pytest

if os.environ.get("FOGWHEEL_REQUIRE_TORCH") != "1":
    pytest.importorskip("torch", reason="training needs the [ml] extra (PyTorch)")

import torch

from fogwheel.workloads.corpus import eval_windows, load_corpus, sample_batch, split_corpus
from fogwheel.workloads.diloco_math import (
    BadPseudoGradient,
    OuterOptimizer,
    check_norm,
    compress,
    decompress,
    evaluate,
    inner_steps,
)
from fogwheel.workloads.transformer import (
    MAGIC,
    ModelConfig,
    build,
    from_state,
    generate,
    state_from_bytes,
    state_to_bytes,
)

TINY = ModelConfig.tiny()


@pytest.fixture(scope="module")
def corpus() -> bytes:
    return load_corpus()


@pytest.fixture(scope="module")
def split(corpus: bytes) -> tuple[list[bytes], bytes]:
    return split_corpus(corpus, shards=2)


def _state(seed: int = 0, config: ModelConfig = TINY) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in build(config, seed).state_dict().items()}


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in state.items()}


def _random_delta(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) * 1e-2 for k, v in _state().items()}


# The model


@pytest.mark.parametrize("rope", [True, False])
def test_forward_gives_logits_per_position_and_future_tokens_do_not_leak(rope: bool) -> None:
    model = build(ModelConfig(**{**TINY.to_dict(), "rope": rope}), seed=0)
    idx = torch.randint(0, 256, (2, TINY.context), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 256

    logits, logits_changed = model(idx), model(changed)

    assert logits.shape == (2, TINY.context, 256)
    assert torch.equal(logits[:, :20], logits_changed[:, :20])
    assert not torch.allclose(logits[:, 20:], logits_changed[:, 20:])


def test_sequence_longer_than_context_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds context"):
        build(TINY)(torch.zeros(1, TINY.context + 1, dtype=torch.long))


def test_default_config_has_under_a_million_parameters() -> None:
    assert 500_000 <= build(ModelConfig()).param_count() <= 1_500_000


def test_build_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    before = torch.get_rng_state()
    assert all(
        torch.equal(a, b) for a, b in zip(_state(3).values(), _state(3).values(), strict=True)
    )
    assert torch.equal(before, torch.get_rng_state())
    assert not torch.equal(_state(3)["embed.weight"], _state(4)["embed.weight"])


def test_config_round_trips_through_plain_data_and_rejects_unknown_keys() -> None:
    assert ModelConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"layers": 3})
    with pytest.raises(ValueError, match="must be int"):
        ModelConfig.from_dict({"d_model": "32"})


def test_generate_is_deterministic_for_a_seed_and_crops_to_the_context() -> None:
    model = build(TINY, seed=0)
    prompt = b"x" * (TINY.context + 10)

    first = generate(model, prompt, 40, seed=7)

    assert first == generate(model, prompt, 40, seed=7)
    assert first != generate(model, prompt, 40, seed=8)
    assert first.startswith(prompt) and len(first) == len(prompt) + 40
    assert len(generate(model, b"", 5)) == 5


# Weights as bytes


def test_state_bytes_round_trip_exactly_and_are_deterministic() -> None:
    state = _state()
    state["extra.half"] = torch.randn(3, 4).half()
    state["extra.int8"] = torch.arange(-5, 7, dtype=torch.int8).reshape(2, 6)
    reordered = dict(reversed(state.items()))

    data = state_to_bytes(state)
    back = state_from_bytes(data)

    assert data.startswith(MAGIC)
    assert data == state_to_bytes(reordered)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor)


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="dtype"):
        state_to_bytes({"w": torch.zeros(2, dtype=torch.float64)})


def _with_header(header: object, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + body


_GOOD = {"tensors": [{"name": "w", "dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8}]}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "FWT1"),
        (b"PK\x03\x04" + b"\0" * 20, "FWT1"),
        (MAGIC + struct.pack("<I", 10_000) + b"{}", "header length"),
        (MAGIC + struct.pack("<I", 4) + b"{not", "JSON"),
        (_with_header([1, 2]), "exactly the keys"),
        (_with_header({**_GOOD, "meta": {}}, b"\0" * 4), "runs past"),
        (_with_header({**_GOOD, "meta": {}}, b"\0" * 12), "follow the last tensor"),
        (_with_header({"tensors": [{**_GOOD["tensors"][0], "offset": 4}], "meta": {}}), "offset"),
        (_with_header({"tensors": [{**_GOOD["tensors"][0], "nbytes": 4}], "meta": {}}), "nbytes"),
        (_with_header({"tensors": [{**_GOOD["tensors"][0], "shape": [-2]}], "meta": {}}), "shape"),
        (_with_header({"tensors": [{**_GOOD["tensors"][0], "dtype": "O"}], "meta": {}}), "dtype"),
        (_with_header({"tensors": _GOOD["tensors"] * 2, "meta": {}}, b"\0" * 16), "offset"),
    ],
)
def test_malformed_state_bytes_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        state_from_bytes(data)


def test_every_truncation_of_real_state_bytes_is_rejected() -> None:
    data = state_to_bytes({"a": torch.ones(3), "b": torch.zeros(2, 2, dtype=torch.int8)})
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            state_from_bytes(data[:cut])


def test_from_state_refuses_weights_of_another_shape() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        from_state(TINY, _state(config=ModelConfig(**{**TINY.to_dict(), "d_ff": 48})))


# The corpus


def test_corpus_is_the_python_docs_and_splits_into_disjoint_covering_parts(corpus: bytes) -> None:
    shards, val = split_corpus(corpus, shards=3, val_fraction=0.05)

    assert len(corpus) > 300_000 and b'The "while" statement' in corpus
    assert b"".join(shards) + val == corpus
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert corpus[len(corpus) - len(val) - 1 : -len(val)] == b"\n"
    assert 0.04 < len(val) / len(corpus) < 0.06


def test_batches_are_shifted_windows_and_repeat_for_a_seed(split) -> None:
    shard = split[0][0]

    x, y = sample_batch(shard, 4, 16, torch.Generator().manual_seed(1))
    x2, _ = sample_batch(shard, 4, 16, torch.Generator().manual_seed(1))
    ex, ey = eval_windows(split[1], 16, 8)

    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x, x2)
    assert ex.shape == (8, 16) and torch.equal(ex, eval_windows(split[1], 16, 8)[0])
    assert torch.equal(ey[:, :-1], ex[:, 1:])


# One DiLoCo round


def test_inner_steps_are_bitwise_deterministic_and_lower_the_training_loss(split) -> None:
    shard, state = split[0][0], _state()

    first = inner_steps(TINY, state, shard, 30, lr=3e-3, seed=1)
    second = inner_steps(TINY, state, shard, 30, lr=3e-3, seed=1)
    after = {k: state[k] - first.delta[k] for k in state}

    assert first.opt_state == second.opt_state and first.loss == second.loss
    assert all(torch.equal(first.delta[k], second.delta[k]) for k in state)
    assert first.samples == 30 * 16 and first.step == 30
    assert evaluate(after, TINY, shard) < evaluate(state, TINY, shard) - 0.5


def test_inner_steps_continue_adamw_from_its_state_and_restart_on_a_mismatch(split) -> None:
    shard, state = split[0][0], _state()
    first = inner_steps(TINY, state, shard, 3, seed=1)

    continued = inner_steps(TINY, state, shard, 3, seed=1, opt_state=first.opt_state)
    foreign = _state(config=ModelConfig(**{**TINY.to_dict(), "d_ff": 48}))
    other = inner_steps(ModelConfig(**{**TINY.to_dict(), "d_ff": 48}), foreign, shard, 1, seed=1)
    restarted = inner_steps(TINY, state, shard, 3, seed=1, opt_state=other.opt_state)

    assert continued.step == 6
    assert not torch.equal(continued.delta["embed.weight"], first.delta["embed.weight"])
    assert restarted.step == 3 and restarted.opt_state == first.opt_state
    with pytest.raises(ValueError):
        inner_steps(TINY, state, shard, 1, seed=1, opt_state=b"garbage")


@pytest.mark.parametrize(("mode", "rtol", "atol"), [("fp32", 0.0, 0.0), ("fp16", 1e-3, 3e-8)])
def test_float_compression_round_trips_within_its_precision(mode, rtol, atol) -> None:
    delta = _random_delta()

    back = decompress(compress(delta, mode), _shapes(delta))

    for name, tensor in delta.items():
        assert back[name].dtype == torch.float32
        assert torch.allclose(back[name], tensor, rtol=rtol, atol=atol)


def test_int8_compression_is_within_half_a_step_per_element() -> None:
    delta = _random_delta()
    delta["blocks.0.norm1.weight"] = torch.zeros_like(delta["blocks.0.norm1.weight"])

    data = compress(delta, "int8")
    back = decompress(data, _shapes(delta))

    assert len(data) < len(compress(delta, "fp32")) / 3
    for name, tensor in delta.items():
        scale = tensor.abs().max() / 127
        assert (back[name] - tensor).abs().max() <= scale / 2 * (1 + 1e-5)


@pytest.mark.parametrize("mode", ["fp32", "fp16", "int8"])
def test_decompress_rejects_deltas_that_do_not_fit_the_model(mode) -> None:
    delta, shapes = _random_delta(), _shapes(_state())
    renamed = {("x" + k if k == "embed.weight" else k): v for k, v in delta.items()}
    reshaped = {**delta, "embed.weight": delta["embed.weight"][:-1]}
    missing = {k: v for k, v in delta.items() if k != "embed.weight"}

    for bad, reason in [(renamed, "names"), (reshaped, "shape"), (missing, "missing")]:
        with pytest.raises(BadPseudoGradient, match=reason):
            decompress(compress(bad, mode), shapes)
    with pytest.raises(BadPseudoGradient, match="malformed"):
        decompress(compress(delta, mode)[:-1], shapes)


@pytest.mark.parametrize("mode", ["fp32", "fp16"])
def test_decompress_rejects_nan_and_infinity(mode) -> None:
    delta = _random_delta()
    delta["embed.weight"][3, 4] = float("nan")
    with pytest.raises(BadPseudoGradient, match="NaN"):
        decompress(compress(delta, mode), _shapes(delta))


def test_decompress_rejects_a_forged_int8_scale() -> None:
    delta = _random_delta()
    data = state_to_bytes(
        {k: torch.zeros(v.shape, dtype=torch.int8) for k, v in delta.items()},
        {"format": "fogwheel-delta-1", "mode": "int8", "scales": dict.fromkeys(delta, -1.0)},
    )
    with pytest.raises(BadPseudoGradient, match="scale"):
        decompress(data, _shapes(delta))


def test_check_norm_rejects_absurd_pseudo_gradients() -> None:
    delta = _random_delta()
    norm = check_norm(delta, max_norm=1e3)

    assert 0 < norm < 1e3
    with pytest.raises(BadPseudoGradient, match="exceeds"):
        check_norm({**delta, "embed.weight": delta["embed.weight"] * 1e6}, max_norm=1e3)


def test_one_worker_with_plain_sgd_of_lr_one_lands_on_global_minus_delta(split) -> None:
    model = build(TINY, seed=0)
    global_state = _state()
    result = inner_steps(TINY, global_state, split[0][0], 5, seed=2)

    OuterOptimizer(model, lr=1.0, momentum=0.0).step([result.delta])

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, global_state[name] - result.delta[name])


def test_weighted_outer_step_uses_the_weighted_mean() -> None:
    a, b = build(TINY, seed=0), build(TINY, seed=0)
    da, db = _random_delta(1), _random_delta(2)

    OuterOptimizer(a, lr=1.0, momentum=0.0).step([da, db], weights=[3.0, 1.0])
    OuterOptimizer(b, lr=1.0, momentum=0.0).step([{k: (3 * da[k] + db[k]) / 4 for k in da}])

    for name, tensor in a.state_dict().items():
        assert torch.allclose(tensor, b.state_dict()[name], atol=1e-7)


def test_outer_state_bytes_restore_identical_next_steps() -> None:
    original = build(TINY, seed=0)
    outer = OuterOptimizer(original)
    outer.step([_random_delta(1)])
    weights, momentum = state_to_bytes(original.state_dict()), outer.state_bytes()

    restored = from_state(TINY, state_from_bytes(weights))
    restored_outer = OuterOptimizer(restored)
    restored_outer.load_state_bytes(momentum)
    for opt in (outer, restored_outer):
        opt.step([_random_delta(2), _random_delta(3)])

    assert restored_outer.steps == outer.steps == 2
    assert restored_outer.state_bytes() == outer.state_bytes()
    assert state_to_bytes(restored.state_dict()) == state_to_bytes(original.state_dict())


def test_a_few_diloco_rounds_with_two_workers_lower_the_validation_loss(split) -> None:
    shards, val = split
    model = build(TINY, seed=0)
    outer = OuterOptimizer(model)
    opt_states: list[bytes | None] = [None, None]
    initial = evaluate(model, TINY, val)

    for round_ in range(4):
        global_state = {k: v.clone() for k, v in model.state_dict().items()}
        results = [
            inner_steps(
                TINY, global_state, shard, 10, lr=3e-3, seed=100 * round_ + w, opt_state=opt
            )
            for w, (shard, opt) in enumerate(zip(shards, opt_states, strict=True))
        ]
        opt_states = [r.opt_state for r in results]
        deltas = [decompress(compress(r.delta, "int8"), _shapes(global_state)) for r in results]
        outer.step(deltas, weights=[r.samples for r in results])

    assert evaluate(model, TINY, val) < initial - 0.5
