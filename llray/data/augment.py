"""Data augmentation on the device: random crop with padding and horizontal flip.

``stream: {augment: [crop, flip], crop_padding: 4}`` augments every training batch the
way the continual-learning literature trains CIFAR and TinyImageNet ResNets
(torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``, as in
Mammoth/DER, Buzzega et al. 2020): each image is zero-padded by ``crop_padding`` pixels
on every side, a window of the original size is cut at a uniformly random offset, and
the result is mirrored left-right with probability 1/2.

The whole batch is done in one gather (no per-sample Python, no DataLoader workers), on
the batch's own device and dtype (uint8 pixels stay uint8: padding is 0, the same black
as torchvision's ``fill=0``). The random offsets and flips come from the run's own CPU
generator seeded with ``derive(seed, "augment")`` (:mod:`llray.seeding`), so a run stays a
pure function of its config and seed, and its state is saved in checkpoints.

Augmentation is applied in one place, :meth:`llray.strategies.base.Strategy.fit`, to each
training batch drawn from the data being fitted (a task, or joint training's union, or
iCaRL's task + exemplars); never at evaluation, and not to the strategies' own extra
batches (replay memory samples, Fisher or importance passes, generated samples).

Example:
    >>> aug = Augmenter(Augmentation(("crop", "flip"), padding=2), seed=0)
    >>> x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    >>> out = aug(x)
    >>> out.shape == x.shape, out.dtype == x.dtype
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llray.seeding import derive

AUGMENTATIONS = ("crop", "flip")


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations to apply: ``ops`` from :data:`AUGMENTATIONS`, crop ``padding``."""

    ops: tuple[str, ...]
    padding: int = 4

    def __post_init__(self) -> None:
        assert set(self.ops) <= set(AUGMENTATIONS), f"unknown augmentation in {self.ops}"
        assert self.padding >= 0


def crop_flip(x: Tensor, offsets: Tensor, flips: Tensor, padding: int) -> Tensor:
    """Crop each image of ``x [N, C, H, W]`` from its zero-padded copy and mirror some.

    Args:
        x: a batch of images, any dtype, on any device.
        offsets: ``[N, 2]`` int64 ``(dy, dx)`` in ``[0, 2 * padding]``: the top-left corner
            of each window in the padded image (``padding`` = no shift).
        flips: ``[N]`` bool: mirror image ``n`` left-right (after cropping).
        padding: zero pixels added on every side before cropping.

    Returns:
        ``[N, C, H, W]``, same dtype and device as ``x``.

    Example:
        >>> x = torch.arange(9.0).reshape(1, 1, 3, 3)
        >>> crop_flip(x, torch.tensor([[2, 0]]), torch.tensor([True]), 1)[0, 0].tolist()
        [[4.0, 3.0, 0.0], [7.0, 6.0, 0.0], [0.0, 0.0, 0.0]]
    """
    n, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding,) * 4) if padding else x  # [N, C, H+2p, W+2p]
    offsets, flips = offsets.to(dev), flips.to(dev)
    ih = torch.arange(h, device=dev)
    iw = torch.arange(w, device=dev)
    rows = offsets[:, :1] + ih  # [N, H]
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - iw, iw)  # [N, W]
    b = torch.arange(n, device=dev)[:, None, None, None]
    ch = torch.arange(c, device=dev)[None, :, None, None]
    return padded[b, ch, rows[:, None, :, None], cols[:, None, None, :]]


class Augmenter:
    """Applies an :class:`Augmentation` to training batches with its own seeded generator.

    Args:
        aug: what to apply.
        seed: the run's seed; the generator is seeded with ``derive(seed, "augment")``.
    """

    def __init__(self, aug: Augmentation, seed: int) -> None:
        self.aug = aug
        self.generator = torch.Generator().manual_seed(derive(seed, "augment"))

    def __call__(self, x: Tensor) -> Tensor:
        """The augmented batch ``x [N, C, H, W]`` (a new tensor; ``x`` is not modified)."""
        n = x.shape[0]
        p = self.aug.padding if "crop" in self.aug.ops else 0
        if p > 0:
            offsets = torch.randint(2 * p + 1, (n, 2), generator=self.generator)
        else:
            offsets = torch.zeros((n, 2), dtype=torch.long)
        if "flip" in self.aug.ops:
            flips = torch.rand(n, generator=self.generator) < 0.5
        else:
            flips = torch.zeros(n, dtype=torch.bool)
        return crop_flip(x, offsets, flips, p)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
