"""The diagonal of the Fisher information, computed exactly and fast with ``torch.func``.

For a classifier ``p_θ(y|x)`` and samples ``x_1..x_N`` the diagonal Fisher is::

    F_i = 1/N Σ_n E_{y ~ q_n} [ (∂ log p_θ(y | x_n) / ∂θ_i)² ]

and the three ``kind`` values differ only in the distribution ``q_n`` of ``y``:

- ``"exact"``: the model's own predictive distribution, ``q_n = p_θ(·|x_n)``, computed
  in closed form as ``Σ_c p_c(x_n) g_c(x_n)²`` (Kirkpatrick et al. 2017, "Overcoming
  catastrophic forgetting in neural networks", PNAS; Martens 2020, "New insights and
  perspectives on the natural gradient method", JMLR). This is the true Fisher.
- ``"empirical"``: the dataset's label, ``q_n = δ(y_n)`` (the "empirical Fisher", a
  different matrix; Kunstner et al. 2019, "Limitations of the empirical Fisher
  approximation for natural gradient descent").
- ``"sampled"``: one ``y ~ p_θ(·|x_n)`` per sample, drawn from the strategy generator: an
  unbiased one-sample Monte-Carlo estimate of the exact Fisher.

**How.** Per-sample (and, for ``"exact"``, per-class) gradients come from ``vmap`` over
the samples of a chunk of ``grad`` (one label, or ``vmap`` over all classes) of the
log-softmax of a ``functional_call`` of the model: no Python loop over samples. The
log-likelihood is that of the *masked* logits (``mask`` is the run's
:meth:`~llray.strategies.base.Context.mask`), so in task-IL the Fisher belongs to the
distribution that training optimises. Only ``requires_grad`` parameters get a Fisher.

For ``nn.Linear`` layers applied once per sample to a vector (every layer of an MLP,
the head of a ConvNet), the per-sample weight gradient is the outer product
``δ aᵀ`` of the gradient at the layer's output and the layer's input, so
``Σ_n Σ_c w_nc (δ_nc aᵀ_n)² = (Σ_c w_nc δ_nc²)ᵀ (a_n²)`` (Goodfellow 2015, "Efficient
per-example gradient computations"). There ``torch.func`` differentiates with respect
to a zero "probe" added to the layer's output instead of the weight, which gives the
same numbers without ever holding a ``[samples, classes, out, in]`` tensor. Every other
trainable parameter (convolutions, custom modules, shared weights) takes the general
per-sample path. ``fast=False`` forces the general path everywhere.

Example:
    >>> net = torch.nn.Linear(3, 4)
    >>> F = fisher_diagonal(net, torch.rand(8, 3), torch.randint(4, (8,)), kind="exact")
    >>> sorted(F), tuple(F["weight"].shape)
    (['bias', 'weight'], (4, 3))
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
import contextlib
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from llray import lean_grad

lean_grad.install()  # torch.func's backward without importing the compiler

FisherKind = Literal["empirical", "exact", "sampled"]
FISHER_KINDS: tuple[str, ...] = ("empirical", "exact", "sampled")
MaskFn = Callable[[Tensor, int], Tensor]  # (logits [.., C], task id) -> masked logits
Grads = dict[str, Tensor]


def trainable(model: nn.Module) -> Grads:
    """The detached parameters that get a Fisher: the ``requires_grad`` ones, by name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _pname(module: str, attr: str) -> str:
    return f"{module}.{attr}" if module else attr


