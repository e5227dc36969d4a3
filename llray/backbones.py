"""ResNet-18 backbones for image streams: GEM's reduced ResNet-18 and the CIFAR ResNet-18.

``model: {name: resnet18_reduced}``
    The reduced ResNet-18 of GEM (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory
    for Continual Learning", NeurIPS; ``model/common.py`` of the reference code):
    BasicBlocks ``[2, 2, 2, 2]`` with ``nf = 20`` base filters (20, 40, 80, 160), about
    1.1 M parameters.
``model: {name: resnet18}``
    The ResNet-18 of Mammoth / DER (Buzzega et al. 2020, "Dark Experience for General
    Continual Learning: a Strong, Simple Baseline", NeurIPS), the CIFAR variant of He et
    al. 2016: a 3x3 stride-1 stem without max pooling, ``nf = 64`` (64 .. 512), 11 M
    parameters.

Both: ``conv3x3 -> BN -> ReLU``, four stages of two BasicBlocks (strides 1, 2, 2, 2;
a 1x1 conv + BN shortcut where the shape changes), global average pooling (on 32x32
inputs exactly GEM's ``avg_pool2d(out, 4)``), and one linear head. They follow the
feature protocol of :mod:`llray.models` (``model.features`` -> ``[N, 8 nf]``,
``model.head``), so task-IL masking, class-IL heads, iCaRL's nearest-mean classifier and
every strategy that only calls the model work unchanged. The first layer converts uint8
pixels to floats (:func:`llray.data.pixels.to_float`).

**BatchNorm.** Training uses batch statistics and updates the running mean/variance;
evaluation (``model.eval()``, which the learner sets before every evaluation and before
``after_task``) uses the running statistics, so evaluating never changes the model. The
running statistics and ``num_batches_tracked`` are buffers of ``model.state_dict()``:
they are saved in every checkpoint and restored bit for bit. They are shared across
tasks (as in GEM and Mammoth): a later task moves them, which is part of what the R
matrix measures as forgetting.

**Not supported**: Net2Net expansion (``expand``) and progressive networks
(``progressive``) build and grow MLP layers; a config that pairs them with a ResNet is a
:class:`~llray.errors.ConfigError` (:func:`check_strategy_support`).

Example:
    >>> m = build_backbone("resnet18_reduced", (3, 32, 32), 10)
    >>> tuple(m.features(torch.zeros(2, 3, 32, 32)).shape), m.head.in_features
    ((2, 160), 160)
    >>> round(sum(p.numel() for p in m.parameters()) / 1e6, 2)
    1.09
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray.data.pixels import to_float
from llray.errors import ConfigError

BACKBONES = {"resnet18_reduced": 20, "resnet18": 64}  # name -> base filters nf
MIN_SIDE = 16  # four stages downsample by 8: a smaller image leaves BatchNorm 1 value a channel
# Strategies that build or grow MLP layers themselves, and why they cannot take a ResNet.
MLP_ONLY = {
    "expand": "Net2Net expansion widens and deepens MLP layers (Net2WiderNet/Net2DeeperNet)",
    "progressive": "progressive networks build MLP columns with lateral connections",
}


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )

    def forward(self, x: Tensor) -> Tensor:  # [N, c_in, H, W] -> [N, c_out, H/s, W/s]
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PixelFeatures(nn.Sequential):
    """An ``nn.Sequential`` whose input is converted from uint8 pixels first."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(to_float(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, four stages of BasicBlocks, global average pool.

    Args:
        in_channels: image channels (3 for CIFAR; 1 for grey images).
        num_classes: width of the linear head.
        nf: base filters; stage k has ``nf * 2**k``.
        blocks: BasicBlocks per stage.
    """

    def __init__(
        self, in_channels: int, num_classes: int, nf: int, blocks: tuple[int, ...] = (2, 2, 2, 2)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv3x3(in_channels, nf), nn.BatchNorm2d(nf), nn.ReLU()]
        c = nf
        for k, n in enumerate(blocks):
            c_out = nf * 2**k
            for i in range(n):
                layers.append(BasicBlock(c, c_out, stride=2 if (k > 0 and i == 0) else 1))
                c = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = PixelFeatures(*layers)  # [N, C, H, W] -> [N, 8 nf]
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, num_classes]
        return self.head(self.features(x))


def check_input(name: str, input_shape: tuple[int, ...]) -> None:
    """ConfigError on ``model.name`` unless ``input_shape`` is an image of >= 16 px a side."""
    if len(input_shape) != 3:
        raise ConfigError("model.name", f"{name} needs image inputs (C, H, W), the stream "
                          f"gives {input_shape}")
    if min(input_shape[1:]) < MIN_SIDE:
        raise ConfigError("model.name", f"{name} needs images of at least {MIN_SIDE} pixels a "
                          f"side (it downsamples by 8), the stream gives {input_shape}")


def build_backbone(name: str, input_shape: tuple[int, ...], num_classes: int) -> ResNet:
    """The backbone ``name`` for ``input_shape`` images; initialised from the global RNG
    (:func:`llray.models.build_model` seeds it)."""
    check_input(name, input_shape)
    return ResNet(input_shape[0], num_classes, BACKBONES[name])


def check_strategy_support(model_name: str, strategy: str, where: str) -> None:
    """ConfigError on ``where`` when ``strategy`` cannot train a ``model_name`` backbone.

    Example:
        >>> check_strategy_support("resnet18", "ewc", "strategies[0]")  # fine
        >>> check_strategy_support("resnet18", "expand", "strategies[1]")
        Traceback (most recent call last):
        ...
        llray.errors.ConfigError: strategies[1]: expand does not support model resnet18: \
Net2Net expansion widens and deepens MLP layers (Net2WiderNet/Net2DeeperNet); use model.name: mlp
    """
    if model_name in BACKBONES and strategy in MLP_ONLY:
        raise ConfigError(where, f"{strategy} does not support model {model_name}: "
                          f"{MLP_ONLY[strategy]}; use model.name: mlp")
