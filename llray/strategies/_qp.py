"""Gradient projection for GEM and A-GEM: flat gradients, the two projections.

**A-GEM** (Chaudhry, Ranzato, Rohrbach & Elhoseiny 2019, "Efficient Lifelong Learning
with A-GEM", ICLR, Eq. 11) projects the current gradient ``g`` onto the half-space of
one reference gradient ``g_ref`` when they disagree::

    g̃ = g − (gᵀg_ref / g_refᵀg_ref) g_ref      if gᵀg_ref < 0, else g̃ = g

**GEM** (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning",
NeurIPS, Eqs. 10-13) asks for ``⟨g̃, g_k⟩ ≥ 0`` for the gradient ``g_k`` of every earlier
task's memory (the rows of ``G`` ``[K, P]``). The primal ``min ½‖g̃ − g‖² s.t. G g̃ ≥ 0``
has ``P`` variables; its dual has only ``K``::

    min_v ½ vᵀ G Gᵀ v + gᵀ Gᵀ v   s.t. v ≥ γ,      g̃ = Gᵀ v + g

where the margin ``γ ≥ 0`` biases the update towards the memories (the paper's
Section 3; the reference code puts it in the bound ``v ≥ γ``; with ``γ = 0`` ``g̃`` is the
closest vector satisfying the constraints). The dual's KKT conditions give
``G g̃ = G Gᵀ v + G g ≥ 0`` for every ``γ``. :func:`solve_gem_dual` solves it exactly
with non-negative least squares (Lawson & Hanson's active-set method,
``scipy.optimize.nnls``) after writing ``G Gᵀ = U S Uᵀ``: with ``v = u + γ`` and
``A = S^½ Uᵀ`` the objective is ``½‖A u − b‖²`` up to a constant, where
``b = −S^−½ Uᵀ (G g + γ G Gᵀ 1)`` on the non-zero eigenvalues (``G g`` lies in the range
of ``G Gᵀ``, so singular ``G Gᵀ``, e.g. two equal memory gradients, needs no jitter).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from llray.strategies.base import Context

# (model, params, g [P] of the current loss, ctx) -> the gradient to apply, or None to keep g
Projector = Callable[[nn.Module, list[nn.Parameter], Tensor, Context], Tensor | None]


def grad_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that are trained: those with ``requires_grad``."""
    return [p for p in model.parameters() if p.requires_grad]


def flatten(grads: list[Tensor | None], params: list[nn.Parameter]) -> Tensor:
    """One ``[P]`` vector from per-parameter gradients (``None`` counts as zeros)."""
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def assign_grad(params: list[nn.Parameter], flat: Tensor) -> None:
    """Write a flat ``[P]`` gradient into the parameters' ``.grad``."""
    i = 0
    for p in params:
        n = p.numel()
        g = flat[i : i + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        i += n


def agem_project(g: Tensor, g_ref: Tensor) -> Tensor:
    """A-GEM's projection of ``g`` ``[P]`` given ``g_ref`` ``[P]`` (returns ``g`` itself
    when ``gᵀg_ref ≥ 0``)."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g
    return g - (dot / torch.dot(g_ref, g_ref).clamp_min(1e-30)) * g_ref


def solve_gem_dual(gram: np.ndarray, q: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The dual variables ``v`` ``[K]`` of GEM's QP (module docstring).

    Args:
        gram: ``G Gᵀ`` ``[K, K]`` (float64, symmetric positive semi-definite).
        q: ``G g`` ``[K]``.
        margin: the lower bound ``γ`` of ``v``.

    Example:
        >>> solve_gem_dual(np.array([[1.0]]), np.array([-2.0]))
        array([2.])
    """
    from scipy.optimize import nnls

    gram = 0.5 * (gram + gram.T)
    s, U = np.linalg.eigh(gram)  # gram = U diag(s) Uᵀ
    keep = s > s.max(initial=0.0) * 1e-12
    s, U = s[keep], U[:, keep]
    if len(s) == 0:  # every memory gradient is zero: nothing constrains g
        return np.full(len(q), margin)
    q_shift = q + margin * gram.sum(1)  # the linear term after v = u + γ
    A = np.sqrt(s)[:, None] * U.T  # [r, K], Aᵀ A = gram
    b = -(U.T @ q_shift) / np.sqrt(s)  # [r]
    u, _ = nnls(A, b, maxiter=50 * len(q) + 100)
    return u + margin


def gem_project(g: Tensor, G: Tensor, margin: float = 0.0) -> Tensor:
    """GEM's projection of ``g`` ``[P]`` given the memory gradients ``G`` ``[K, P]``.

    ``g`` is returned unchanged when no constraint is violated (``G g ≥ 0``), as in the
    paper; otherwise ``g̃ = Gᵀ v + g`` with ``v`` from :func:`solve_gem_dual`, computed in
    float64.
    """
    dots = G @ g  # [K]
    if bool((dots >= 0).all()):
        return g
    G64, g64 = G.double(), g.double()
    v = solve_gem_dual((G64 @ G64.T).cpu().numpy(), (G64 @ g64).cpu().numpy(), margin)
    v = torch.from_numpy(v).to(G64)
    return (G64.T @ v + g64).to(g.dtype)


def apply_projection(
    project: Projector, model: nn.Module, params: list[nn.Parameter], ctx: Context
) -> None:
    """Flatten the step's gradient to ``g``, and write back ``project(model, params, g,
    ctx)`` when it returns a new gradient (for :meth:`Strategy.before_step`)."""
    g = flatten([p.grad for p in params], params)  # [P]
    g_new = project(model, params, g, ctx)
    if g_new is not None:
        assign_grad(params, g_new)
