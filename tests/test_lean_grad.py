"""torch.func's backward without the compiler import (:mod:`llray.lean_grad`).

Each check runs in a fresh process: the point is what a process imports, and the lean
helper hands over to torch's once anything (another test) has imported ``torch._dynamo``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _run(code: str) -> object:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


GRADS = """
    import json, sys
    import torch
    from torch import nn
    from llray.strategies._fisher import fisher_diagonal, per_sample_grads

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.randn(12, 1, 10), torch.randint(3, (12,))
    mask = lambda out, t: out.masked_fill(torch.arange(3) == 2, -1e9) if t else out

    def everything():
        out = {}
        for kind in ("exact", "empirical", "sampled"):
            gen = torch.Generator().manual_seed(1)
            for fast in (True, False):
                F = fisher_diagonal(model, x, y, torch.arange(12) % 2, kind=kind, mask=mask,
                                    generator=gen, fast=fast, batch_size=5)
                out.update({f"{kind}{fast}{n}": v for n, v in F.items()})
        out.update({f"psg{n}": v for n, v in per_sample_grads(model, x, y).items()})
        # the edge cases of the helper itself: unused inputs, outputs without grad
        w = torch.linspace(-1, 2, 3, requires_grad=True)
        unused = torch.ones(2, requires_grad=True)
        g = torch.func.grad(lambda w, u: (w ** 2).sum())(w, unused)
        out["grad_w"] = g
        (o, vjp) = torch.func.vjp(lambda w, u: (w * 2, torch.zeros(2)), w, unused)
        out["vjp"] = torch.cat(vjp((torch.ones(3), torch.ones(2))))
        return out

    lean = everything()
    dynamo_after_lean = "torch._dynamo" in sys.modules
    import torch._dynamo  # from now on torch's own helper runs
    torchs = everything()
    same = all(torch.equal(lean[k], torchs[k]) for k in lean) and lean.keys() == torchs.keys()
    print(json.dumps([dynamo_after_lean, same, len(lean)]))
"""


def test_fisher_and_per_sample_grads_are_torchs_bit_for_bit_without_the_compiler():
    """Every Fisher kind, both paths, a mask, per-sample ids and chunks, the general
    per-sample gradients and the helper's edge cases: the same tensors as torch's own
    helper gives once the compiler is imported, and no compiler import before that."""
    dynamo_imported, same, n = _run(GRADS)
    assert dynamo_imported is False
    assert same is True
    assert n > 20


def test_torch_func_strategies_runs_do_not_import_the_compiler():
    """Whole EWC, MAS and GEM runs in a fresh process leave ``torch._dynamo`` out; the
    same transform without :func:`llray.lean_grad.install` imports it (the check sees it)."""
    code = """
        import json, sys
        from llray.config import parse_config
        from llray.experiment import execute
        cfg = parse_config({"experiment": "x", "strategies": ["ewc", "mas", "gem"],
                            "stream": {"num_tasks": 2, "kind": "permuted",
                                       "max_train_per_task": 120},
                            "train": {"epochs": 1}})
        runs = cfg.runs()
        for run in runs:
            execute(run)
        after_runs = "torch._dynamo" in sys.modules
        from torch._functorch import eager_transforms
        import torch
        eager_transforms._autograd_grad = eager_transforms._autograd_grad.__wrapped__
        torch.func.grad(lambda w: (w ** 2).sum())(torch.ones(2))
        print(json.dumps([sorted(r.strategy.name for r in runs), after_runs,
                          "torch._dynamo" in sys.modules]))
    """
    assert _run(code) == [["ewc", "gem", "mas"], False, True]


def test_install_keeps_torchs_helper_once_the_compiler_is_imported():
    code = """
        import json
        import torch._dynamo
        from torch._functorch import eager_transforms
        from llray import lean_grad
        before = eager_transforms._autograd_grad
        print(json.dumps([lean_grad.install(), eager_transforms._autograd_grad is before]))
    """
    assert _run(code) == [False, True]
