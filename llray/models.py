"""Models: an MLP and a small ConvNet, plus the Net2Net expansion operations.

Every model maps ``x [N, *input_shape]`` to logits ``[N, num_classes]``. Task-IL uses a
multi-head output by construction: task-IL streams give each task disjoint label ids,
so the output layer's per-task slices are the heads, and the scenario layer masks the
logits to the sample's own slice (mathematically identical to one linear head per
task: masked units get no gradient).

**Feature protocol.** Every model built here has two submodules, and strategies that
need a representation (iCaRL's nearest-mean classifier, Net2Net expansion, progressive
columns) rely on exactly this and nothing else::

    model.features(x)  # [N, *input_shape] -> [N, D]  the representation (flattened)
    model.head(h)      # [N, D] -> [N, num_classes]   one linear layer
    model(x) == model.head(model.features(x))

A user's own model can take part by following the same protocol.

**Net2Net** (Chen, Goodfellow & Shlens 2016, "Net2Net: Accelerating Learning via
Knowledge Transfer", ICLR): :func:`net2wider` and :func:`net2deeper` grow an
:class:`MLP` in place while computing the same function.

Example:
    >>> m = build_model(ModelConfig(hidden=(32,)), (64,), 10, seed=0)
    >>> tuple(m(torch.zeros(2, 64)).shape)
    (2, 10)
    >>> x = torch.rand(3, 64)
    >>> before = m(x)
    >>> net2wider(m, 0, 48, torch.Generator().manual_seed(0))
    >>> net2deeper(m, 0)
    >>> hidden_widths(m), bool(torch.allclose(before, m(x), atol=1e-5))
    ((48, 48), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llray.backbones import BACKBONES, PixelFeatures, build_backbone
from llray.config_base import require
from llray.data.pixels import to_float
from llray.errors import ConfigError

MODEL_NAMES = ("mlp", "convnet", *BACKBONES)


@dataclass(frozen=True)
class ModelConfig:
    """The ``model:`` section of a config.

    ``hidden`` are the MLP's hidden widths; ``channels`` the ConvNet's conv blocks
    (one ``Conv3x3 -> ReLU -> MaxPool2`` block per entry) and ``kernel_size`` their kernel.
    ``resnet18_reduced`` (GEM's, nf=20) and ``resnet18`` (Mammoth/DER's CIFAR ResNet-18)
    take no further fields (see :mod:`llray.backbones`).
    """

    name: Literal["mlp", "convnet", "resnet18_reduced", "resnet18"] = "mlp"
    hidden: tuple[int, ...] = (100, 100)
    channels: tuple[int, ...] = (32, 64)
    kernel_size: int = 3

    def __post_init__(self) -> None:
        require(self.name in MODEL_NAMES, "name",
                f"must be one of {', '.join(MODEL_NAMES)}, got {self.name!r}")
        require(len(self.hidden) >= 1, "hidden", "needs at least one hidden width")
        require(all(h >= 1 for h in self.hidden), "hidden", f"widths must be >= 1: {self.hidden}")
        require(len(self.channels) >= 1, "channels", "needs at least one conv block")
        require(all(c >= 1 for c in self.channels), "channels", f"must be >= 1: {self.channels}")
        require(
            self.kernel_size >= 1 and self.kernel_size % 2 == 1,
            "kernel_size",
            f"must be an odd integer >= 1, got {self.kernel_size}",
        )


class InputFlatten(nn.Flatten):
    """The MLP's input layer: uint8 pixels to floats (:func:`to_float`), then flatten."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(to_float(x))


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU`` per hidden width, then a linear output layer."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = [InputFlatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, *in] -> [N, C]
        return self.head(self.features(x))


