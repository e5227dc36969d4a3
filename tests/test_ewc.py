"""EWC: Fisher (torch.func vs a per-sample loop), merged penalty, online EWC, configs,
checkpoints, and that it forgets less than naive fine-tuning on permuted digits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import roundtrip
from llray.data import StreamConfig, Task, TaskStream, make_stream
from llray.errors import ConfigError
from llray.learner import LifelongRun, run_stream
from llray.models import MLP, ConvNet, ModelConfig, build_model
from llray.strategies import Context, TrainConfig, make_strategy
from llray.strategies._fisher import _fast_linears, _sample_labels, fisher_diagonal
from llray.strategies.ewc import EWC, EWCConfig


# -- reference: the per-sample Python loop ---------------------------------------------------
def loop_fisher(model, x, y, kind, t=0, mask=None):
    """Diagonal Fisher with one autograd.grad call per sample (and per class for exact)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        ti = int(t[i]) if isinstance(t, torch.Tensor) else t
        out = model(x[i : i + 1])
        if mask is not None:
            out = mask(out, ti)
        lp = F.log_softmax(out, dim=-1)[0]  # [C]
        if kind == "exact":
            weights = [(c, lp[c].exp().item()) for c in range(len(lp))]
        else:
            weights = [(int(y[i]), 1.0)]
        for c, w in weights:
            g = torch.autograd.grad(lp[c], list(params.values()), retain_graph=True)
            for n, gi in zip(params, g):
                total[n] += w * gi.square()
    return {n: v / len(x) for n, v in total.items()}


def assert_same(a, b, atol=1e-10, rtol=1e-7):
    assert sorted(a) == sorted(b)
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=atol, rtol=rtol, msg=n)


class Odd(nn.Module):
    """A Linear used twice (no fast path for it), a bare parameter, a frozen layer."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.shared = nn.Linear(6, 6)
        self.frozen = nn.Linear(6, 6).requires_grad_(False)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.head(self.frozen(h) * self.scale)


def tiny_data(n=12, d=4, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, torch.randint(c, (n,), generator=g)


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(4, (7, 6), 5).double()


@pytest.mark.parametrize("kind", ["empirical", "exact"])
@pytest.mark.parametrize("fast", [True, False])
def test_fisher_matches_per_sample_loop(kind, fast):
    model, (x, y) = tiny_mlp(), tiny_data()
    got = fisher_diagonal(model, x, y, kind=kind, batch_size=5, fast=fast)  # chunks 5+5+2
    assert_same(got, loop_fisher(model, x, y, kind))


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_fisher_general_path_shared_and_frozen_parameters(kind):
    torch.manual_seed(1)
    model, (x, y) = Odd().double(), tiny_data()
    # only the once-used Linears factorise; the twice-used one and `scale` go the general way
    assert sorted(_fast_linears(model, x[:1])) == ["head", "inp"]
    got = fisher_diagonal(model, x, y, kind=kind, batch_size=5)
    assert "frozen.weight" not in got and "scale" in got
    assert_same(got, loop_fisher(model, x, y, kind))


def test_fisher_convnet_conv_general_head_fast():
    torch.manual_seed(2)
    model = ConvNet((1, 8, 8), 5, channels=(3,)).double()
    x = torch.rand(10, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(10) % 5
    assert list(_fast_linears(model, x[:1])) == ["head"]
    assert_same(fisher_diagonal(model, x, y, kind="exact", batch_size=4),
                loop_fisher(model, x, y, "exact"))


def test_fast_path_selects_every_mlp_layer():
    model = tiny_mlp()
    assert sorted(_fast_linears(model, torch.zeros(1, 4, dtype=torch.float64))) == [
        "features.1", "features.3", "head"
    ]


def task_il_ctx():
    """A task-IL context whose two tasks own classes {0, 1, 2} and {3, 4}."""
    z = torch.zeros(1, 4)
    zl = torch.zeros(1, dtype=torch.long)
    tasks = (Task(0, "a", z, zl, z, zl, (0, 1, 2)), Task(1, "b", z, zl + 3, z, zl + 3, (3, 4)))
    stream = TaskStream(tasks, "task", "toy", (4,), 5)
    return Context(stream, TrainConfig(), torch.device("cpu"), torch.Generator().manual_seed(0),
                   class_mask=stream.class_mask())


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_fisher_task_il_uses_the_masked_logits(kind):
    ctx, model, (x, _) = task_il_ctx(), tiny_mlp(), tiny_data()
    y = 3 + torch.arange(len(x)) % 2  # labels of task 1
    got = fisher_diagonal(model, x, y, 1, kind=kind, mask=ctx.mask, batch_size=5)
    assert_same(got, loop_fisher(model, x, y, kind, t=1, mask=ctx.mask))
    # masking changes the answer (so the comparison above is not vacuous): the head rows
    # of task 0's classes get no Fisher at all, unlike without a mask
    assert float(got["head.weight"][:3].abs().max()) == 0.0
    unmasked = fisher_diagonal(model, x, y, kind=kind)
    assert float(unmasked["head.weight"][:3].abs().max()) > 1e-4


def test_fisher_per_sample_task_ids():
    ctx, model, (x, _) = task_il_ctx(), tiny_mlp(), tiny_data()
    t = torch.tensor([0, 1] * 6)
    y = torch.where(t == 0, torch.arange(12) % 3, 3 + torch.arange(12) % 2)
    got = fisher_diagonal(model, x, y, t, kind="exact", mask=ctx.mask, batch_size=4)
    assert_same(got, loop_fisher(model, x, y, "exact", t=t, mask=ctx.mask))


def test_sampled_fisher_is_deterministic_and_uses_model_labels():
    model, (x, y) = tiny_mlp(), tiny_data(n=40)
    run = lambda seed: fisher_diagonal(  # noqa: E731
        model, x, y, kind="sampled", generator=torch.Generator().manual_seed(seed), batch_size=16
    )
    a, b, c = run(7), run(7), run(8)
    assert_same(a, b, atol=0, rtol=0)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    # it is the label-Fisher of labels drawn chunk by chunk from the model with that seed
    g = torch.Generator().manual_seed(7)
    ys = torch.cat([_sample_labels(model, x[i : i + 16], 0, None, g) for i in range(0, 40, 16)])
    assert not torch.equal(ys, y)
    assert_same(a, loop_fisher(model, x, ys, "empirical"))


def test_float32_fisher_close_to_loop():
    model, (x, y) = tiny_mlp().float(), tiny_data()
    x = x.float()
    for kind in ("empirical", "exact"):
        assert_same(fisher_diagonal(model, x, y, kind=kind), loop_fisher(model, x, y, kind),
                    atol=1e-6, rtol=1e-5)


# -- merged penalty --------------------------------------------------------------------------
def random_tasks(model, k=3, seed=0):
    """k (Fisher, anchor) pairs; some Fisher entries exactly 0 to exercise A = 0."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        fisher, anchor = {}, {}
        for n, p in model.named_parameters():
            f = torch.rand(p.shape, generator=g, dtype=p.dtype)
            fisher[n] = torch.where(f < 0.2, torch.zeros_like(f), f)
            anchor[n] = p.detach() + torch.randn(p.shape, generator=g, dtype=p.dtype)
        out.append((fisher, anchor))
    out[0][0]["head.bias"][0] = 0.0  # a parameter no task constrains: A stays 0 there
    out[1][0]["head.bias"][0] = 0.0
    out[2][0]["head.bias"][0] = 0.0
    return out


