"""Compact image storage: uint8 pixels in memory, floats only per batch on the device.

Image datasets (MNIST, CIFAR, TinyImageNet, CORe50) keep their files' uint8 pixels in
the stream, the object store and replay buffers: a quarter of the bytes of float32.
Every model built by :func:`llray.models.build_model` converts its input with
:func:`to_float` in its first layer, so a batch becomes float32 in ``[0, 1]`` only when
it reaches the model, on the model's device. Float inputs pass through unchanged, so
one model serves uint8 and float streams alike.

``to_float`` computes exactly what ``x.astype(np.float32) / 255`` computes (one IEEE
float32 division per pixel), so a run on a uint8 stream gives the same R, bit for bit,
as on the same stream stored as float32.

Example:
    >>> import torch
    >>> to_float(torch.tensor([0, 51, 255], dtype=torch.uint8)).tolist()
    [0.0, 0.20000000298023224, 1.0]
    >>> x = torch.rand(2); to_float(x) is x
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

PIXEL_MAX = 255.0


def to_float(x: Tensor) -> Tensor:
    """uint8 pixels -> float32 in ``[0, 1]``; any other dtype is returned as it is."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(PIXEL_MAX)
    return x


def is_pixels(x: Tensor) -> bool:
    """True for a uint8 pixel tensor (the compact storage)."""
    return x.dtype == torch.uint8
