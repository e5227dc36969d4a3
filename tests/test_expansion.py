"""Model expansion: progressive networks (zero forgetting), Net2Net, the expand strategy."""

import copy

import numpy as np
import pytest
import torch

from helpers import roundtrip, split_digits
from llray.data import Task, TaskStream
from llray.errors import ConfigError
from llray.learner import LifelongRun
from llray.models import (
    ConvNet,
    ModelConfig,
    build_model,
    hidden_widths,
    net2deeper,
    net2wider,
)
from llray.strategies import TrainConfig, check_scenario, make_strategy

torch.set_num_threads(1)

# momentum and weight decay on purpose: they must not touch frozen columns
TRAIN = TrainConfig(epochs=3, batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-3)


@pytest.fixture(scope="module")
def task_stream():
    return split_digits("task")


def mlp(stream, hidden=(32,), seed=0):
    return build_model(ModelConfig(hidden=hidden), stream.input_shape, stream.num_classes, seed)


# -- progressive networks -----------------------------------------------------------------
@pytest.mark.parametrize("adapters", [True, False])
def test_progressive_earlier_tasks_exactly_unchanged(task_stream, adapters):
    s = task_stream
    strat = make_strategy("progressive", {"adapters": adapters})
    run = LifelongRun(s, mlp(s, (32, 32)), strat, TRAIN, order=(3, 0, 4, 1, 2), seed=0)
    run.start()
    col0 = None
    while not run.done:
        run.learn_next()
        if run.step == 1:
            col0 = [p.detach().clone() for p in run.model.columns[0].parameters()]
    R, T = run.R, s.num_tasks
    assert run.status == "ok"
    for j in range(1, T + 1):
        for k in range(j, T + 1):
            assert R[k, j - 1] == R[j, j - 1], (k, j)  # float equality: BWT = 0 exactly
    assert np.diag(R[1:]).min() > 0.8  # and every column did learn its task
    # the first column's weights are bit-for-bit the ones it had after its own task
    for a, b in zip(col0, run.model.columns[0].parameters()):
        assert torch.equal(a, b) and not b.requires_grad
    assert len(run.model.columns) == T and len(run.model.columns[-1].laterals) == 2


def test_progressive_columns_are_restored_from_a_checkpoint(task_stream):
    s = task_stream
    a = LifelongRun(s, mlp(s), make_strategy("progressive"), TRAIN, seed=1)
    a.start()
    a.learn_next(), a.learn_next()
    b = LifelongRun(s, mlp(s), make_strategy("progressive"), TRAIN, seed=1)
    b.load_state_dict(roundtrip(a.state_dict()))
    while not a.done:
        a.learn_next(), b.learn_next()
    np.testing.assert_array_equal(a.R, b.R)


def test_progressive_is_task_il_only():
    check_scenario("progressive", "task")
    for scenario in ("class", "domain"):
        with pytest.raises(ConfigError, match="task"):
            check_scenario("progressive", scenario)


# -- Net2Net -------------------------------------------------------------------------------
def test_net2wider_and_net2deeper_preserve_the_function():
    m = build_model(ModelConfig(hidden=(16, 12)), (64,), 10, seed=0)
    x = torch.rand(200, 64, generator=torch.Generator().manual_seed(0))
    before = m(x).detach()
    g = torch.Generator().manual_seed(1)
    net2wider(m, 0, 40, g)
    assert hidden_widths(m) == (40, 12)
    torch.testing.assert_close(m(x), before, atol=1e-5, rtol=0)
    net2wider(m, 1, 30, g, noise=0.1)  # zero-sum noise also keeps the function
    net2deeper(m, 0)
    net2deeper(m, 2)
    assert hidden_widths(m) == (40, 40, 30, 30)
    torch.testing.assert_close(m(x), before, atol=1e-5, rtol=0)
    # the widened layer really has new, copied units (not zero padding)
    w = m.features[1].weight
    assert all(any(torch.equal(w[j], w[i]) for i in range(16)) for j in range(16, 40))


