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
    assert opt.t[0].tolist() == [1.0, 0.0] and torch.all(opt.m[0][1] == 0)