# -- the Linear fast path: which layers qualify ----------------------------------------------
@contextlib.contextmanager
def _hooked(modules: dict[str, nn.Module], hook: Callable) -> Iterator[None]:
    """Forward hooks ``hook(name, module, inputs, output)`` on ``modules`` while inside."""
    handles = [
        m.register_forward_hook(lambda mod, inp, out, n=n: hook(n, mod, inp, out))
        for n, m in modules.items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _fast_linears(model: nn.Module, x1: Tensor) -> dict[str, nn.Linear]:
    """``nn.Linear`` modules whose squared per-sample gradients factorise: called exactly
    once per forward on a ``[1, in]`` input, with trainable, unshared parameters."""
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    if any(c > 1 for c in uses.values()):
        return {}  # shared parameters: keep it simple, use the general path
    cands = {
        n: m
        for n, m in model.named_modules()
        if type(m) is nn.Linear and any(p.requires_grad for p in m.parameters(recurse=False))
    }
    calls: dict[str, list[int]] = {n: [] for n in cands}
    with _hooked(cands, lambda n, mod, inp, out: calls[n].append(inp[0].dim())), torch.no_grad():
        model(x1)
    return {n: cands[n] for n, dims in calls.items() if dims == [2]}


# -- per-sample gradients ---------------------------------------------------------------------
class _Probed:
    """The per-sample log-probabilities of ``model`` with probes on its fast layers.

    ``log_probs(probes, rest, x [*in]) -> (log p(·|x) [C], {layer: input [in]})``:
    ``probes`` are zeros added to the fast layers' outputs (their gradient is the
    layer's ``δ``), ``rest`` the other trainable parameters (differentiated directly).
    Call it only inside ``with self.hooks():``.
    """

    def __init__(
        self, model: nn.Module, fast: dict[str, nn.Linear], mask: MaskFn | None, t: int
    ) -> None:
        self.model, self.fast, self.mask, self.t = model, fast, mask, t
        self.frozen = {n: p.detach() for n, p in model.named_parameters()}
        self.probes: Grads = {}
        self.inputs: Grads = {}  # filled by the hooks during one traced forward

    def hooks(self) -> contextlib.AbstractContextManager:
        return _hooked(self.fast, self._hook)

    def _hook(self, name: str, mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
        self.inputs[name] = inp[0].squeeze(0)  # [in]
        return out + self.probes[name]  # [1, out] + [out]

    def log_probs(self, probes: Grads, rest: Grads, x: Tensor) -> tuple[Tensor, Grads]:
        self.probes, self.inputs = probes, {}
        out = functional_call(self.model, {**self.frozen, **rest}, (x.unsqueeze(0),))  # [1, C]
        if self.mask is not None:
            out = self.mask(out, self.t)
        return F.log_softmax(out, dim=-1).squeeze(0), dict(self.inputs)  # [C], {n: [in]}


def _probes(fast: dict[str, nn.Linear]) -> Grads:
    w = {n: m.weight for n, m in fast.items()}
    return {n: torch.zeros(p.shape[0], dtype=p.dtype, device=p.device) for n, p in w.items()}


def _rest(model: nn.Module, fast: dict[str, nn.Linear]) -> Grads:
    skip = {_pname(n, a) for n in fast for a in ("weight", "bias")}
    return {n: p for n, p in trainable(model).items() if n not in skip}


def _all_classes(model, fast, mask, t, x) -> tuple[Tensor, Grads, Grads, Grads]:
    """Per-sample, per-class gradients of a chunk with the model's probabilities.

    The gradient of every class's log-probability is a ``grad`` of that one output,
    ``vmap``-ed over the classes: a backward pass seeded with the one-hot vector of the
    class, which is what ``jacrev`` computes too, without its explicit cotangents (those
    make ``torch.autograd.grad`` import its symbolic-shape checks, 0.5 s per process).

    Returns:
        ``p [B, C]``, ``δ {layer: [B, C, out]}``, ``g {param: [B, C, *shape]}``,
        ``a {layer: [B, in]}``.
    """
    probed = _Probed(model, fast, mask, t)

    def log_lik(probes: Grads, rest: Grads, xi: Tensor, c: Tensor) -> tuple[Tensor, tuple]:
        lp, inputs = probed.log_probs(probes, rest, xi)
        return lp.gather(0, c.unsqueeze(0)).squeeze(0), (lp.detach().exp(), inputs)

    per_class = vmap(grad(log_lik, argnums=(0, 1), has_aux=True), in_dims=(None, None, None, 0))
    classes = torch.arange(_num_classes(model, x), device=x.device)
    with probed.hooks():
        (d, g), (p, a) = vmap(per_class, in_dims=(None, None, 0, None))(
            _probes(fast), _rest(model, fast), x, classes
        )
    # the auxiliary outputs do not depend on the class: vmap repeated them along it
    return p[:, 0], d, g, {n: v[:, 0] for n, v in a.items()}


@torch.no_grad()
def _num_classes(model: nn.Module, x: Tensor) -> int:
    return model(x[:1]).shape[-1]


def _one_label(model, fast, mask, t, x, y) -> tuple[Tensor, Grads, Grads, Grads]:
    """Per-sample gradients of ``log p(y_n|x_n)``, shaped like :func:`_all_classes`
    with one "class" of weight 1."""
    probed = _Probed(model, fast, mask, t)

    def log_lik(probes: Grads, rest: Grads, xi: Tensor, yi: Tensor) -> tuple[Tensor, Grads]:
        lp, inputs = probed.log_probs(probes, rest, xi)
        return lp.gather(0, yi.unsqueeze(0)).squeeze(0), inputs  # scalar

    per_sample = grad(log_lik, argnums=(0, 1), has_aux=True)
    with probed.hooks():
        (d, g), a = vmap(per_sample, in_dims=(None, None, 0, 0))(
            _probes(fast), _rest(model, fast), x, y
        )
    w = torch.ones(len(x), 1, dtype=x.dtype, device=x.device)  # [B, 1]
    one = lambda grads: {n: v.unsqueeze(1) for n, v in grads.items()}  # noqa: E731
    return w, one(d), one(g), a  # δ {n: [B, 1, out]}, g {n: [B, 1, *shape]}


def _weighted_squares(
    w: Tensor, d: Grads, g: Grads, a: Grads, fast: dict[str, nn.Linear]
) -> Grads:
    """``Σ_n Σ_c w_nc (∂_θ log p_c(x_n))²`` for every trainable parameter of a chunk."""
    out: Grads = {}
    for n, mod in fast.items():
        s = torch.einsum("bc,bco->bo", w, d[n].square())  # [B, out]
        if mod.weight.requires_grad:
            out[_pname(n, "weight")] = s.T @ a[n].square()  # [out, in]
        if mod.bias is not None and mod.bias.requires_grad:
            out[_pname(n, "bias")] = s.sum(0)  # [out]
    for n, gn in g.items():
        out[n] = torch.tensordot(w, gn.square(), dims=([0, 1], [0, 1]))  # [*shape]
    return out


def per_sample_grads(
    model: nn.Module, x: Tensor, y: Tensor, t: int = 0, mask: MaskFn | None = None
) -> Grads:
    """Gradients of ``log p(y_n | x_n)`` for every sample: ``{name: [N, *shape]}``.

    The general ``vmap(grad)`` path for strategies that need the gradients themselves
    (not only their squares).
    """
    w, d, g, a = _one_label(model, {}, mask, t, x, y)
    return {n: v.squeeze(1) for n, v in g.items()}


@torch.no_grad()
def _sample_labels(
    model: nn.Module, x: Tensor, t: int, mask: MaskFn | None, generator: torch.Generator
) -> Tensor:
    """One label per sample drawn from the model's (masked) predictive distribution."""
    out = model(x)
    if mask is not None:
        out = mask(out, t)
    p = F.softmax(out.double(), dim=-1).cpu()  # [B, C]; CPU for the strategy generator
    return torch.multinomial(p, 1, generator=generator).squeeze(1).to(x.device)


def _task_groups(t: int | Tensor) -> list[tuple[int, Tensor | None]]:
    """``(task id, sample indices or None for all)`` for one task id or per-sample ids."""
    if not isinstance(t, Tensor):
        return [(int(t), None)]
    return [(int(k), (t == k).nonzero().squeeze(1)) for k in torch.unique(t).tolist()]


def fisher_diagonal(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    t: int | Tensor = 0,
    *,
    kind: FisherKind = "exact",
    mask: MaskFn | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    fast: bool = True,
) -> Grads:
    """Diagonal Fisher of ``model`` on ``(x, y)``: the mean over samples of squared
    per-sample log-likelihood gradients (see the module docstring for ``kind``).

    Args:
        model: the classifier; its parameters are read, not changed.
        x: ``[N, *input_shape]`` inputs.
        y: ``[N]`` labels (used by ``"empirical"`` only).
        t: task id of all samples, or ``[N]`` per-sample task ids (passed to ``mask``;
            samples are grouped by task: the only Python loop is over task ids).
        kind: ``"exact"``, ``"empirical"`` or ``"sampled"``.
        mask: ``(logits, task id) -> logits``, normally the run's ``ctx.mask``.
        generator: CPU generator for the ``"sampled"`` labels (required for it).
        batch_size: samples per ``vmap`` call. On the general path ``"exact"`` holds
            ``batch_size × classes × parameters`` floats at once.
        fast: use the ``nn.Linear`` factorisation where it applies (same result).

    Returns:
        ``{name: [*param.shape]}`` for every ``requires_grad`` parameter.
    """
    assert kind in FISHER_KINDS, f"unknown Fisher kind {kind!r}"
    assert kind != "sampled" or generator is not None, "sampled Fisher needs a generator"
    n = len(x)
    assert n > 0, "Fisher of an empty set"
    layers = _fast_linears(model, x[:1]) if fast else {}
    total = {k: torch.zeros_like(p) for k, p in trainable(model).items()}
    for tid, idx in _task_groups(t):
        xs, ys = (x, y) if idx is None else (x[idx], y[idx])
        for i in range(0, len(xs), batch_size):
            xb, yb = xs[i : i + batch_size], ys[i : i + batch_size]
            if kind == "exact":
                parts = _all_classes(model, layers, mask, tid, xb)
            else:
                if kind == "sampled":
                    yb = _sample_labels(model, xb, tid, mask, generator)
                parts = _one_label(model, layers, mask, tid, xb, yb)
            for k, v in _weighted_squares(*parts, layers).items():
                total[k] += v
    return {k: v / n for k, v in total.items()}