def test_net2wider_copies_are_split_and_trainable():
    m = build_model(ModelConfig(hidden=(8,)), (4,), 3, seed=0)
    head_sum = m.head.weight.detach().sum(1)
    net2wider(m, 0, 20, torch.Generator().manual_seed(0))
    # outgoing weights of each group of copies sum to the original unit's weight
    torch.testing.assert_close(m.head.weight.detach().sum(1), head_sum)
    loss = m(torch.rand(5, 4)).sum()
    loss.backward()
    assert m.features[1].weight.grad.shape == (20, 4)


# -- expand strategy ----------------------------------------------------------------------
def test_expand_grows_parameters_as_tasks_arrive():
    s = split_digits("class")
    strat = make_strategy("expand", {"grow": "both", "width_step": 16, "max_depth": 3})
    run = LifelongRun(s, mlp(s), strat, TrainConfig(epochs=3, lr=0.1), seed=0)
    run.start()
    counts, widths = [], []
    while not run.done:
        # a growth step is function-preserving at the moment it happens
        grown, x = copy.deepcopy(run.model), s.tasks[0].x_test
        strat.grow(grown, torch.Generator().manual_seed(run.step))
        torch.testing.assert_close(grown(x), run.model(x), atol=1e-5, rtol=0)
        run.learn_next()
        counts.append(sum(p.numel() for p in run.model.parameters()))
        widths.append(hidden_widths(run.model))
    assert run.status == "ok" and not np.isnan(run.R).any()
    assert all(a < b for a, b in zip(counts, counts[1:]))
    assert widths == [(32,), (48, 48), (64, 64, 64), (80, 80, 80), (96, 96, 96)]
    assert np.diag(run.R[1:]).mean() > 0.8  # it learns each task while it grows


def test_expand_schedule_and_resume(task_stream):
    s = task_stream
    cfg = {"grow": "wider", "width_step": 8, "max_width": 48, "every": 2}
    a = LifelongRun(s, mlp(s), make_strategy("expand", cfg), TrainConfig(epochs=1), seed=0)
    a.start()
    a.learn_next(), a.learn_next(), a.learn_next()
    assert hidden_widths(a.model) == (40,)  # grew once: before the 3rd task
    b = LifelongRun(s, mlp(s), make_strategy("expand", cfg), TrainConfig(epochs=1), seed=0)
    b.load_state_dict(roundtrip(a.state_dict()))
    assert hidden_widths(b.model) == (40,)
    while not a.done:
        a.learn_next(), b.learn_next()
    assert hidden_widths(a.model) == (48,)  # capped at max_width
    np.testing.assert_array_equal(a.R, b.R)


def test_expand_rejects_bad_config_and_non_mlp():
    with pytest.raises(ConfigError, match="grow"):
        make_strategy("expand", {"grow": "taller"})
    with pytest.raises(ConfigError, match="width_step"):
        make_strategy("expand", {"width_step": 0})
    s = split_digits("class")
    img = TaskStream(
        tuple(
            Task(t.id, t.name, t.x_train.view(-1, 1, 8, 8), t.y_train, t.x_test.view(-1, 1, 8, 8),
                 t.y_test, t.classes)
            for t in s.tasks
        ),
        "class", "img", (1, 8, 8), 10,
    )
    net = build_model(ModelConfig(name="convnet", channels=(4, 8)), (1, 8, 8), 10, seed=0)
    with pytest.raises(ConfigError, match="MLP"):
        LifelongRun(img, net, make_strategy("expand"), TrainConfig())


# -- ConvNet ---------------------------------------------------------------------------------
def test_convnet_follows_the_feature_protocol():
    net = build_model(ModelConfig(name="convnet", channels=(4, 8)), (3, 16, 16), 7, seed=0)
    assert isinstance(net, ConvNet)
    x = torch.rand(5, 3, 16, 16)
    feats = net.features(x)
    assert feats.shape == (5, 8 * 4 * 4)
    torch.testing.assert_close(net.head(feats), net(x))
    with pytest.raises(ConfigError, match="image"):
        build_model(ModelConfig(name="convnet"), (64,), 10, seed=0)
    with pytest.raises(ConfigError, match="channels"):
        ModelConfig(name="convnet", channels=())