def naive_penalty(model, tasks, lam):
    total = 0.0
    for fisher, anchor in tasks:
        for n, p in model.named_parameters():
            total = total + lam / 2 * (fisher[n] * (p - anchor[n]).square()).sum()
    return total


def value_and_grad(fn, model):
    model.zero_grad()
    v = fn(model)
    v.backward()
    return v.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_merged_penalty_equals_sum_of_task_penalties():
    model, lam = tiny_mlp(), 3.7
    tasks = random_tasks(model)
    ewc = EWC(EWCConfig(lambda_=lam))
    for fisher, anchor in tasks:
        ewc.consolidate(fisher, anchor)
    got_v, got_g = value_and_grad(ewc.penalty, model)
    exp_v, exp_g = value_and_grad(lambda m: naive_penalty(m, tasks, lam), model)
    torch.testing.assert_close(got_v, exp_v, rtol=1e-10, atol=1e-10)
    assert_same(got_g, exp_g)
    # one tensor per parameter however many tasks: the step cost does not grow
    assert sorted(ewc.importance) == sorted(n for n, _ in model.named_parameters())
    assert ewc.tasks == 3


def test_online_ewc_follows_schwarz():
    model, lam, gamma = tiny_mlp(), 2.0, 0.7
    tasks = random_tasks(model)
    ewc = EWC(EWCConfig(lambda_=lam, online=True, gamma=gamma))
    for fisher, anchor in tasks:
        ewc.consolidate(fisher, anchor)
    (f1, _), (f2, _), (f3, theta3) = tasks
    for n, _ in model.named_parameters():
        # F~ = gamma F~ + F_t, anchored at the latest parameters; the penalty weighs it by
        # gamma (Schwarz et al. 2018; van de Ven's ewc_loss: fisher = gamma * fisher)
        running = gamma**2 * f1[n] + gamma * f2[n] + f3[n]
        torch.testing.assert_close(ewc.importance[n], gamma * running)
        torch.testing.assert_close(ewc.anchor[n], theta3[n])
    expect = sum(
        lam / 2 * (gamma * (gamma**2 * f1[n] + gamma * f2[n] + f3[n])
                   * (p - theta3[n]).square()).sum()
        for n, p in model.named_parameters()
    )
    torch.testing.assert_close(ewc.penalty(model), expect)


