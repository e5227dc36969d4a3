"""Diagonal Fisher: ``torch.func`` (vectorised) vs a per-sample Python loop.

1000 training samples of permuted digits, the default MLP (64-100-100-10), one CPU
thread. The loop calls ``torch.autograd.grad`` once per sample (``empirical``) or once
per sample and class, weighted by ``p_c`` (``exact``); llray's
:func:`~llray.strategies._fisher.fisher_diagonal` runs on its default ``nn.Linear``
fast path and, for comparison, on the general per-sample path (``fast=False``). All
results agree to float32 rounding (checked below). Target: >= 10x for both kinds.
Methods are interleaved and the median of several repeats is reported, since this
machine is noisy.

Run: ``python benchmarks/bench_fisher.py``
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llray.data import StreamConfig, make_stream
from llray.models import ModelConfig, build_model
from llray.strategies._fisher import fisher_diagonal

N, REPEATS = 1000, 5


def loop_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str) -> dict:
    """The per-sample reference: one autograd.grad call per sample (and class)."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        lp = F.log_softmax(model(x[i : i + 1]), dim=-1)[0]  # [C]
        if kind == "exact":
            p = lp.detach().exp()
            pairs = [(c, p[c]) for c in range(len(lp))]
        else:
            pairs = [(int(y[i]), 1.0)]
        for c, w in pairs:
            g = torch.autograd.grad(lp[c], list(params.values()), retain_graph=True)
            for n, gi in zip(params, g):
                total[n] += w * gi.square()
    return {n: v / len(x) for n, v in total.items()}


def timed(fn: Callable[[], dict]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    torch.set_num_threads(1)
    stream = make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=2, seed=0))
    x, y = stream.tasks[1].x_train[:N], stream.tasks[1].y_train[:N]
    model = build_model(ModelConfig(hidden=(100, 100)), stream.input_shape, 10, seed=0)
    print(f"Fisher of {len(x)} samples, MLP 64-100-100-10 "
          f"({sum(p.numel() for p in model.parameters())} parameters), 1 thread")
    print(f"{'kind':>10} {'method':>22} {'median ms':>10} {'speedup':>8} {'max |diff|':>11}")
    for kind in ("empirical", "exact"):
        methods = {
            "per-sample loop": lambda: loop_fisher(model, x, y, kind),
            "torch.func (default)": lambda: fisher_diagonal(model, x, y, kind=kind),
            "torch.func fast=False": lambda: fisher_diagonal(
                model, x, y, kind=kind, batch_size=64 if kind == "exact" else 256, fast=False
            ),
        }
        results = {name: fn() for name, fn in methods.items()}  # warm up
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(REPEATS):
            for name, fn in methods.items():
                dt, results[name] = timed(fn)
                times[name].append(dt)
        ref = results["per-sample loop"]
        base = statistics.median(times["per-sample loop"])
        for name in methods:
            med = statistics.median(times[name])
            diff = max(float((results[name][n] - ref[n]).abs().max()) for n in ref)
            print(f"{kind:>10} {name:>22} {med * 1000:10.1f} {base / med:7.1f}x {diff:11.2e}")
    print("target: torch.func (default) >= 10x the per-sample loop for both kinds")


if __name__ == "__main__":
    main()
