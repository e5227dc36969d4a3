"""The diagonal Fisher of every run of an MLP pack at once, by explicit back-propagation.

A pack's EWC runs each need, after every task, the diagonal Fisher of their own MLP on
their own task (:func:`llray.strategies._fisher.fisher_diagonal`, which the runs alone
compute with ``vmap`` over samples of ``jacrev``/``grad``, run after run). For an MLP
(``Linear -> ReLU`` layers, then a linear head) the per-sample weight gradients are
outer products ``δ aᵀ`` of the gradient ``δ`` at a layer's output and its input ``a``
(Goodfellow 2015, "Efficient per-example gradient computations"), so

    F_W = 1/N Σ_n Σ_c w_nc (δ_nc aᵀ_n)² = 1/N (Σ_c w_nc δ_nc²)ᵀ a_n²
    F_b = 1/N Σ_n Σ_c w_nc δ_nc²

exactly as the single-run fast path computes it. Here ``δ`` is back-propagated by hand
for the whole pack with batched matmuls (``[K, samples·classes, out] @ [K, out, in]``):
at the head ``δ_c = (e_c − p) ⊙ m`` (``m``: the classes the task-IL mask keeps; masked
logits get no gradient), then ``δ ← (δ W) ⊙ 1[z > 0]`` through each hidden layer.

Kinds (as in :mod:`llray.strategies._fisher`): ``"exact"`` weighs every class ``c`` by
the model's probability ``w_nc = p_c(x_n)``; ``"empirical"`` takes the true label with
weight 1; ``"sampled"`` one label drawn from ``p(·|x_n)``, drawn by the caller from each
run's own generator (:func:`sample_labels` of :func:`masked_logits`) in the chunks the
run alone draws them in.

Example:
    >>> from llray.models import ModelConfig, build_model
    >>> from llray.packs.models import PackedModel
    >>> ms = [build_model(ModelConfig(hidden=(8,)), (4,), 3, seed=s) for s in (0, 1)]
    >>> pm = PackedModel.from_models(ModelConfig(hidden=(8,)), ms)
    >>> F = pack_fisher(pm, torch.rand(2, 5, 4), torch.zeros(2, 5, dtype=torch.long),
    ...                 torch.zeros(2, 5, dtype=torch.long), torch.tensor([5, 3]))
    >>> [tuple(f.shape) for f in F]
    [(2, 8, 4), (2, 8), (2, 3, 8), (2, 3)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from llray.packs.models import PackedModel
from llray.strategies.base import MASKED


def _forward(pm: PackedModel, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Layer inputs ``a_l [K, n, in_l]``, hidden pre-activations ``z_l`` and logits."""
    ps = list(pm.params)
    h = x.reshape(x.shape[0], x.shape[1], -1)
    inputs, pre = [], []
    for i in range(0, len(ps), 2):
        inputs.append(h)
        z = torch.baddbmm(ps[i + 1].unsqueeze(1), h, ps[i].transpose(1, 2))
        if i + 2 < len(ps):
            pre.append(z)
            h = torch.relu(z)
    return inputs, pre, z


@torch.no_grad()
def masked_logits(pm: PackedModel, x: Tensor, keep: Tensor | None) -> Tensor:
    """Logits ``[K, n, C]`` with the classes outside ``keep [K, n, C]`` (task-IL) masked."""
    out = pm(x)
    return out if keep is None else out.masked_fill(~keep, MASKED)


def sample_labels(logits: Tensor, generator: torch.Generator) -> Tensor:
    """One label per row of one run's masked ``logits [n, C]``, drawn as the run alone
    draws them (softmax in float64 on the CPU, ``torch.multinomial``)."""
    p = F.softmax(logits.double(), dim=-1).cpu()
    return torch.multinomial(p, 1, generator=generator).squeeze(1).to(logits.device)


