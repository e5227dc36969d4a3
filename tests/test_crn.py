"""Common random numbers: derived seeds, one data-order generator shared by every
strategy, and zero-strength variants that are naive fine-tuning bit for bit."""

import numpy as np
import pytest
import torch

from helpers import roundtrip, split_digits
from llray import seeding
from llray.learner import LifelongRun
from llray.models import ModelConfig, build_model
from llray.strategies import TrainConfig, make_strategy

torch.set_num_threads(1)

TRAIN = TrainConfig(epochs=1, batch_size=32, lr=0.1)


# -- derive ----------------------------------------------------------------------------------
def test_derive_is_a_stable_hash_of_seed_and_purpose():
    # fixed values: the same on every machine and Python version (no hash() randomisation)
    assert seeding.derive(0, "strategy") == 3332932583511180834
    assert seeding.derive(12345, "augment") == seeding.derive(12345, "augment")
    values = {seeding.derive(s, p) for s in (0, 1, 2, 2**64 - 1) for p in ("strategy", "augment")}
    assert len(values) == 8  # distinct seeds and purposes give distinct streams
    for v in values:
        assert 0 <= v < 2**63
        torch.Generator().manual_seed(v)  # accepted as a torch seed
        np.random.default_rng(v)


def test_derive_rejects_bad_input():
    with pytest.raises(TypeError, match="seed"):
        seeding.derive(True, "strategy")
    with pytest.raises(TypeError, match="seed"):
        seeding.derive(1.0, "strategy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        seeding.derive(2**64, "strategy")
    with pytest.raises(ValueError, match="purpose"):
        seeding.derive(0, "")


def test_negative_seed_is_taken_modulo_2_64_like_torch():
    assert seeding.derive(-1, "strategy") == seeding.derive(2**64 - 1, "strategy")
    a = torch.rand(3, generator=seeding.generator(-1))
    b = torch.rand(3, generator=seeding.generator(2**64 - 1))
    assert torch.equal(a, b)


# -- runs -------------------------------------------------------------------------------------
def _run(stream, name: str, params: dict, seed: int = 0) -> LifelongRun:
    model = build_model(ModelConfig(hidden=(32,)), stream.input_shape, stream.num_classes, seed)
    run = LifelongRun(stream, model, make_strategy(name, params), TRAIN, seed=seed)
    run.start()
    while not run.done:
        run.learn_next()
    return run


@pytest.fixture(scope="module")
def streams():
    return {s: split_digits(s, num_tasks=5) for s in ("class", "task")}


@pytest.fixture(scope="module")
def naive(streams):
    return {s: _run(streams[s], "naive", {}) for s in streams}


ZERO_STRENGTH = [
    ("replay", {"ratio": 0.0, "buffer_size": 50}),
    ("ewc", {"lambda_": 0.0, "fisher": "exact"}),
    ("ewc", {"lambda_": 0.0, "fisher": "empirical"}),
    ("ewc", {"lambda_": 0.0, "fisher": "sampled", "fisher_samples": 100}),
    ("ewc", {"lambda_": 0.0, "fisher": "sampled", "online": True, "gamma": 0.9}),
    ("mas", {"lambda_": 0.0, "samples": 100}),
    ("si", {"c": 0.0}),
    ("lwf", {"alpha": 0.0}),
    ("derpp", {"alpha": 0.0, "beta": 0.0, "buffer_size": 50}),
]


@pytest.mark.parametrize("scenario", ["class", "task"])
@pytest.mark.parametrize("name,params", ZERO_STRENGTH, ids=lambda v: str(v))
def test_zero_strength_is_naive_bit_for_bit(streams, naive, scenario, name, params):
    run = _run(streams[scenario], name, params)
    assert run.status == "ok"
    np.testing.assert_array_equal(run.R, naive[scenario].R)  # exact, not approximate
    for a, b in zip(run.model.parameters(), naive[scenario].model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,params", [
    ("replay", {"ratio": 0.5, "buffer_size": 50}),
    ("ewc", {"lambda_": 10.0, "fisher": "sampled", "fisher_samples": 100}),
    ("derpp", {"alpha": 0.5, "beta": 0.5, "buffer_size": 50}),
    ("generative_replay", {"generator": "vae", "generator_epochs": 1, "hidden": 16}),
])
def test_every_strategy_draws_the_same_batch_order_as_naive(streams, naive, name, params):
    """Strategies that draw (memory, Fisher labels, generator noise) leave the data-order
    generator exactly where naive leaves it: the batches were the same."""
    run = _run(streams["class"], name, params)
    assert torch.equal(run.ctx.generator.get_state(), naive["class"].ctx.generator.get_state())
    # ... and their own draws went to the strategy generator
    fresh = seeding.generator(0, seeding.STRATEGY).get_state()
    assert not torch.equal(run.ctx.strategy_generator.get_state(), fresh)


def test_checkpoint_keeps_both_generators_and_rejects_an_old_one(streams):
    stream = streams["class"]
    params = {"ratio": 0.5, "buffer_size": 50}
    full = _run(stream, "replay", params, seed=4)
    model = build_model(ModelConfig(hidden=(32,)), stream.input_shape, stream.num_classes, 4)
    first = LifelongRun(stream, model, make_strategy("replay", params), TRAIN, seed=4)
    first.start()
    first.learn_next()
    state = roundtrip(first.state_dict())
    model = build_model(ModelConfig(hidden=(32,)), stream.input_shape, stream.num_classes, 99)
    resumed = LifelongRun(stream, model, make_strategy("replay", params), TRAIN, seed=4)
    resumed.load_state_dict(state)
    while not resumed.done:
        resumed.learn_next()
    np.testing.assert_array_equal(resumed.R, full.R)

    old = dict(state)
    del old["strategy_generator"]
    with pytest.raises(ValueError, match="strategy_generator"):
        resumed.load_state_dict(old)
