"""SI, MAS and LwF: importances and distillation targets against hand computations on
tiny linear models, config errors, checkpoint round trips, short runs on permuted digits."""

import numpy as np
import pytest
import torch
from torch import nn

from helpers import roundtrip
from llray.data import StreamConfig, Task, TaskStream, make_stream
from llray.errors import ConfigError
from llray.learner import LifelongRun, run_stream
from llray.models import ModelConfig, build_model
from llray.strategies import Batch, TrainConfig, make_strategy
from llray.strategies.lwf import distillation_targets, old_groups
from llray.strategies.mas import mas_importance

torch.set_num_threads(1)


def tiny_stream(xs, ys, classes, scenario="domain", num_classes=2):
    """A stream whose task i trains and tests on ``xs[i], ys[i]``."""
    tasks = []
    for i, (x, y, c) in enumerate(zip(xs, ys, classes)):
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
        tasks.append(Task(i, f"t{i}", x, y, x, y, tuple(c)))
    return TaskStream(tuple(tasks), scenario, "tiny", tuple(tasks[0].x_train.shape[1:]),
                      num_classes)


def softmax(z, axis=-1):
    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def ce_grad(W, x, y):
    """Gradient of mean cross-entropy of logits ``x Wᵀ`` (no bias) w.r.t. W [C, D]."""
    p = softmax(x @ W.T)
    p[np.arange(len(y)), y] -= 1
    return p.T @ x / len(y)


