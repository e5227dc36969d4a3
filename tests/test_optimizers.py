"""llray's optimizers are torch's, bit for bit, and train without importing the compiler."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from torch.optim.optimizer import register_optimizer_step_pre_hook

from llray import optimizers

CASES = [
    (optimizers.Adam, torch.optim.Adam, {}),
    (optimizers.Adam, torch.optim.Adam, {"weight_decay": 1e-3}),
    (optimizers.Adam, torch.optim.Adam, {"amsgrad": True, "betas": (0.5, 0.9)}),
    (optimizers.SGD, torch.optim.SGD, {}),
    (optimizers.SGD, torch.optim.SGD, {"momentum": 0.9, "weight_decay": 1e-3}),
    (optimizers.SGD, torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
]


def _train(cls, kwargs: dict, steps: int = 6) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    opt = cls(model.parameters(), lr=0.05, **kwargs)
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        if i == steps // 2:  # a checkpoint round trip in the middle
            opt.load_state_dict(opt.state_dict())
        opt.zero_grad()
        model(torch.randn(4, 5, generator=g)).pow(2).sum().backward()
        opt.step()
    return model, opt.state_dict()


@pytest.mark.parametrize("ours,theirs,kwargs", CASES)
def test_weights_and_state_are_torchs_bit_for_bit(ours, theirs, kwargs):
    (m1, s1), (m2, s2) = _train(ours, kwargs), _train(theirs, kwargs)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert s1["param_groups"] == s2["param_groups"]
    for k in s2["state"]:
        for name, v in s2["state"][k].items():
            assert torch.equal(s1["state"][k][name], v), name
    assert isinstance(ours(torch.nn.Linear(1, 1).parameters(), lr=0.1), theirs)


def test_step_hooks_run_once_per_step():
    """torch wraps each optimizer class's step for its hooks; ours must not run them twice,
    also after a plain torch optimizer of the base class was built (its step wrapped too)."""
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
    model = torch.nn.Linear(2, 1)
    opt = optimizers.Adam(model.parameters(), lr=0.1)
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    handle = register_optimizer_step_pre_hook(lambda *a: calls.append(0))
    try:
        for _ in range(3):
            model(torch.ones(1, 2)).sum().backward()
            opt.step()
    finally:
        handle.remove()
    assert calls == [0, 1] * 3


def test_closure_and_grad_mode_as_torchs():
    model = torch.nn.Linear(2, 1)
    opt = optimizers.SGD(model.parameters(), lr=0.1)

    def closure():
        assert torch.is_grad_enabled()  # torch re-enables grad for the closure
        opt.zero_grad()
        loss = model(torch.ones(1, 2)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        loss = opt.step(closure)
        assert torch.is_grad_enabled()  # restored after the step
    assert loss is not None


RUN = textwrap.dedent("""
    import sys
    from llray.config import parse_config
    from llray.experiment import execute
    cfg = parse_config({"experiment": "x", "strategies": ["replay"],
                        "stream": {"num_tasks": 2, "kind": "permuted"},
                        "train": {"epochs": 1, "optimizer": "adam"}})
    execute(cfg.runs()[0])
    print("torch._dynamo" in sys.modules)
    import torch
    opt = torch.optim.Adam(torch.nn.Linear(1, 1).parameters())  # torch's own
    opt.step()
    print("torch._dynamo" in sys.modules)
""")


def test_a_run_does_not_import_the_compiler():
    """A whole run in a fresh process: no ``torch._dynamo``; torch's own optimizer then
    imports it (the check can see the import)."""
    out = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True"]


def test_after_the_compiler_is_imported_torchs_wrappers_are_used():
    """Once ``torch._dynamo`` is imported (a user's torch.compile), the marked methods'
    cached version is torch's disabled one, and steps still match torch's."""
    code = textwrap.dedent("""
        import torch
        from llray import optimizers
        from torch.optim.optimizer import Optimizer
        m = torch.nn.Linear(2, 1)
        opt = optimizers.Adam(m.parameters(), lr=0.1)
        deferred = getattr(Optimizer.zero_grad.__wrapped__, "__dynamo_disable")
        import torch._dynamo
        opt.zero_grad()
        m(torch.ones(1, 2)).sum().backward()
        opt.step()
        now = getattr(Optimizer.zero_grad.__wrapped__, "__dynamo_disable")
        print(deferred is not now, getattr(now, "_torchdynamo_disable", False))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True"]
