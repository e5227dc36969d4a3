"""Batched models: K runs' MLPs or ConvNets as one module with a leading run dimension.

A :class:`PackedModel` holds, for every parameter of the plain model (same names as
:func:`llray.models.build_model`'s), one tensor ``[K, *shape]``; run ``k``'s weights are
slice ``k``. ``forward(x [K, B, *input_shape]) -> logits [K, B, C]``: run ``k`` sees only
its own inputs ``x[k]`` and its own weights, so the runs' computations are disjoint and
the gradient of a sum of per-run losses gives each run exactly its own gradient.

Kernels (chosen by ``benchmarks/bench_packs.py``, numbers in docs/cluster.md): the MLP's
layers are ``torch.baddbmm`` (one batched matmul per layer for the whole pack), the
ConvNet's convolutions one grouped ``conv2d`` (``groups=K``: the runs' channels side by
side) and its head a ``baddbmm``. ``torch.func.stack_module_state`` + ``vmap`` computes
the same, measured slower on CPU for these small models.

Example:
    >>> from llray.models import ModelConfig, build_model
    >>> ms = [build_model(ModelConfig(hidden=(8,)), (4,), 3, seed=s) for s in (0, 1)]
    >>> pm = PackedModel.from_models(ModelConfig(hidden=(8,)), ms)
    >>> x = torch.rand(2, 5, 4)
    >>> bool(torch.allclose(pm(x)[1], ms[1](x[1]), atol=1e-6))
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray.models import ModelConfig


class _BatchedLinear(torch.autograd.Function):
    """``y = x Wᵀ + b`` per run (``x [K, B, in]``, ``W [K, out, in]``, ``b [K, out]``) with
    the weight's gradient computed in the weight's own layout: ``gᵀ x`` is ``[K, out, in]``.
    (Autograd of ``baddbmm(b, x, W.transpose(1, 2))`` computes ``xᵀ g``, the transposed
    ``[K, in, out]``, and then copies it into ``W``'s layout: a strided copy of every
    weight per step that cost a quarter of a pack step.)"""

    # forward takes ctx (no separate setup_context): ``apply`` then skips binding the
    # arguments through ``inspect.signature``, which cost more than a small layer
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        gx = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        gb = g.sum(1) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


def batched_linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``[K, B, in] -> [K, B, out]``: each run's ``x[k] @ w[k].T + b[k]``."""
    return _BatchedLinear.apply(x, w, b)


class PackedModel(nn.Module):
    """K models of one architecture (``mlp`` or ``convnet``) stacked along dim 0.

    Attributes:
        names: the plain model's parameter names, in its ``named_parameters`` order.
        params: ``params[i]`` is ``[K, *shape of names[i]]``.
    """

    def __init__(self, cfg: ModelConfig, names: list[str], params: list[Tensor]) -> None:
        super().__init__()
        self.cfg = cfg
        self.names = list(names)
        self.params = nn.ParameterList([nn.Parameter(p) for p in params])
        self.K = int(params[0].shape[0])

    @classmethod
    def from_models(cls, cfg: ModelConfig, models: Sequence[nn.Module]) -> "PackedModel":
        """Stack the parameters of ``models`` (built by ``build_model(cfg, ...)``)."""
        named = [dict(m.named_parameters()) for m in models]
        names = list(named[0])
        stacked = [torch.stack([d[n].detach() for d in named]).clone() for n in names]
        return cls(cfg, names, stacked)

    # -- one run's weights ---------------------------------------------------------------
    @torch.no_grad()
    def copy_to(self, k: int, model: nn.Module) -> None:
        """Write run ``k``'s weights into the plain ``model``."""
        own = dict(model.named_parameters())
        for n, p in zip(self.names, self.params):
            own[n].copy_(p[k])

    @torch.no_grad()
    def copy_from(self, k: int, model: nn.Module) -> None:
        """Set run ``k``'s weights from the plain ``model``."""
        own = dict(model.named_parameters())
        for n, p in zip(self.names, self.params):
            p[k].copy_(own[n])

    def named(self) -> dict[str, Tensor]:
        """``{plain name: [K, *shape]}`` parameters."""
        return dict(zip(self.names, self.params))

    # -- forward ------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:  # [K, B, *in] -> [K, B, C]
        if self.cfg.name == "mlp":
            return self._mlp(x.reshape(x.shape[0], x.shape[1], -1))
        return self._convnet(x)

    def forward_shared(self, x: Tensor) -> Tensor:  # [B, *in] (every run) -> [K, B, C]
        """Every run on the same inputs (evaluation). For the MLP the first layer is one
        matmul of the shared inputs with all runs' weights side by side (``[B, in] @
        [in, K·out]``) instead of a batched matmul over K copies of the inputs; without
        autograd the ReLUs run in place."""
        if self.cfg.name != "mlp":
            return self(x.unsqueeze(0).expand(self.K, *x.shape))
        ps = list(self.params)
        B = x.shape[0]
        h = F.linear(x.reshape(B, -1), ps[0].reshape(-1, ps[0].shape[2]), ps[1].reshape(-1))
        h = h.view(B, self.K, -1).transpose(0, 1)  # [K, B, out] (a view, no copy)
        relu = torch.relu if torch.is_grad_enabled() else torch.relu_
        for i in range(2, len(ps), 2):
            h = batched_linear(relu(h), ps[i], ps[i + 1])
        return h

    def _mlp(self, h: Tensor) -> Tensor:
        ps = list(self.params)
        layers = [(ps[i], ps[i + 1]) for i in range(0, len(ps), 2)]
        for i, (w, b) in enumerate(layers):
            h = batched_linear(h, w, b)  # [K, B, out]
            if i < len(layers) - 1:
                h = torch.relu(h)
        return h

    def _convnet(self, x: Tensor) -> Tensor:
        K, B = x.shape[:2]
        h = x.transpose(0, 1).reshape(B, K * x.shape[2], *x.shape[3:])  # [B, K*C, H, W]
        ps = list(self.params)
        pad = self.cfg.kernel_size // 2
        for i in range(0, len(ps) - 2, 2):
            w, b = ps[i], ps[i + 1]  # [K, Co, Ci, k, k], [K, Co]
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), padding=pad, groups=K)
            h = F.max_pool2d(torch.relu(h), 2)
        h = h.reshape(B, K, -1).transpose(0, 1)  # [K, B, c*h*w], each run's flatten order
        w, b = ps[-2], ps[-1]
        return batched_linear(h, w, b)
