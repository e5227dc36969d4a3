"""iCaRL: herding, the fixed memory budget, the distillation loss, nearest-mean classification."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import roundtrip, split_digits
from llray.data import Task, TaskStream
from llray.errors import ConfigError
from llray.learner import LifelongRun, run_stream
from llray.models import ModelConfig, build_model
from llray.strategies import Batch, Context, TrainConfig, check_scenario, make_strategy
from llray.strategies.base import MASKED
from llray.strategies.icarl import herding, normalized_features

torch.set_num_threads(1)
TRAIN = TrainConfig(epochs=5, batch_size=32, lr=0.1)


@pytest.fixture(scope="module")
def class_stream():
    return split_digits("class")


def mlp(stream, seed=0):
    return build_model(ModelConfig(hidden=(100,)), stream.input_shape, stream.num_classes, seed)


# -- herding ---------------------------------------------------------------------------------
def test_herding_mean_is_closer_to_the_class_mean_than_random_picks():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    model = build_model(ModelConfig(hidden=(100,)), (64,), 10, seed=0)
    g = torch.Generator().manual_seed(0)
    m = 10
    for c in range(10):
        f = normalized_features(model, x[y == c])
        mu = f.mean(0)
        idx = herding(f, m)
        assert len(set(idx.tolist())) == m  # m distinct samples
        herd = (f[idx].mean(0) - mu).norm()
        rand = [(f[torch.randperm(len(f), generator=g)[:m]].mean(0) - mu).norm() for _ in range(50)]
        assert herd < min(rand), c  # better than the best of 50 random picks of equal size
        # herding is greedy: a shorter budget is a prefix (why cutting old sets is fine)
        assert herding(f, 4).tolist() == idx[:4].tolist()


# -- nearest mean of exemplars -----------------------------------------------------------------
class Tiny(nn.Module):
    """Identity features (2-d), linear head: distances can be computed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        return self.head(self.features(x))


def test_nme_prediction_equals_a_hand_computation():
    x0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # class 0 -> normalised (1,0), (0,1)
    x1 = torch.tensor([[-1.0, 0.0], [-3.0, 0.0]])  # class 1 -> normalised (-1,0) twice
    task = Task(0, "t0", torch.cat([x0, x1]), torch.tensor([0, 0, 1, 1]),
                torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), (0, 1))
    later = Task(1, "t1", torch.zeros(1, 2), torch.tensor([2]), torch.zeros(1, 2),
                 torch.tensor([2]), (2,))
    stream = TaskStream((task, later), "class", "tiny", (2,), 3)
    ctx = Context(stream, TrainConfig(), torch.device("cpu"), torch.Generator().manual_seed(0))
    strat = make_strategy("icarl", {"memory_size": 4})  # 2 per class: keeps all four
    model = strat.setup(Tiny(), ctx)
    strat.before_task(model, task, ctx)
    strat.after_task(model, task, ctx)  # selects exemplars, computes class means

    q = torch.tensor([[3.0, 1.0], [-0.5, 2.0]])
    scores = strat.predict(model, q, 0, ctx)
    s2 = 1 / math.sqrt(2)  # class 0 mean: normalise((0.5, 0.5)); class 1 mean: (-1, 0)
    expected = torch.tensor([
        [-math.hypot(3 / math.sqrt(10) - s2, 1 / math.sqrt(10) - s2),
         -math.hypot(3 / math.sqrt(10) + 1, 1 / math.sqrt(10))],
        [-math.hypot(-0.5 / math.sqrt(4.25) - s2, 2 / math.sqrt(4.25) - s2),
         -math.hypot(-0.5 / math.sqrt(4.25) + 1, 2 / math.sqrt(4.25))],
    ])
    torch.testing.assert_close(scores[:, :2], expected)
    assert (scores[:, 2] == MASKED).all()  # class 2 not seen: never predicted
    assert scores.argmax(1).tolist() == [0, 0]
    # features are normalised: scaling a query does not change its scores
    torch.testing.assert_close(strat.predict(model, 10 * q, 0, ctx), scores)


# -- training: distillation targets and the memory budget -------------------------------------
def test_loss_is_bce_with_old_model_sigmoid_targets_on_old_classes(class_stream):
    s = class_stream
    run = LifelongRun(s, mlp(s), make_strategy("icarl", {"memory_size": 40}), TRAIN, seed=0)
    run.learn_next()
    strat, model, t1 = run.strategy, run.model, s.tasks[1]
    strat.before_task(model, t1, run.ctx)
    x, y = t1.x_train[:8], t1.y_train[:8]
    old = torch.sigmoid(model(x)[:, [0, 1]]).detach()  # the model before training on t1
    with torch.no_grad():  # change the model: the targets must come from the frozen copy
        model.head.weight.add_(0.5)
    logits = model(x)[:, [0, 1, 2, 3]]
    target = torch.cat([old, F.one_hot(y - 2, 2).float()], 1)
    hand = -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).sum(1).mean()
    torch.testing.assert_close(strat.loss(model, Batch(x, y, 1), t1, run.ctx), hand)


def test_memory_is_fixed_and_split_evenly(class_stream):
    s = class_stream
    K = 50
    run = LifelongRun(s, mlp(s), make_strategy("icarl", {"memory_size": K}), TRAIN, seed=0)
    run.start()
    prev = {}
    while not run.done:
        run.learn_next()
        ex = run.strategy.exemplars
        per_class = K // len(ex)
        assert sum(len(e) for e in ex.values()) <= K
        assert all(len(e) == per_class for e in ex.values())
        for c, e in prev.items():  # old sets are cut, keeping the herding priority order
            assert torch.equal(ex[c], e[:per_class])
        prev = {c: e.clone() for c, e in ex.items()}
    assert sorted(prev) == list(range(10))


def test_icarl_beats_naive_in_class_il_and_resumes(class_stream):
    s = class_stream
    naive = run_stream(s, mlp(s), make_strategy("naive"), TRAIN, seed=0)
    icarl = run_stream(s, mlp(s), make_strategy("icarl"), TRAIN, seed=0)
    assert icarl.R[-1].mean() > 0.6 and icarl.R[-1].mean() > naive.R[-1].mean() + 0.3
    # checkpoint after task 2, resume, same R
    a = LifelongRun(s, mlp(s), make_strategy("icarl"), TRAIN, seed=0)
    a.start(), a.learn_next(), a.learn_next()
    b = LifelongRun(s, mlp(s), make_strategy("icarl"), TRAIN, seed=0)
    b.load_state_dict(roundtrip(a.state_dict()))
    while not b.done:
        b.learn_next()
    np.testing.assert_array_equal(b.R, icarl.R)


def test_icarl_config_and_scenarios(class_stream):
    check_scenario("icarl", "class")
    with pytest.raises(ConfigError, match="class"):
        check_scenario("icarl", "task")
    with pytest.raises(ConfigError, match="memory_size"):
        make_strategy("icarl", {"memory_size": 0})
    with pytest.raises(ConfigError, match="memory_size"):
        LifelongRun(class_stream, mlp(class_stream), make_strategy("icarl", {"memory_size": 5}),
                    TRAIN)