# -- SI ------------------------------------------------------------------------------------
def test_si_path_integral_matches_a_hand_computation_with_momentum():
    """ω = −Σ g_task·Δθ with the real (momentum) update; Ω = Σ ω/(Δ²+ξ).

    Two tasks, three full-batch steps each."""
    xs = [[[1.0], [2.0], [-1.0]], [[0.5], [-2.0], [1.5]]]
    ys = [[0, 1, 0], [1, 1, 0]]
    stream = tiny_stream(xs, ys, [(0, 1), (0, 1)])
    c, xi, lr, mu, steps = 0.7, 0.05, 0.3, 0.5, 3
    model = nn.Linear(1, 2, bias=False)
    W = np.array([[0.4], [-0.3]])
    model.weight.data = torch.tensor(W, dtype=torch.float32)
    si = make_strategy("si", {"c": c, "xi": xi})
    train = TrainConfig(epochs=steps, batch_size=16, lr=lr, momentum=mu)  # full batch
    run = LifelongRun(stream, model, si, train, seed=0)

    Omega, anchor = np.zeros_like(W), None
    for k in range(2):
        x, y = np.array(xs[k]), np.array(ys[k])
        start, omega, buf = W.copy(), np.zeros_like(W), None
        for _ in range(steps):
            g_task = ce_grad(W, x, y)
            g = g_task + (2 * c * Omega * (W - anchor) if anchor is not None else 0)
            buf = g if buf is None else mu * buf + g  # torch SGD momentum
            W_new = W - lr * buf
            omega += -g_task * (W_new - W)
            W = W_new
        Omega = np.maximum(Omega + omega / ((W - start) ** 2 + xi), 0)  # clipped at 0
        anchor = W.copy()
        run.learn_next()
        np.testing.assert_allclose(model.weight.detach().numpy(), W, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(si.importance["weight"].numpy(), Omega, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(si.anchor["weight"].numpy(), anchor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("clip", [True, False])
def test_si_clips_the_running_importance_at_zero_as_the_authors_code(clip):
    """Ω ← relu(Ω + ω/(Δ² + ξ)) (ganguli-lab/pathint); ``clip_omega: false`` keeps the sum."""
    si = make_strategy("si", {"xi": 0.5, "clip_omega": clip})
    model = nn.Linear(1, 3, bias=False)
    theta = model.weight.detach().clone()
    si.importance = {"weight": torch.tensor([[0.2], [0.0], [1.0]])}
    si.start = {"weight": theta - 1.0}  # Δ = 1: denominator 1.5
    si.omega = {"weight": torch.tensor([[-0.6], [-1.5], [1.5]])}  # path integrals
    si.after_task(model, None, None)
    total = torch.tensor([[0.2 - 0.4], [0.0 - 1.0], [1.0 + 1.0]])
    expect = total.clamp_min(0) if clip else total
    torch.testing.assert_close(si.importance["weight"], expect)
    assert si.config.clip_omega is clip and make_strategy("si").config.clip_omega


def test_si_loss_is_task_loss_plus_weighted_quadratic():
    si = make_strategy("si", {"c": 2.0})
    model = nn.Linear(1, 2, bias=False)
    si.importance = {"weight": torch.tensor([[1.0], [3.0]])}
    si.anchor = {"weight": model.weight.detach() + torch.tensor([[0.5], [-1.0]])}
    expected = 2.0 * (1.0 * 0.25 + 3.0 * 1.0)
    assert si.penalty(model).item() == pytest.approx(expected)


# -- MAS -----------------------------------------------------------------------------------
def test_mas_importance_is_the_mean_absolute_per_sample_gradient_of_the_squared_norm():
    net = nn.Linear(2, 1)  # 3 parameters: f = w·x + b, ‖f‖² = f²
    w, b = np.array([0.5, -1.0]), 0.25
    net.weight.data = torch.tensor(w[None], dtype=torch.float32)
    net.bias.data = torch.tensor([b], dtype=torch.float32)
    x = np.array([[1.0, 2.0], [-1.0, 0.5], [2.0, -1.0]])
    f = x @ w + b  # [-1.25, -0.75, 3.25]: mixed signs, so mean |g| ≠ |mean g|
    omega = mas_importance(net, torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(omega["weight"].numpy()[0], np.abs(2 * f[:, None] * x).mean(0),
                               rtol=1e-6)
    np.testing.assert_allclose(omega["bias"].numpy(), [np.abs(2 * f).mean()], rtol=1e-6)
    assert omega["bias"].item() > abs((2 * f).mean()) + 1  # the abs is per sample


def test_mas_accumulates_task_heads_across_tasks_in_task_il():
    """Task-IL: F is the task's own head; Ω after two tasks is the sum of both estimates."""
    xs = [[[1.0], [-2.0]], [[0.5], [3.0], [-1.0]]]
    stream = tiny_stream(xs, [[0, 0], [1, 1, 1]], [(0,), (1,)], scenario="task")
    model = nn.Linear(1, 2, bias=False)
    mas = make_strategy("mas", {"lambda_": 0.5, "samples": None})
    run = LifelongRun(stream, model, mas, TrainConfig(epochs=2, batch_size=8, lr=0.2), seed=0)
    expected = np.zeros((2, 1))
    for k in range(2):
        run.learn_next()
        W, x = model.weight.detach().numpy(), np.array(xs[k])
        f = x @ W[k]  # [N] the head of task k (class k)
        expected[k, 0] += np.abs(2 * f * x[:, 0]).mean()
        np.testing.assert_allclose(mas.importance["weight"].numpy(), expected, rtol=1e-5)
    assert torch.equal(mas.anchor["weight"], model.weight.detach())
    diff = torch.tensor([[0.1], [-0.2]])
    model.weight.data += diff
    batch = Batch(stream.tasks[1].x_train, stream.tasks[1].y_train, 1)
    ce = nn.functional.cross_entropy(run.ctx.logits(model, batch.x, 1), batch.y)
    pen = 0.5 * (mas.importance["weight"] * diff.square()).sum()
    assert mas.loss(model, batch, stream.tasks[1], run.ctx).item() == pytest.approx(
        (ce + pen).item(), rel=1e-6)


# -- LwF -----------------------------------------------------------------------------------
def test_lwf_targets_and_loss_match_a_hand_computation_in_class_il():
    """Teacher = the model before task 2, frozen; targets = softmax(old-class logits / T)."""
    xs = [[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[2.0, -1.0], [-1.0, 2.0]]]
    stream = tiny_stream(xs, [[0, 1, 0], [2, 3]], [(0, 1), (2, 3)], "class", num_classes=4)
    model = nn.Linear(2, 4)
    T, alpha = 2.0, 0.7
    lwf = make_strategy("lwf", {"alpha": alpha, "temperature": T})
    run = LifelongRun(stream, model, lwf, TrainConfig(epochs=3, batch_size=8, lr=0.5), seed=0)
    run.learn_next()
    W1, b1 = model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()
    task, ctx = stream.tasks[1], run.ctx
    x2 = np.array(xs[1])
    z_old = x2 @ W1.T + b1  # [N, 4]
    expected = np.zeros((2, 1, 4))
    expected[:, 0, :2] = softmax(z_old[:, :2] / T)  # old classes 0, 1 only

    lwf.before_task(model, task, ctx)
    lwf.train_task(model, task, ctx)  # the student moves; the teacher must not
    assert not torch.equal(model.weight, torch.tensor(W1))
    got = lwf.targets(task.x_train).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)

    W2, b2 = model.weight.detach().numpy(), model.bias.detach().numpy()
    z_new = x2 @ W2.T + b2
    ce = -np.log(softmax(z_new)[np.arange(2), [2, 3]]).mean()
    log_q = np.log(softmax(z_new[:, :2] / T))
    kd = -(expected[:, 0, :2] * log_q).sum(1).mean()
    loss = lwf.loss(model, Batch(task.x_train, task.y_train, 1), task, ctx).item()
    assert loss == pytest.approx(ce + alpha * kd, rel=1e-5)


def test_lwf_groups_per_scenario():
    """Task-IL: one group per earlier task's head; class-IL: old classes; domain: all."""
    xs, ys = [[[0.0]]] * 3, [[0], [2], [4]]
    cls = [(0, 1), (2, 3), (4, 5)]
    for scenario, rows in [
        ("task", [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]]),
        ("class", [[1, 1, 1, 1, 0, 0]]),
        ("domain", [[1, 1, 1, 1, 1, 1]]),
    ]:
        stream = tiny_stream(xs, ys, cls, scenario, num_classes=6)
        run = LifelongRun(stream, nn.Linear(1, 6), make_strategy("lwf"), TrainConfig(), seed=0)
        groups = old_groups(list(stream.tasks[:2]), run.ctx)
        assert groups.int().tolist() == rows, scenario
    # task-IL targets: one softmax per old head, each summing to 1 over its own classes
    z = torch.tensor([[1.0, 3.0, -2.0, 0.0, 5.0, 5.0]])
    groups = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    p = distillation_targets(z, groups, 2.0)[0]
    np.testing.assert_allclose(p[0, :2].numpy(), softmax(np.array([0.5, 1.5])), rtol=1e-6)
    np.testing.assert_allclose(p[1, 2:4].numpy(), softmax(np.array([-1.0, 0.0])), rtol=1e-6)
    assert p[0, 2:].abs().sum() == 0 and p[1, [0, 1, 4, 5]].abs().sum() == 0


# -- configs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, params, field",
    [
        ("si", {"c": -0.1}, "c"),
        ("si", {"xi": 0.0}, "xi"),
        ("mas", {"lambda_": -1.0}, "lambda_"),
        ("mas", {"samples": 0}, "samples"),
        ("lwf", {"alpha": -1.0}, "alpha"),
        ("lwf", {"temperature": 0.0}, "temperature"),
        ("si", {"lambda_": 1.0}, "lambda_"),  # unknown field
    ],
)
def test_bad_config_raises_config_error_naming_the_field(name, params, field):
    with pytest.raises(ConfigError) as e:
        make_strategy(name, params)
    assert e.value.field == f"{name}.{field}"


# -- runs and checkpoints --------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=3))


def mlp(stream, seed=0):
    return build_model(ModelConfig(hidden=(32,)), stream.input_shape, stream.num_classes, seed)


@pytest.mark.parametrize("name, params", [("si", {"c": 1.0}), ("mas", {"samples": 200}),
                                          ("lwf", {})])
def test_checkpoint_round_trip_resumes_to_the_same_R(digits, name, params):
    """Run, and a run restored after task 1 from a weights_only checkpoint, end equal."""
    train = TrainConfig(epochs=2, lr=0.05)
    full = run_stream(digits, mlp(digits), make_strategy(name, params), train, seed=3)
    assert full.status == "ok"

    first = LifelongRun(digits, mlp(digits), make_strategy(name, params), train, seed=3)
    first.learn_next()
    state = roundtrip(first.state_dict())
    resumed = LifelongRun(digits, mlp(digits), make_strategy(name, params), train, seed=3)
    resumed.load_state_dict(state)
    while not resumed.done:
        resumed.learn_next()
    assert resumed.status == "ok"
    np.testing.assert_array_equal(resumed.R, full.R)
