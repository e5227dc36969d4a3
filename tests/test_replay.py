"""Replay: the reservoir buffer (bounded, exactly Algorithm R, uniform), the ER loss,
configs, checkpoints, and that replay beats naive fine-tuning on permuted digits."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import llray.strategies._buffer as bufmod
from helpers import roundtrip
from llray.data import StreamConfig, Task, TaskStream, make_stream
from llray.errors import ConfigError
from llray.learner import LifelongRun, run_stream
from llray.models import MLP, ModelConfig, build_model
from llray.strategies import Batch, Context, TrainConfig, make_strategy
from llray.strategies._buffer import ReservoirBuffer, last_writer, reservoir_targets
from llray.strategies.replay import Replay, ReplayConfig


def items(n, start=0):
    """n items whose input and label are their stream position."""
    pos = torch.arange(start, start + n)
    return pos.float().unsqueeze(1), pos


# -- the buffer --------------------------------------------------------------------------------
def test_buffer_is_bounded_and_fills_in_order():
    g = torch.Generator().manual_seed(0)
    buf = ReservoirBuffer(100, (1,), "cpu")
    x, y = items(60)
    buf.add(x, y, 3, g)
    assert len(buf) == 60 and buf.seen == 60
    assert torch.equal(buf.y[:60], y) and (buf.t[:60] == 3).all()
    for start in range(60, 1000, 170):
        x, y = items(min(170, 1000 - start), start)
        buf.add(x, y, torch.full_like(y, 5), g)
        assert len(buf) == min(buf.seen, 100)
    assert buf.seen == 1000 and len(buf) == 100
    assert len(set(buf.y.tolist())) == 100  # no item twice
    assert torch.equal(buf.x.squeeze(1).long(), buf.y)  # x and y moved together


def sequential_algorithm_r(targets, capacity):
    """Vitter's Algorithm R, one item at a time, given each item's draw."""
    slots = [-1] * capacity
    for i, j in enumerate(targets.tolist()):
        if j < capacity:
            slots[j] = i
    return slots


def test_vectorised_add_equals_sequential_algorithm_r():
    cap = 50
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        targets = reservoir_targets(0, 700, cap, g)
        assert torch.equal(targets[:cap], torch.arange(cap))
        assert (targets[cap:] <= torch.arange(cap, 700)).all()
        g = torch.Generator().manual_seed(seed)
        buf = ReservoirBuffer(cap, (1,), "cpu")
        buf.add(*items(700), 0, g)
        assert buf.y.tolist() == sequential_algorithm_r(targets, cap)


def test_last_writer_wins_on_duplicate_slots():
    slots, winners = last_writer(torch.tensor([1, 7, 1, 2, 1, 9, 2]), capacity=4)
    assert dict(zip(slots.tolist(), winners.tolist())) == {1: 4, 2: 6}


def inclusion_counts(trials, n=1000, cap=100, seed=0):
    """How often each of n streamed items ends in a cap-slot buffer, over many trials.

    Each trial streams the items in 1 to 4 calls of random sizes; a quarter of the
    trials send all 1000 in one call, where many items share a slot.
    """
    g = torch.Generator().manual_seed(seed)
    x, y = items(n)
    counts = torch.zeros(n, dtype=torch.long)
    for _ in range(trials):
        buf = ReservoirBuffer(cap, (1,), "cpu")
        k = int(torch.randint(4, (1,), generator=g))
        cuts = torch.randint(1, n, (k,), generator=g).sort().values.tolist()
        edges = [0, *cuts, n]
        for a, b in zip(edges[:-1], edges[1:]):
            buf.add(x[a:b], y[a:b], 0, g)
        assert len(buf) == cap
        counts += torch.bincount(buf.y, minlength=n)
    return counts


def uniformity(counts, trials, p):
    """(chi-square z-score, largest per-item binomial z-score) of the inclusion counts.

    Under uniform inclusion each count is ~Binomial(trials, p): the chi-square statistic
    over the N items has mean ~N-1 and sd ~sqrt(2(N-1)).
    """
    e, var = trials * p, trials * p * (1 - p)
    chi2 = float(((counts - e) ** 2).sum() / var)
    df = len(counts) - 1
    return (chi2 - df) / math.sqrt(2 * df), float((counts - e).abs().max() / math.sqrt(var))


TRIALS = 2000


def test_reservoir_inclusion_is_uniform():
    counts = inclusion_counts(TRIALS)
    freq = counts.double() / TRIALS
    chi_z, max_z = uniformity(counts, TRIALS, 0.1)
    assert abs(chi_z) < 4, f"chi-square z {chi_z:.2f}"
    assert max_z < 5.5, f"an item's inclusion is off by {max_z:.1f} sd"
    assert abs(float(freq[:100].mean()) - 0.1) < 0.01  # the fill phase is not favoured
    assert abs(float(freq[-100:].mean()) - 0.1) < 0.01  # nor the latest items


def test_uniformity_check_catches_biased_reservoirs(monkeypatch):
    """The test above has power against the usual mistakes:

    - "first write wins" (e.g. a scatter that keeps the first of several items aimed at
      one slot): in a call of many items past the fill, each slot is hit by a geometric
      run of items and keeps the earliest, so items soon after the fill are kept far
      more often than 10% and late ones far less: chi-square z in the hundreds.
    - "keep the first cap items" (no replacement once full): items 0..99 are always
      kept and the rest never: every per-item z is about 30.
    """
    def first_writer(target, capacity):
        keep = target < capacity
        items_ = torch.arange(len(target))[keep]
        winner = torch.full((capacity,), len(target), dtype=torch.int64)
        winner.scatter_reduce_(0, target[keep], items_, reduce="amin")
        written = (winner < len(target)).nonzero().squeeze(1)
        return written, winner[written]

    def keep_first(seen, m, capacity, generator):
        n = torch.arange(seen, seen + m)
        return torch.where(n < capacity, n, torch.full_like(n, capacity))

    for name, fake in (("last_writer", first_writer), ("reservoir_targets", keep_first)):
        with monkeypatch.context() as mp:
            mp.setattr(bufmod, name, fake)
            chi_z, max_z = uniformity(inclusion_counts(500), 500, 0.1)
        assert chi_z > 20 and max_z > 8, (name, chi_z, max_z)


def test_sample_draws_from_filled_part_with_generator():
    buf = ReservoirBuffer(10, (1,), "cpu")
    buf.add(*items(4), 2, torch.Generator().manual_seed(0))
    a = buf.sample(64, torch.Generator().manual_seed(1))
    b = buf.sample(64, torch.Generator().manual_seed(1))
    assert torch.equal(a.y, b.y) and set(a.y.tolist()) == {0, 1, 2, 3}
    assert torch.equal(a.x.squeeze(1).long(), a.y) and (a.t == 2).all()



def test_buffer_state_dict_roundtrip():
    g = torch.Generator().manual_seed(0)
    a = ReservoirBuffer(30, (1,), "cpu")
    a.add(*items(100), torch.arange(100) % 3, g)
    b = ReservoirBuffer(30, (1,), "cpu")
    b.load_state_dict(roundtrip(a.state_dict()))
    c = ReservoirBuffer.from_state(roundtrip(a.state_dict()))
    for other in (b, c):
        assert other.seen == a.seen
        assert all(torch.equal(u, v) for u, v in ((a.x, other.x), (a.y, other.y), (a.t, other.t)))
    # and they continue identically
    a.add(*items(50, 100), 0, torch.Generator().manual_seed(5))
    b.add(*items(50, 100), 0, torch.Generator().manual_seed(5))
    assert torch.equal(a.y, b.y)


# -- the loss ----------------------------------------------------------------------------------
def ctx_for(stream, batch_size=8, seed=0):
    return Context(stream, TrainConfig(batch_size=batch_size), torch.device("cpu"),
                   torch.Generator().manual_seed(seed),
                   class_mask=stream.class_mask() if stream.scenario == "task" else None)


def toy_stream(scenario):
    g = torch.Generator().manual_seed(0)
    tasks = []
    for t, classes in enumerate([(0, 1, 2), (3, 4)]):
        x = torch.randn(40, 4, generator=g)
        y = torch.tensor(classes)[torch.randint(len(classes), (40,), generator=g)]
        tasks.append(Task(t, f"t{t}", x, y, x, y, classes))
    return TaskStream(tuple(tasks), scenario, "toy", (4,), 5)


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_er_loss_is_ce_of_the_concatenated_batch(scenario):
    stream = toy_stream(scenario)
    ctx, model = ctx_for(stream), MLP(4, (8,), 5)
    strat = Replay(ReplayConfig(ratio=0.5, buffer_size=16))
    strat.setup(model, ctx)
    t0, t1 = stream.tasks
    cur = Batch(t1.x_train[:8], t1.y_train[:8], 1)
    # first task: empty buffer, plain CE
    assert torch.equal(strat.loss(model, cur, t0, ctx),
                       F.cross_entropy(ctx.logits(model, cur.x, 1), cur.y))
    strat.after_task(model, t0, ctx)
    assert len(strat.buffer) == 16 and (strat.buffer.t == 0).all()
    state = ctx.strategy_generator.get_state()
    got = strat.loss(model, cur, t1, ctx)
    ctx.strategy_generator.set_state(state)
    mem = strat.buffer.sample(8, ctx.strategy_generator)  # the same draw
    x = torch.cat([cur.x, mem.x])
    t = torch.cat([torch.ones(8, dtype=torch.long), mem.t])  # memory keeps task 0
    expect = F.cross_entropy(ctx.logits(model, x, t), torch.cat([cur.y, mem.y]))
    torch.testing.assert_close(got, expect)
    if scenario == "task":  # per-sample masking matters: masking all as task 1 differs
        wrong = F.cross_entropy(ctx.logits(model, x, 1), torch.cat([cur.y, mem.y]))
        assert not torch.allclose(got, wrong)


def test_ratio_weights_current_and_memory_losses():
    stream = toy_stream("class")
    ctx, model = ctx_for(stream), MLP(4, (8,), 5)
    strat = Replay(ReplayConfig(ratio=0.3, buffer_size=16, mem_batch_size=5))
    strat.setup(model, ctx)
    strat.after_task(model, stream.tasks[0], ctx)
    cur = Batch(stream.tasks[1].x_train[:8], stream.tasks[1].y_train[:8], 1)
    state = ctx.strategy_generator.get_state()
    got = strat.loss(model, cur, stream.tasks[1], ctx)
    ctx.strategy_generator.set_state(state)
    mem = strat.buffer.sample(5, ctx.strategy_generator)
    expect = 0.7 * F.cross_entropy(model(cur.x), cur.y) + 0.3 * F.cross_entropy(model(mem.x), mem.y)
    torch.testing.assert_close(got, expect)


# -- configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, field",
    [({"ratio": 1.5}, "ratio"), ({"ratio": -0.1}, "ratio"), ({"buffer_size": 0}, "buffer_size"),
     ({"mem_batch_size": 0}, "mem_batch_size")],
)
def test_bad_config_names_the_field(params, field):
    with pytest.raises(ConfigError) as e:
        make_strategy("replay", params)
    assert e.value.field.endswith(field)


# -- on a stream -------------------------------------------------------------------------------
TRAIN = TrainConfig(epochs=3, batch_size=32, lr=0.003, optimizer="adam")


@pytest.fixture(scope="module")
def stream():
    return make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=3, seed=0))


def acc_bwt(stream, name, seed):
    model = build_model(ModelConfig(hidden=(100,)), stream.input_shape, stream.num_classes, seed)
    res = run_stream(stream, model, make_strategy(name, {}), TRAIN, seed=seed)
    assert res.status == "ok"
    R, T = res.R, stream.num_tasks
    return R[T].mean(), np.mean([R[T, j] - R[j + 1, j] for j in range(T - 1)])


def test_replay_beats_naive(stream):
    # two seeds averaged; measured: ACC about 0.88 vs 0.70, BWT about -0.03 vs -0.31
    naive = np.mean([acc_bwt(stream, "naive", s) for s in (0, 1)], axis=0)
    replay = np.mean([acc_bwt(stream, "replay", s) for s in (0, 1)], axis=0)
    assert naive[1] < -0.15, f"naive should forget, BWT {naive[1]:.3f}"
    assert replay[0] > naive[0] + 0.1, f"ACC replay {replay[0]:.3f} vs naive {naive[0]:.3f}"
    assert replay[1] > naive[1] + 0.15, f"BWT replay {replay[1]:.3f} vs naive {naive[1]:.3f}"


def test_replay_run_resumes_exactly_from_a_checkpoint(stream):
    def fresh():
        m = build_model(ModelConfig(hidden=(32,)), stream.input_shape, stream.num_classes, 0)
        strat = make_strategy("replay", {"buffer_size": 64, "ratio": 0.4})
        return LifelongRun(stream, m, strat, TRAIN, seed=0)

    full = fresh()
    full.start()
    while not full.done:
        full.learn_next()
    part = fresh()
    part.start()
    part.learn_next()
    part.learn_next()
    resumed = fresh()
    resumed.load_state_dict(roundtrip(part.state_dict()))
    assert torch.equal(resumed.strategy.buffer.x, part.strategy.buffer.x)
    resumed.learn_next()
    np.testing.assert_array_equal(resumed.R, full.R)