class ConvNet(nn.Module):
    """A small ConvNet: ``Conv -> ReLU -> MaxPool2`` per entry of ``channels``, then a
    linear head on the flattened feature map. No batch norm, so a run stays a pure
    function of its seed and a frozen copy computes exactly what it computed before.

    Example:
        >>> net = ConvNet((1, 28, 28), 10)
        >>> tuple(net.features(torch.zeros(2, 1, 28, 28)).shape), net.head.in_features
        ((2, 3136), 3136)
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: tuple[int, ...] = (32, 64),
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        assert h >= 2 ** len(channels) and w >= 2 ** len(channels), "image too small"
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += [
                nn.Conv2d(c, c_out, kernel_size, padding=kernel_size // 2),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c, h, w = c_out, h // 2, w // 2
        layers.append(nn.Flatten())
        self.features = PixelFeatures(*layers)  # [N, C, H, W] -> [N, c*h*w]
        self.head = nn.Linear(c * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, classes]
        return self.head(self.features(x))


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> nn.Module:
    """A freshly initialised model; the init is a pure function of ``seed``.

    The global torch RNG is forked, so building a model changes no global state.
    ``convnet`` and the ResNets need image inputs ``(C, H, W)``; a flat input is a
    ConfigError. Every model's first layer turns uint8 pixels into floats.
    """
    if cfg.name == "convnet" and len(input_shape) != 3:
        raise ConfigError(
            "model.name", f"convnet needs image inputs (C, H, W), the stream gives {input_shape}"
        )
    if cfg.name == "convnet" and min(input_shape[1:]) < 2 ** len(cfg.channels):
        raise ConfigError(
            "model.channels",
            f"{len(cfg.channels)} pooling blocks need images of at least "
            f"{2 ** len(cfg.channels)} pixels a side, got {input_shape}",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.name == "mlp":
            return MLP(math.prod(input_shape), cfg.hidden, num_classes)
        if cfg.name == "convnet":
            return ConvNet(input_shape, num_classes, cfg.channels, cfg.kernel_size)
        if cfg.name in BACKBONES:
            return build_backbone(cfg.name, input_shape, num_classes)
    raise AssertionError(f"unhandled model {cfg.name}")


# -- Net2Net (Chen, Goodfellow & Shlens 2016) ----------------------------------------------


def is_mlp(model: nn.Module) -> bool:
    """True when ``model`` follows the MLP layout the Net2Net operations work on:
    ``features`` = ``Flatten, (Linear, ReLU)+`` and a ``Linear`` head."""
    feats = getattr(model, "features", None)
    head = getattr(model, "head", None)
    if not isinstance(feats, nn.Sequential) or not isinstance(head, nn.Linear):
        return False
    mods = list(feats)
    if not mods or not isinstance(mods[0], nn.Flatten) or len(mods) % 2 != 1:
        return False
    pairs = zip(mods[1::2], mods[2::2])
    return all(isinstance(a, nn.Linear) and isinstance(b, nn.ReLU) for a, b in pairs)


def hidden_linears(model: nn.Module) -> list[nn.Linear]:
    """The hidden ``Linear`` layers of an MLP-layout model, input side first."""
    assert is_mlp(model), "expected the MLP layout: features = Flatten, (Linear, ReLU)+"
    return [m for m in model.features if isinstance(m, nn.Linear)]


def hidden_widths(model: nn.Module) -> tuple[int, ...]:
    """The hidden widths of an MLP-layout model, e.g. ``(100, 100)``."""
    return tuple(lin.out_features for lin in hidden_linears(model))


def _next_linear(model: nn.Module, layer_index: int) -> nn.Linear:
    """The layer that consumes hidden layer ``layer_index``'s output (next hidden or head)."""
    layers = hidden_linears(model)
    return layers[layer_index + 1] if layer_index + 1 < len(layers) else model.head


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` holding copies of ``weight`` [out, in] and ``bias`` [out].

    Built on the meta device first, so no global RNG state is consumed by an init that
    would be overwritten anyway.
    """
    lin = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
    lin.weight = nn.Parameter(weight.detach().clone())
    lin.bias = nn.Parameter(bias.detach().clone())
    return lin


def _replace_linear(model: nn.Module, old: nn.Linear, new: nn.Linear) -> None:
    if old is model.head:
        model.head = new
        return
    for i, m in enumerate(model.features):
        if m is old:
            model.features[i] = new
            return
    raise AssertionError("layer not found in model")


@torch.no_grad()
def net2wider(
    model: nn.Module,
    layer_index: int,
    new_width: int,
    generator: torch.Generator,
    noise: float = 0.0,
) -> None:
    """Net2WiderNet: widen hidden layer ``layer_index`` to ``new_width`` units, in place.

    Each new unit ``j`` copies a randomly chosen existing unit ``g(j)`` (incoming weights
    and bias); the outgoing weights of every unit are divided by the number of copies of
    its source unit, so the next layer receives exactly the same input (Chen et al. 2016,
    Algorithm 1, "random mapping"). With ``noise > 0`` the outgoing weights of each group
    of copies get zero-sum Gaussian noise (``noise`` × the layer's weight std): this
    breaks the copies' symmetry while keeping the function (the copies' activations are
    equal, so zero-sum perturbations cancel).

    Args:
        model: an MLP-layout model (see :func:`is_mlp`); modified in place.
        layer_index: 0-based index among the hidden layers.
        new_width: the width after widening, ``>=`` the current width.
        generator: CPU generator for the random mapping (and noise).
        noise: relative std of symmetry-breaking noise; 0 (default) adds none.

    Example:
        >>> m = MLP(4, (3,), 2)
        >>> net2wider(m, 0, 5, torch.Generator().manual_seed(0))
        >>> hidden_widths(m)
        (5,)
    """
    layers = hidden_linears(model)
    assert 0 <= layer_index < len(layers), f"no hidden layer {layer_index}"
    lin, nxt = layers[layer_index], _next_linear(model, layer_index)
    n = lin.out_features
    assert new_width >= n, f"cannot narrow layer {layer_index} from {n} to {new_width}"
    if new_width == n:
        return
    dev = lin.weight.device
    extra = torch.randint(n, (new_width - n,), generator=generator)
    g = torch.cat([torch.arange(n), extra]).to(dev)  # new unit j copies unit g[j]
    counts = torch.bincount(g, minlength=n).to(lin.weight.dtype)  # copies per old unit

    wide = _linear(lin.weight[g], lin.bias[g])
    out_w = nxt.weight[:, g] / counts[g]  # [out, new_width]
    if noise > 0:
        eps = torch.randn(out_w.shape, generator=generator).to(dev, out_w.dtype)
        eps *= noise * float(nxt.weight.std())
        group_mean = torch.zeros(nxt.out_features, n, device=dev, dtype=out_w.dtype)
        group_mean.index_add_(1, g, eps)
        eps -= (group_mean / counts)[:, g]  # zero-sum within each group of copies
        out_w += eps
    after = _linear(out_w, nxt.bias)
    _replace_linear(model, lin, wide)
    _replace_linear(model, nxt, after)


@torch.no_grad()
def net2deeper(model: nn.Module, after_layer: int) -> None:
    """Net2DeeperNet: insert an identity ``Linear -> ReLU`` after hidden layer ``after_layer``.

    The new layer has an identity weight matrix and zero bias; its input is the output
    of a ReLU (non-negative), so ``ReLU(I h + 0) = h`` and the function is unchanged
    (Chen et al. 2016, Section 2.3). Modifies ``model.features`` in place.

    Example:
        >>> m = MLP(4, (3,), 2)
        >>> net2deeper(m, 0)
        >>> hidden_widths(m)
        (3, 3)
    """
    layers = hidden_linears(model)
    assert 0 <= after_layer < len(layers), f"no hidden layer {after_layer}"
    lin = layers[after_layer]
    w = lin.out_features
    ident = _linear(
        torch.eye(w, device=lin.weight.device, dtype=lin.weight.dtype), torch.zeros_like(lin.bias)
    )
    mods = list(model.features)
    pos = mods.index(lin) + 2  # after this layer's ReLU
    model.features = nn.Sequential(*mods[:pos], ident, nn.ReLU(), *mods[pos:])


def resize_mlp(model: nn.Module, hidden: tuple[int, ...]) -> None:
    """Rebuild an MLP-layout model in place with the given hidden widths (zero weights).

    Used to restore a grown model's architecture before loading its checkpointed weights.
    """
    assert is_mlp(model) and len(hidden) >= 1
    first = hidden_linears(model)[0]
    dev, dtype = first.weight.device, first.weight.dtype
    widths = [first.in_features, *hidden]
    widths.append(model.head.out_features)
    lins = [
        _linear(torch.zeros(b, a, device=dev, dtype=dtype), torch.zeros(b, device=dev, dtype=dtype))
        for a, b in zip(widths[:-1], widths[1:])
    ]
    layers: list[nn.Module] = [InputFlatten()]
    for lin in lins[:-1]:
        layers += [lin, nn.ReLU()]
    model.features = nn.Sequential(*layers)
    model.head = lins[-1]
