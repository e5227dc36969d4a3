"""DER++: logits stored at insertion time, the loss formula on a hand-built buffer, the
buffer filled during training, config errors, checkpoint round trip, beating naive."""

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

torch.set_num_threads(1)


def tiny_stream(scenario):
    """Two tasks on 2-d inputs, classes (0, 1) and (2, 3)."""
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for i in range(2):
        x = torch.randn(6, 2, generator=gen)
        y = torch.tensor([0, 1, 0, 1, 1, 0]) + 2 * i
        tasks.append(Task(i, f"t{i}", x, y, x, y, (2 * i, 2 * i + 1)))
    return TaskStream(tuple(tasks), scenario, "tiny", (2,), 4)


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ce(z, y):
    return -np.log(softmax(z)[np.arange(len(y)), y]).mean()


def setup(scenario, **params):
    stream = tiny_stream(scenario)
    model = nn.Linear(2, 4)
    s = make_strategy("derpp", {"buffer_size": 8, "mem_batch_size": 5, **params})
    run = LifelongRun(stream, model, s, TrainConfig(batch_size=6), seed=0)
    return stream, model, s, run.ctx


def test_logits_are_stored_at_insertion_time():
    stream, model, s, ctx = setup("class")
    t0, t1 = stream.tasks
    with torch.no_grad():
        z_then = model(t0.x_train).clone()
    s.loss(model, Batch(t0.x_train[:4], t0.y_train[:4], 0), t0, ctx)
    assert len(s.buffer) == 4
    with torch.no_grad():
        model.weight.add_(1.0)  # the model moves on, as after optimizer steps
    s.loss(model, Batch(t1.x_train[:3], t1.y_train[:3], 1), t1, ctx)
    assert len(s.buffer) == 7  # capacity 8: nothing replaced yet, slots in arrival order
    torch.testing.assert_close(s.logits[:4], z_then[:4])
    with torch.no_grad():
        z_now = model(t1.x_train[:3])
        assert not torch.allclose(model(t0.x_train[:4]), s.logits[:4])
    torch.testing.assert_close(s.logits[4:7], z_now)
    assert s.buffer.t[:7].tolist() == [0] * 4 + [1] * 3
    assert torch.equal(s.buffer.y[:7], torch.cat([t0.y_train[:4], t1.y_train[:3]]))


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_loss_equals_the_formula_on_a_hand_built_buffer(scenario):
    """CE(x) + α·MSE(h(x'), z') + β·CE(h(x''), y''), with heads masked per sample in task-IL."""
    alpha, beta, k = 0.3, 0.7, 5
    stream, model, s, ctx = setup(scenario, alpha=alpha, beta=beta)
    gen = torch.Generator().manual_seed(1)
    n = 6  # hand-built buffer: 6 filled slots of 8, mixed tasks, arbitrary stored logits
    s.buffer.x[:n] = torch.randn(n, 2, generator=gen)
    s.buffer.t[:n] = torch.tensor([0, 1, 0, 1, 1, 0])
    s.buffer.y[:n] = torch.tensor([1, 2, 0, 3, 3, 1])
    s.buffer.seen = n
    s.logits[:n] = torch.randn(n, 4, generator=gen) * 3
    task = stream.tasks[1]
    batch = Batch(task.x_train[:4], task.y_train[:4], 1)
    replica = torch.Generator().set_state(ctx.strategy_generator.get_state())
    i1 = s.buffer.sample_indices(k, replica).numpy()
    i2 = s.buffer.sample_indices(k, replica).numpy()
    assert len(set(i1.tolist()) | set(i2.tolist())) > 2

    W, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    h = lambda x: x @ W.T + b  # noqa: E731
    X, T, Y, Z = (s.buffer.x[:n].numpy(), s.buffer.t[:n].numpy(), s.buffer.y[:n].numpy(),
                  s.logits[:n].numpy())
    heads = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    if scenario == "task":  # each sample's own head: masked logits and compared entries
        cur_z = np.where(heads[1], h(batch.x.numpy()), -1e9)
        rep_z = np.where(heads[T[i2]], h(X[i2]), -1e9)
        sq = (h(X[i1]) - Z[i1]) ** 2 * heads[T[i1]]
        mse = sq.sum() / heads[T[i1]].sum()
    else:
        cur_z, rep_z = h(batch.x.numpy()), h(X[i2])
        mse = ((h(X[i1]) - Z[i1]) ** 2).mean()
    expected = ce(cur_z, batch.y.numpy()) + alpha * mse + beta * ce(rep_z, Y[i2])

    got = s.loss(model, batch, task, ctx).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert s.buffer.seen == n + 4  # the batch joined the buffer after the loss


def test_buffer_is_filled_on_every_batch_during_training():
    stream = make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=2))
    s = make_strategy("derpp", {"buffer_size": 50})
    run = LifelongRun(stream, mlp(stream), s, TrainConfig(epochs=2), seed=0)
    run.learn_next()
    assert s.buffer.seen == 2 * len(stream.tasks[0].y_train) and len(s.buffer) == 50
    run.learn_next()
    counts = torch.bincount(s.buffer.t, minlength=2)
    assert counts.min() >= 10  # a uniform sample of both tasks' offers


@pytest.mark.parametrize(
    "params, field",
    [
        ({"alpha": -0.1}, "alpha"),
        ({"beta": -1.0}, "beta"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"mem_batch_size": 0}, "mem_batch_size"),
        ({"gamma": 1.0}, "gamma"),
    ],
)
def test_bad_config_raises_config_error_naming_the_field(params, field):
    with pytest.raises(ConfigError) as e:
        make_strategy("derpp", params)
    assert e.value.field == f"derpp.{field}"


@pytest.fixture(scope="module")
def digits():
    return make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=3))


def mlp(stream, seed=0):
    return build_model(ModelConfig(hidden=(32,)), stream.input_shape, stream.num_classes, seed)


def test_checkpoint_round_trip_resumes_to_the_same_R(digits):
    params, train = {"buffer_size": 100}, TrainConfig(epochs=1)
    full = run_stream(digits, mlp(digits), make_strategy("derpp", params), train, seed=2)
    first = LifelongRun(digits, mlp(digits), make_strategy("derpp", params), train, seed=2)
    first.learn_next()
    state = roundtrip(first.state_dict())
    assert state["strategy"]["logits"].shape == (100, 10)
    resumed = LifelongRun(digits, mlp(digits), make_strategy("derpp", params), train, seed=2)
    resumed.load_state_dict(state)
    while not resumed.done:
        resumed.learn_next()
    assert full.status == resumed.status == "ok"
    np.testing.assert_array_equal(resumed.R, full.R)


def test_derpp_beats_naive_on_permuted_digits(digits):
    train = TrainConfig(epochs=5)
    acc = {}
    for name in ("naive", "derpp"):
        res = run_stream(digits, mlp(digits), make_strategy(name), train, seed=0)
        assert res.status == "ok"
        acc[name] = res.R[-1].mean()
    assert acc["derpp"] > acc["naive"] + 0.05, acc