def test_online_ewc_after_one_task_is_gamma_times_offline():
    """After the first task, the online penalty is γ times the offline one, so a λ copied
    from the papers means the same penalty (not 1/γ times it)."""
    model, lam, gamma = tiny_mlp(), 3.0, 0.5
    (fisher, anchor), *_ = random_tasks(model)
    online = EWC(EWCConfig(lambda_=lam, online=True, gamma=gamma))
    offline = EWC(EWCConfig(lambda_=lam))
    online.consolidate(fisher, anchor)
    offline.consolidate(fisher, anchor)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    torch.testing.assert_close(online.penalty(model), gamma * offline.penalty(model))


# -- configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, field",
    [
        ({"lambda_": -1}, "lambda_"),
        ({"gamma": 1.5}, "gamma"),
        ({"fisher": "diagonal"}, "fisher"),
        ({"fisher_samples": 0}, "fisher_samples"),
        ({"fisher_batch": 0}, "fisher_batch"),
    ],
)
def test_bad_config_names_the_field(params, field):
    with pytest.raises(ConfigError) as e:
        make_strategy("ewc", params)
    assert e.value.field.endswith(field)


def test_direct_config_checks_too():
    with pytest.raises(ConfigError, match="lambda_"):
        EWCConfig(lambda_=-0.5)
    assert make_strategy("ewc", {"lambda_": 0}).config.lambda_ == 0.0


# -- checkpoints -----------------------------------------------------------------------------

@pytest.mark.parametrize("online", [False, True])
def test_state_dict_roundtrip_gives_identical_penalty(online):
    model = tiny_mlp()
    tasks = random_tasks(model)
    a = EWC(EWCConfig(lambda_=5.0, online=online, gamma=0.9))
    for fisher, anchor in tasks[:2]:
        a.consolidate(fisher, anchor)
    b = EWC(EWCConfig(lambda_=5.0, online=online, gamma=0.9))
    b.load_state_dict(roundtrip(a.state_dict()))
    assert torch.equal(a.penalty(model), b.penalty(model))
    a.consolidate(*tasks[2])
    b.consolidate(*tasks[2])
    assert torch.equal(a.penalty(model), b.penalty(model))


# -- on a stream -----------------------------------------------------------------------------
TRAIN = TrainConfig(epochs=3, batch_size=32, lr=0.003, optimizer="adam")


@pytest.fixture(scope="module")
def stream():
    return make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=3, seed=0))


def run(stream, name, params=None, seed=0):
    model = build_model(ModelConfig(hidden=(100,)), stream.input_shape, stream.num_classes, seed)
    res = run_stream(stream, model, make_strategy(name, params), TRAIN, seed=seed)
    assert res.status == "ok"
    return res.R


def acc_bwt(R):
    T = R.shape[1]
    return R[T].mean(), np.mean([R[T, j] - R[j + 1, j] for j in range(T - 1)])


def test_ewc_forgets_less_than_naive(stream):
    # two seeds averaged; measured margins are about +0.08 ACC and +0.2 BWT
    naive = np.mean([acc_bwt(run(stream, "naive", seed=s)) for s in (0, 1)], axis=0)
    ewc = np.mean([acc_bwt(run(stream, "ewc", {"lambda_": 100}, seed=s)) for s in (0, 1)], axis=0)
    assert naive[1] < -0.15, f"naive should forget, BWT {naive[1]:.3f}"
    assert ewc[1] > naive[1] + 0.1, f"BWT ewc {ewc[1]:.3f} vs naive {naive[1]:.3f}"
    assert ewc[0] > naive[0] + 0.03, f"ACC ewc {ewc[0]:.3f} vs naive {naive[0]:.3f}"


def test_ewc_run_resumes_exactly_from_a_checkpoint(stream):
    params = {"lambda_": 100, "fisher": "sampled", "fisher_samples": 500}

    def fresh():
        m = build_model(ModelConfig(hidden=(32,)), stream.input_shape, stream.num_classes, 0)
        return LifelongRun(stream, m, make_strategy("ewc", params), TRAIN, seed=0)

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
    resumed.learn_next()
    np.testing.assert_array_equal(resumed.R, full.R)


def test_warns_when_sgd_cannot_follow_the_penalty(stream):
    model = build_model(ModelConfig(hidden=(32,)), stream.input_shape, stream.num_classes, 0)
    two = TaskStream(stream.tasks[:2], stream.scenario, stream.benchmark, stream.input_shape, 10)
    with pytest.warns(RuntimeWarning, match="lambda_"):
        run_stream(two, model, make_strategy("ewc", {"lambda_": 1e4}), TrainConfig(lr=0.1))