@torch.no_grad()
def pack_fisher(pm: PackedModel, x: Tensor, y: Tensor, t: Tensor, n: Tensor,
                kind: str = "exact", class_mask: Tensor | None = None,
                labels: Tensor | None = None, chunk: int = 128) -> list[Tensor]:
    """Diagonal Fisher of every run of the MLP pack ``pm``: ``[K, *shape]`` per parameter
    (in ``pm.params`` order), each run's over its first ``n[k]`` samples.

    Args:
        pm: an MLP pack.
        x: ``[K, N, *in]`` each run's samples (zero-padded past ``n[k]``).
        y: ``[K, N]`` labels (``"empirical"``).
        t: ``[K, N]`` task ids (for ``class_mask``).
        n: ``[K]`` real samples per run (a run with 0 gets zeros).
        kind: ``"exact"``, ``"empirical"`` or ``"sampled"``.
        class_mask: ``[T, C]`` task-IL mask, or None.
        labels: ``[K, N]`` sampled labels (``"sampled"``; see :func:`sample_labels`).
        chunk: samples per run at once (memory: ``K·chunk·C·width`` floats).
    """
    assert pm.cfg.name == "mlp", "pack_fisher: MLP packs only"
    K, N = y.shape
    ps = list(pm.params)
    total = [torch.zeros_like(p) for p in ps]
    real = torch.arange(N, device=y.device).unsqueeze(0) < n.to(y.device).unsqueeze(1)  # [K, N]
    for i in range(0, N, chunk):
        sl = slice(i, i + chunk)
        keep = None if class_mask is None else class_mask[t[:, sl]]  # [K, b, C]
        inputs, pre, logits = _forward(pm, x[:, sl])
        if keep is not None:
            logits = logits.masked_fill(~keep, MASKED)
        p = F.log_softmax(logits, dim=-1).exp()  # [K, b, C]
        b, C = p.shape[1], p.shape[2]
        on = real[:, sl].to(p.dtype).unsqueeze(2)  # [K, b, 1]: padding gets weight 0
        if kind == "exact":  # every class c, its row scaled by √(w_nc) = √p_c
            delta = torch.eye(C, dtype=p.dtype, device=p.device) - p.unsqueeze(2)  # [K,b,c,C]
            delta *= (p * on).sqrt().unsqueeze(3)
        else:  # one label, weight 1
            lab = y[:, sl] if kind == "empirical" else labels[:, sl]
            delta = ((F.one_hot(lab, C).to(p.dtype) - p) * on).unsqueeze(2)  # [K, b, 1, C]
        if keep is not None:
            delta *= keep.unsqueeze(2)
        c = delta.shape[2]
        for layer in range(len(inputs) - 1, -1, -1):
            below = None
            if layer > 0:  # δ through the layer's weight (the ReLU below comes after)
                below = torch.bmm(delta.reshape(K, b * c, -1), ps[2 * layer]).view(K, b, c, -1)
            s = delta.square_().sum(2)  # [K, b, out]: Σ_c w_nc δ_nc² (δ not needed again)
            total[2 * layer].baddbmm_(s.transpose(1, 2), inputs[layer].square())
            total[2 * layer + 1] += s.sum(1)
            if below is not None:
                delta = below.mul_((pre[layer - 1] > 0).to(p.dtype).unsqueeze(2))
    scale = 1.0 / n.clamp_min(1).to(total[0].dtype).to(total[0].device)
    return [f * scale.view(-1, *([1] * (f.dim() - 1))) for f in total]


def stack_sets(parts: Sequence[tuple[Tensor, Tensor]], K: int, runs: Sequence[int]
               ) -> tuple[Tensor, Tensor, Tensor]:
    """``(x [K, N, *in], y [K, N], n [K])`` from the runs' ``(x, y)`` (others empty)."""
    from llray.packs.run import pad_stack

    by_run = dict(zip(runs, parts))
    x0, y0 = parts[0]
    xs = [by_run[k][0] if k in by_run else x0[:0] for k in range(K)]
    ys = [by_run[k][1] if k in by_run else y0[:0] for k in range(K)]
    N = max(len(v) for v in ys)
    n = torch.tensor([len(v) for v in ys])
    return pad_stack(xs, N), pad_stack(ys, N), n
