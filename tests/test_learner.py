"""The learner: R layout, order, determinism, divergence, exact resume from a checkpoint."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import roundtrip
from llray.data import StreamConfig, Task, TaskStream, make_stream
from llray.learner import LifelongRun, check_order, run_stream
from llray.models import ModelConfig, build_model
from llray.strategies import Strategy, TrainConfig, make_strategy

TRAIN = TrainConfig(epochs=2, batch_size=32, lr=0.3)


@pytest.fixture(scope="module")
def stream():
    return make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=3, seed=1))


def model_for(stream, seed=0):
    return build_model(ModelConfig(hidden=(32,)), stream.input_shape, stream.num_classes, seed)


def test_r_has_random_init_row_and_one_row_per_task(stream):
    res = run_stream(stream, model_for(stream), make_strategy("naive"), TRAIN, seed=0)
    assert res.R.shape == (4, 3) and res.status == "ok"
    assert not np.isnan(res.R).any()
    # row 0 is the untrained model: near chance (10 classes); the diagonal has learned
    assert res.R[0].max() < 0.35
    assert all(res.R[j + 1, j] > 0.5 for j in range(3))
    assert res.samples_trained == TRAIN.epochs * sum(len(t.y_train) for t in stream.tasks)
    assert list(res.n_test) == [len(t.y_test) for t in stream.tasks]


def test_row_zero_is_the_initial_model(stream):
    m = model_for(stream)
    run = LifelongRun(stream, m, make_strategy("naive"), TRAIN)
    row0 = run.start().copy()
    with torch.no_grad():
        expect = [(m(t.x_test).argmax(1) == t.y_test).double().mean().item() for t in stream.tasks]
    np.testing.assert_allclose(row0, expect)


def test_columns_follow_the_order(stream):
    order = (2, 0, 1)
    res = run_stream(stream, model_for(stream), make_strategy("naive"), TRAIN, order, seed=0)
    assert res.order == order
    # after the first task of the order (task 2), column 0 (= task 2) is the best one
    assert res.R[1, 0] == res.R[1].max()
    assert list(res.n_test) == [len(stream.tasks[i].y_test) for i in order]


def test_same_seed_same_r_and_other_seed_differs(stream):
    a = run_stream(stream, model_for(stream, 3), make_strategy("naive"), TRAIN, seed=3)
    b = run_stream(stream, model_for(stream, 3), make_strategy("naive"), TRAIN, seed=3)
    c = run_stream(stream, model_for(stream, 4), make_strategy("naive"), TRAIN, seed=4)
    np.testing.assert_array_equal(a.R, b.R)
    assert not np.array_equal(a.R, c.R)


@pytest.mark.parametrize("name", ["naive", "joint"])
def test_resume_from_checkpoint_gives_identical_r(stream, name):
    full = run_stream(stream, model_for(stream), make_strategy(name), TRAIN, seed=7)
    run = LifelongRun(stream, model_for(stream), make_strategy(name), TRAIN, seed=7)
    run.start()
    run.learn_next()
    state = roundtrip(run.state_dict())
    # a new process would build a fresh model with another init; the state overrides it
    resumed = LifelongRun(stream, model_for(stream, 99), make_strategy(name), TRAIN, seed=7)
    resumed.load_state_dict(state)
    assert resumed.step == 1
    while not resumed.done:
        resumed.learn_next()
    np.testing.assert_array_equal(resumed.R, full.R)


class NanOnSecondTask(Strategy):
    name = "_nan_on_second_task"

    def before_task(self, model, task, ctx):
        self.poison = len(ctx.seen) == 1

    def loss(self, model, batch, task, ctx):
        loss = F.cross_entropy(ctx.logits(model, batch.x, batch.t), batch.y)
        return loss * float("nan") if self.poison else loss


def test_nan_loss_ends_run_as_diverged_without_raising(stream):
    res = run_stream(stream, model_for(stream), NanOnSecondTask(), TRAIN, seed=0)
    assert res.status == "diverged" and "nan" in res.error
    assert not np.isnan(res.R[:2]).any()
    assert np.isnan(res.R[2:]).all()


def test_task_il_masks_logits_to_the_task_classes():
    x = torch.randn(20, 4)
    y = torch.arange(20) % 2
    t0 = Task(0, "a", x, y, x, y, (0, 1))
    t1 = Task(1, "b", x, y + 2, x, y + 2, (2, 3))
    s = TaskStream((t0, t1), "task", "toy", (4,), 4)
    run = LifelongRun(s, build_model(ModelConfig(hidden=(8,)), (4,), 4, 0), make_strategy("naive"),
                      TRAIN)
    out = run.ctx.logits(run.model, x[:3], 1)
    assert (out[:, :2] < -1e8).all() and (out[:, 2:] > -1e8).all()
    per_sample = run.ctx.logits(run.model, x[:2], torch.tensor([0, 1]))
    assert (per_sample[0, 2:] < -1e8).all() and (per_sample[1, :2] < -1e8).all()


def test_order_must_be_a_permutation():
    assert check_order([1, 0, 2], 3) == (1, 0, 2)
    for bad in ([0, 1], [0, 0, 1], [0, 1, 3]):
        with pytest.raises(ValueError, match="not a permutation"):
            check_order(bad, 3)


def test_naive_forgets_and_joint_is_the_upper_bound():
    s = make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=4, seed=0))
    train = TrainConfig(epochs=2, optimizer="adam", lr=0.003)
    from llray import metrics

    naive = run_stream(s, model_for(s, 0), make_strategy("naive"), train, seed=0)
    joint = run_stream(s, model_for(s, 0), make_strategy("joint"), train, seed=0)
    assert metrics.bwt(naive.R) < -0.2
    assert metrics.acc(joint.R) > metrics.acc(naive.R) + 0.2
    assert metrics.bwt(joint.R) > metrics.bwt(naive.R) + 0.2
