"""SGD and Adam over a pack's parameters, with per-run hyperparameters as tensors.

Every parameter is ``[K, *shape]``; ``lr``, ``momentum``, ``weight_decay`` are ``[K]``
tensors (one value per run) and each run's slice follows exactly the update rule of
``torch.optim.SGD`` (dampening 0, no Nesterov) or ``torch.optim.Adam`` (no AMSGrad), so a
pack of one run takes the same steps as the plain optimizer, up to rounding.

``step(mask)`` updates only the runs where ``mask [K]`` is True (a run whose epoch has
fewer batches than its pack-mates', or that diverged): a masked run's parameters and
optimizer state, step count included, are left as they were. The training loop passes
the mask as a host sequence (which runs step is known from the batch sizes alone), so
a step never waits for the device.

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
    def step(self, mask: Tensor | Sequence[bool] | None = None) -> None:
        """One step of every run, or of the runs where ``mask [K]`` is True (a device
        tensor, or a host sequence known without asking the device)."""
        if mask is not None and not isinstance(mask, Tensor):
            if all(mask):
                mask = None
            else:
                mask = torch.tensor(list(mask), dtype=torch.bool).to(self.params[0].device)
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
    """``torch.optim.Adam`` per run (betas, eps shared; lr and weight decay per run).

    The update is PyTorch's fused Adam kernel (``torch._fused_adam_``, the kernel of
    ``torch.optim.Adam(fused=True)``): one pass over each run's parameter, gradient and
    moments, instead of a dozen element-wise ops with temporaries over the whole pack
    (which cost more than the pack's forward and backward). The kernel takes a list of
    tensors, so it gets each run's slice ``p[k]`` (contiguous views); lr and weight decay
    are per call, so the runs are grouped by ``(lr, weight decay)`` once (a grid of seeds
    is one group, one call per step). Each run has its own step count (a float32 view of
    ``t [K]``), so a masked run's bias correction stays its own; a masked run is left out
    of the call. On a GPU the step counts stay on the device (the CUDA kernel reads them
    there), so a step does not wait for the host.
    """

    def __init__(self, params, lr: Tensor, weight_decay: Tensor | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        K = len(lr)
        self.t = torch.zeros(K, dtype=torch.float32, device=lr.device)  # [K] steps
        # per-run hyperparameters on the host, read once (the kernel takes Python floats)
        wd = [0.0] * K if weight_decay is None else weight_decay.tolist()
        self._groups: dict[tuple[float, float], list[int]] = {}
        for k, key in enumerate(zip(lr.tolist(), wd)):
            self._groups.setdefault(key, []).append(k)
        # each run's slice of every parameter, moment and step count (views, built once)
        self._p = [p.detach().unbind(0) for p in self.params]
        self._m = [m.unbind(0) for m in self.m]
        self._v = [v.unbind(0) for v in self.v]
        self._t = self.t.unbind(0)
        self._plans: dict[tuple[bool, ...] | None, list] = {}

    def _plan(self, active: tuple[bool, ...] | None) -> list:
        """Per (lr, weight decay) group: its runs that step and their slices."""
        if active not in self._plans:
            plan = []
            for (lr, wd), runs in self._groups.items():
                ks = [k for k in runs if active is None or active[k]]
                if ks:
                    lists = [[t[k] for t in ts for k in ks] for ts in (self._p, self._m, self._v)]
                    plan.append((lr, wd, ks, *lists, [self._t[k] for _ in self.params for k in ks]))
            self._plans[active] = plan
        return self._plans[active]

    @torch.no_grad()
    def step(self, mask: Tensor | Sequence[bool] | None = None) -> None:
        """One Adam step of every run, or of the runs where ``mask`` is True (a host
        sequence; a device tensor is read back once, which waits for the device)."""
        active = None if mask is None else tuple(bool(b) for b in (
            mask.tolist() if isinstance(mask, Tensor) else mask))
        if active is not None and all(active):
            active = None
        plan = self._plan(active)
        if not plan:
            return
        if active is None:
            self.t.add_(1.0)
        else:
            self.t.add_(torch.tensor(active, dtype=self.t.dtype).to(self.t.device))
        grads = [p.grad.unbind(0) if p.grad is not None else None for p in self.params]
        b1, b2 = self.betas
        for lr, wd, ks, P, M, V, S in plan:
            present = [i for i, g in enumerate(grads) if g is not None]
            if len(present) < len(self.params):  # a parameter without gradient: skip it
                n = len(ks)
                sel = [i * n + j for i in present for j in range(n)]
                P, M, V, S = ([L[j] for j in sel] for L in (P, M, V, S))
            G = [grads[i][k] for i in present for k in ks]
            torch._fused_adam_(P, G, M, V, [], S, lr=lr, beta1=b1, beta2=b2,
                               weight_decay=wd, eps=self.eps, amsgrad=False,
                               maximize=False)


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
