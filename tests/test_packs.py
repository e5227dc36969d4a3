"""Run packs: batched models and optimizers equal the plain ones run by run."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from llray.models import ModelConfig, build_model
from llray.packs.models import PackedModel
from llray.packs.optim import packed_optimizer
from llray.strategies import TrainConfig
from llray.strategies.base import Context

CFGS = {"mlp": (ModelConfig(hidden=(16, 12)), (1, 8, 8)),
        "convnet": (ModelConfig(name="convnet", channels=(4, 6)), (1, 8, 8))}


@pytest.mark.parametrize("arch", ["mlp", "convnet"])
def test_packed_forward_equals_each_plain_model(arch):
    cfg, shape = CFGS[arch]
    models = [build_model(cfg, shape, 10, seed=s) for s in range(3)]
    pm = PackedModel.from_models(cfg, models)
    x = torch.rand(3, 7, *shape)
    out = pm(x)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[k], m(x[k]), atol=1e-6, rtol=0)
    shared = pm.forward_shared(x[0])
    torch.testing.assert_close(shared[2], models[2](x[0]), atol=1e-6, rtol=0)


def test_batched_linear_gradients_are_the_reference_ones():
    """The custom backward (weight gradient in the weight's layout) is exact: gradcheck
    in float64 and equal to autograd of the plain ``baddbmm`` expression."""
    from llray.packs.models import batched_linear

    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.rand(*s, generator=g, dtype=torch.float64, requires_grad=True)
               for s in ((3, 5, 4), (3, 6, 4), (3, 6)))
    assert torch.autograd.gradcheck(batched_linear, (x, w, b))
    out = torch.rand(3, 5, 6, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((batched_linear(x, w, b) * out).sum(), (x, w, b))
    ref = torch.autograd.grad((torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)) * out).sum(),
                              (x, w, b))
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=0)
    assert got[1].is_contiguous()


@pytest.mark.parametrize("arch", ["mlp", "convnet"])
@pytest.mark.parametrize("train", [
    TrainConfig(optimizer="sgd", lr=0.1),
    TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3),
    TrainConfig(optimizer="adam", lr=0.01, weight_decay=1e-2),
])
def test_weights_after_steps_match_torch_optim_within_1e_5(arch, train):
    """Three steps of a pack of 3 runs (other lr per run) vs torch.optim on each run."""
    cfg, shape = CFGS[arch]
    trains = [train, TrainConfig(**{**train.__dict__, "lr": train.lr * 2}),
              TrainConfig(**{**train.__dict__, "lr": train.lr / 3})]
    models = [build_model(cfg, shape, 10, seed=s) for s in range(3)]
    pm = PackedModel.from_models(cfg, models)
    opt = packed_optimizer(list(pm.parameters()), trains, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(3, 8, *shape, generator=g) for _ in range(3)]
    ys = [torch.randint(10, (3, 8), generator=g) for _ in range(3)]
    for x, y in zip(xs, ys):
        out = pm(x)
        loss = F.cross_entropy(out.reshape(-1, 10), y.reshape(-1), reduction="none")
        opt.zero_grad()
        loss.view(3, 8).mean(1).sum().backward()
        opt.step()
    for k, (m, t) in enumerate(zip(models, trains)):
        plain = Context.optimizer(SimpleNamespace(train=t), list(m.parameters()))  # the run's own
        for x, y in zip(xs, ys):
            plain.zero_grad()
            F.cross_entropy(m(x[k]), y[k]).backward()
            plain.step()
        for n, p in m.named_parameters():
            torch.testing.assert_close(pm.named()[n][k], p.detach(), atol=1e-5, rtol=0)


def test_masked_step_leaves_a_run_and_its_state_alone():
    cfg, shape = CFGS["mlp"]
    models = [build_model(cfg, shape, 10, seed=s) for s in range(2)]
    pm = PackedModel.from_models(cfg, models)
    opt = packed_optimizer(list(pm.parameters()), [TrainConfig(optimizer="adam")] * 2,
                           torch.device("cpu"))
    before = [p.detach().clone() for p in pm.parameters()]
    for p in pm.parameters():
        p.grad = torch.ones_like(p)
    opt.step(torch.tensor([True, False]))
    for b, p in zip(before, pm.parameters()):
        assert torch.equal(b[1], p[1]) and not torch.equal(b[0], p[0])
    assert opt.t.tolist() == [1.0, 0.0] and torch.all(opt.m[0][1] == 0)


# -- a pack's runs get the R they get alone ------------------------------------------------------
import numpy as np  # noqa: E402

from helpers import roundtrip  # noqa: E402
from llray.config import parse_config  # noqa: E402
from llray.data import make_stream  # noqa: E402
from llray.errors import ConfigError  # noqa: E402
from llray.experiment import execute  # noqa: E402
from llray.packs.run import build_pack  # noqa: E402
from llray.packs.strategies import check_packable  # noqa: E402

# Each entry: the strategy list (values differ run by run) and the stream kind. LwF runs
# task-IL with SGD: at a task's first step teacher == student, so its distillation
# gradient is zero up to rounding, which Adam's normalisation would amplify.
VARIANTS = {
    "naive": ([{"name": "naive"}], "permuted"),
    "joint": ([{"name": "joint"}], "split"),
    "ewc": ([{"name": "ewc", "lambda_": 10, "fisher": "exact", "label": "a"},
             {"name": "ewc", "lambda_": 100, "fisher": "sampled", "fisher_samples": 300,
              "label": "b"},
             {"name": "ewc", "lambda_": 30, "fisher": "empirical", "label": "c"},
             {"name": "ewc", "lambda_": 50, "online": True, "gamma": 0.9, "label": "d"}],
            "permuted"),
    "replay": ([{"name": "replay", "ratio": r, "buffer_size": 100, "label": str(r)}
                for r in (0.0, 0.5, 0.8)], "split"),
    "si": ([{"name": "si", "c": c, "label": str(c)} for c in (0.1, 1.0)], "permuted"),
    "mas": ([{"name": "mas", "lambda_": v, "samples": 200, "label": str(v)} for v in (0.5, 2.0)],
            "split"),
    "lwf": ([{"name": "lwf", "alpha": a, "temperature": t, "label": f"{a}-{t}"}
             for a, t in ((1.0, 2.0), (0.5, 1.0))], "split"),
    "agem": ([{"name": "agem", "memory_size": 100, "mem_batch_size": 64}], "permuted"),
    "derpp": ([{"name": "derpp", "alpha": a, "beta": b, "buffer_size": 100, "label": f"{a}{b}"}
               for a, b in ((0.5, 0.5), (1.0, 0.2))], "split"),
}


def pack_config(strategies, kind, optimizer="sgd", seeds=(0, 1, 2, 3)):
    stream = {"dataset": "digits", "kind": kind, "num_tasks": 2}
    if kind == "split":
        stream.update(scenario="task", num_tasks=3)
    return parse_config({
        "stream": stream, "model": {"hidden": [32]},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "optimizer": optimizer,
                  "momentum": 0.5},
        "strategies": strategies, "seeds": list(seeds),
        "orders": ["identity", list(reversed(range(stream["num_tasks"])))]})


def mixed(specs, n=8):
    """``n`` specs taken in turn from each (strategy, order) group: values, seeds and
    orders all differ within the pack."""
    groups = {}
    for s in specs:
        groups.setdefault((s.strategy, s.order), []).append(s)
    out = []
    while len(out) < n:
        for j, g in enumerate(groups.values()):
            if g and len(out) < n:
                out.append(g.pop(j % len(g)))  # another seed from each group
    return out


def train_pack(specs, stream):
    pack = build_pack(specs, stream)
    while not pack.done:
        pack.learn_next()
    return pack.results()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_run_of_a_pack_of_8_gets_the_r_it_gets_alone(name):
    """Tolerances: every R entry within 0.02, each strategy's mean ACC within 0.01
    (floating-point reordering of batched kernels; measured 0 to 0.003 here)."""
    strategies, kind = VARIANTS[name]
    cfg = pack_config(strategies, kind)
    specs = mixed(cfg.runs())
    assert len(specs) == 8 and len({(s.seed, s.order, s.strategy) for s in specs}) == 8
    assert len({s.order for s in specs}) == 2 and len({s.seed for s in specs}) >= 2
    stream = make_stream(cfg.stream)
    packed = train_pack(specs, stream)
    alone = [execute(s, stream) for s in specs]
    for a, p in zip(alone, packed):
        assert p.status == a.status == "ok"
        np.testing.assert_allclose(p.R, a.R, atol=0.02, rtol=0)
        assert p.order == a.order and p.samples_trained == a.samples_trained
    for label in {s.strategy.display for s in specs}:
        ks = [k for k, s in enumerate(specs) if s.strategy.display == label]
        acc = lambda rs: np.mean([rs[k].R[-1].mean() for k in ks])  # noqa: E731
        assert abs(acc(packed) - acc(alone)) <= 0.01


@pytest.mark.filterwarnings("ignore:ewc. lr . lambda_:RuntimeWarning")
def test_a_diverging_run_leaves_its_pack_mates_unchanged():
    cfg = pack_config([{"name": "ewc", "lambda_": 10, "label": "ok"},
                       {"name": "ewc", "lambda_": 1e9, "label": "stiff"}], "permuted", seeds=(0, 1))
    runs = {(s.strategy.display, s.seed, s.order[0]): s for s in cfg.runs()}
    # SGD oscillates on a penalty of curvature lr·λ·F > 2: the middle run blows up
    specs = [runs["ok", 0, 0], runs["stiff", 0, 0], runs["ok", 1, 1]]
    stream = make_stream(cfg.stream)
    packed = train_pack(specs, stream)
    assert [r.status for r in packed] == ["ok", "diverged", "ok"]
    assert "loss became" in packed[1].error  # on task 2, the first with a penalty
    assert np.isnan(packed[1].R[2]).all() and not np.isnan(packed[1].R[:2]).any()
    without = train_pack([specs[0], specs[2]], stream)  # the same runs, no diverging mate
    np.testing.assert_array_equal(packed[0].R, without[0].R)
    np.testing.assert_array_equal(packed[2].R, without[1].R)
    alone = execute(specs[1], stream)
    assert alone.status == "diverged"
    np.testing.assert_allclose(packed[1].R, alone.R, atol=0.02, rtol=0)  # NaN where alone


@pytest.mark.parametrize("name", ["ewc", "replay", "si", "derpp", "agem"])
def test_resume_of_a_pack_after_task_1_gives_the_uninterrupted_r(name):
    strategies, kind = VARIANTS[name]
    cfg = pack_config(strategies, kind, optimizer="adam", seeds=(0, 1))
    specs = cfg.runs()[:4]
    stream = make_stream(cfg.stream)
    full = train_pack(specs, stream)
    pack = build_pack(specs, stream)
    pack.learn_next()
    states = [roundtrip(s) for s in pack.state_dicts()]  # one plain-run checkpoint each
    resumed = build_pack(specs, stream)
    resumed.load_state_dicts(states)
    assert resumed.step == 1
    while not resumed.done:
        resumed.learn_next()
    for a, b in zip(full, resumed.results()):
        np.testing.assert_array_equal(a.R, b.R)


def test_a_run_checkpointed_in_a_pack_resumes_unpacked():
    from llray.experiment import build_run

    cfg = pack_config(VARIANTS["replay"][0], "split", seeds=(0,))
    specs = cfg.runs()[:3]
    stream = make_stream(cfg.stream)
    pack = build_pack(specs, stream)
    pack.learn_next()
    state = roundtrip(pack.state_dicts()[1])
    run = build_run(specs[1], stream)
    run.load_state_dict(state)
    while not run.done:
        run.learn_next()
    np.testing.assert_allclose(run.R, execute(specs[1], stream).R, atol=0.02, rtol=0)


def test_strategies_without_a_pack_version_say_they_run_unpacked():
    with pytest.raises(ConfigError, match="'gem' has no pack version and runs unpacked"):
        check_packable("gem")
    cfg = pack_config([{"name": "replay", "buffer_size": 100, "label": "a"},
                       {"name": "replay", "buffer_size": 50, "label": "b"}], "permuted", seeds=(0,))
    with pytest.raises(ConfigError, match="replay.buffer_size: must be equal within a pack"):
        build_pack(cfg.runs(), make_stream(cfg.stream))


def test_a_convnet_pack_matches_each_run_alone():
    cfg = parse_config({
        "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 2},
        "model": {"name": "convnet", "channels": [4, 8]},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
        "strategies": [{"name": "ewc", "lambda_": 1, "fisher": "sampled", "label": "a"},
                       {"name": "ewc", "lambda_": 10, "label": "b"}],
        "seeds": [0, 1], "orders": ["identity", [1, 0]]})
    specs = mixed(cfg.runs(), 4)
    stream = make_stream(cfg.stream)
    for a, p in zip([execute(s, stream) for s in specs], train_pack(specs, stream)):
        assert p.status == a.status == "ok"
        np.testing.assert_allclose(p.R, a.R, atol=0.02, rtol=0)
