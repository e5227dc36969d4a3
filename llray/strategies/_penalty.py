"""The quadratic anchor penalty shared by importance-weighted regularisers (SI, MAS)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def quadratic_penalty(
    model: nn.Module, importance: dict[str, Tensor], anchor: dict[str, Tensor], scale: float
) -> Tensor:
    """``scale · Σ_k Ω_k (θ_k − θ*_k)²`` over the parameters named in ``importance``.

    Example:
        >>> m = nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = m.weight.fill_(3.0)
        >>> float(quadratic_penalty(m, {"weight": torch.tensor([[2.0]])},
        ...                         {"weight": torch.tensor([[1.0]])}, 0.5))
        4.0
    """
    terms = [
        (importance[n] * (p - anchor[n]).square()).sum()
        for n, p in model.named_parameters()
        if n in importance
    ]
    if not terms:
        return next(model.parameters()).new_zeros(())
    return scale * torch.stack(terms).sum()
