"""SGD and Adam over a pack's parameters, with per-run hyperparameters as tensors.

Every parameter is ``[K, *shape]``; ``lr``, ``momentum``, ``weight_decay`` are ``[K]``
tensors (one value per run) and each run's slice follows exactly the update rule of
``torch.optim.SGD`` (dampening 0, no Nesterov) or ``torch.optim.Adam`` (no AMSGrad), so a
pack of one run takes the same steps as the plain optimizer, up to rounding.

``step(mask)`` updates only the runs where ``mask [K]`` is True (a run whose epoch has
fewer batches than its pack-mates', or that diverged): a masked run's parameters and
optimizer state, step count included, are left as they were. The mask is a device
tensor, so a step never waits for the host.

Example:
    >>> p = torch.nn.Parameter(torch.ones(2, 3))
    >>> opt = PackedSGD([p], lr=torch.tensor([0.1, 0.0]))
    >>> p.grad = torch.ones(2, 3)
    >>> opt.step()
    >>> [round(v, 6) for v in p[:, 0].tolist()]  # run 0 stepped, run 1 (lr 0) did not
    [0.9, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from llray.strategies.base import TrainConfig


def _per_run(v: Tensor, like: Tensor) -> Tensor:
    """``[K]`` -> ``[K, 1, ...]`` broadcastable against ``like`` ``[K, *shape]``."""
    return v.to(like).view(-1, *([1] * (like.dim() - 1)))


def _where(mask: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    return new if mask is None else torch.where(_per_run(mask, old).bool(), new, old)


class PackedOptimizer:
    """Base: holds the parameters and, per parameter, its runs' hyperparameters shaped
    ``[K, 1, ...]`` (built once, so a step launches no reshapes)."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)

    def shaped(self, v: Tensor | None) -> list[Tensor | None]:
        """``v [K]`` as ``[K, 1, ...]`` for each parameter (None stays None)."""
        return [None if v is None else _per_run(v, p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, mask: Tensor | None = None) -> None:
        self._begin(mask)
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._update(i, p, p.grad, mask)

    def _begin(self, mask: Tensor | None) -> None:
        """Per-step work shared by all parameters."""

    def _update(self, i: int, p: Tensor, g: Tensor, mask: Tensor | None) -> None:
        raise NotImplementedError


class PackedSGD(PackedOptimizer):
    """``torch.optim.SGD`` per run: ``g += wd θ; b = μ b + g; θ -= lr b`` (``b = g`` when μ = 0)."""

    def __init__(self, params, lr: Tensor, momentum: Tensor | None = None,
                 weight_decay: Tensor | None = None) -> None:
        super().__init__(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self._lr, self._mom, self._wd = self.shaped(lr), self.shaped(momentum), \
            self.shaped(weight_decay)
        self.bufs: list[Tensor | None] = [None] * len(self.params)

    def _update(self, i, p, g, mask):
        if self._wd[i] is not None:
            g = g.addcmul(p, self._wd[i])
        if self._mom[i] is not None:
            buf = self.bufs[i]
            # the first step's buffer is g itself (torch clones it): μ·0 + g == g exactly
            new = g.clone() if buf is None else buf * self._mom[i] + g
            self.bufs[i] = new if buf is None or mask is None else _where(mask, new, buf)
            g = new
        if mask is None:
            p.sub_(self._lr[i] * g)
        else:
            p.copy_(_where(mask, p - self._lr[i] * g, p))


class PackedAdam(PackedOptimizer):
    """``torch.optim.Adam`` per run (betas, eps shared; lr and weight decay per run)."""

    def __init__(self, params, lr: Tensor, weight_decay: Tensor | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self._wd = self.shaped(weight_decay)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = torch.zeros(len(lr), dtype=torch.float64, device=lr.device)  # [K] steps

    def _begin(self, mask):
        b1, b2 = self.betas
        self.t = self.t + (1.0 if mask is None else mask.to(torch.float64))
        bc1 = 1 - b1 ** self.t  # [K] in float64, as torch computes it in Python floats
        step_size = (self.lr.double() / bc1).float()
        bc2_sqrt = (1 - b2 ** self.t).sqrt().float()
        self._step = self.shaped(step_size)
        self._bc2 = self.shaped(bc2_sqrt)

    def _update(self, i, p, g, mask):
        b1, b2 = self.betas
        if self._wd[i] is not None:
            g = g.addcmul(p, self._wd[i])
        m = self.m[i].lerp(g, 1 - b1)
        v = (self.v[i] * b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / self._bc2[i]).add_(self.eps)
        if mask is None:
            self.m[i], self.v[i] = m, v
            p.sub_(self._step[i] * (m / denom))
            return
        self.m[i], self.v[i] = _where(mask, m, self.m[i]), _where(mask, v, self.v[i])
        p.copy_(_where(mask, p - self._step[i] * (m / denom), p))


def packed_optimizer(params: Sequence[nn.Parameter], trains: Sequence[TrainConfig],
                     device: torch.device) -> PackedOptimizer:
    """The pack's optimizer from each run's ``train`` settings (one optimizer kind)."""
    kinds = {t.optimizer for t in trains}
    assert len(kinds) == 1, f"one optimizer kind per pack, got {kinds}"
    vec = lambda xs: torch.tensor(xs, dtype=torch.float32, device=device)  # noqa: E731
    lr = vec([t.lr for t in trains])
    wd = vec([t.weight_decay for t in trains]) if any(t.weight_decay for t in trains) else None
    if kinds == {"adam"}:
        return PackedAdam(params, lr, wd)
    mom = vec([t.momentum for t in trains]) if any(t.momentum for t in trains) else None
    return PackedSGD(params, lr, mom, wd)
