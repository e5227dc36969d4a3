"""Common random numbers: one seed, one independent generator per purpose.

A run draws its batch order from a generator seeded with the run's seed alone, and
every other random draw (a strategy's memory batches, sampled Fisher labels, generator
noise, augmentation, ...) from a generator of its own, seeded with
``derive(seed, purpose)``. Two runs with the same seed therefore see the same batches
whatever their strategy or hyperparameters, so a comparison between them is paired,
and a zero-strength variant (EWC ``lambda_: 0``, replay ``ratio: 0``, ...) is naive
fine-tuning bit for bit.

``derive`` hashes the seed and the purpose with BLAKE2b, so the derived seed is the
same on every machine, Python version and process (unlike ``hash()``), and seeds for
different purposes are unrelated.

Example:
    >>> derive(0, "strategy") == derive(0, "strategy")
    True
    >>> derive(0, "strategy") != derive(0, "augment") != derive(1, "strategy")
    True
    >>> g = torch.Generator().manual_seed(derive(2**64 - 1, "strategy"))
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["STRATEGY", "derive", "generator"]

STRATEGY = "strategy"  # purpose of the generator behind every strategy draw

_MAX_SEED = 2**64 - 1


def derive(seed: int, purpose: str) -> int:
    """A seed in ``[0, 2**63)`` for ``purpose``, a pure function of ``(seed, purpose)``.

    Args:
        seed: the run's seed, an int in ``[0, 2**64 - 1]`` (a negative one down to
            ``-2**63`` is taken modulo ``2**64``, as ``torch.manual_seed`` takes it).
        purpose: what the derived generator is for (``"strategy"``, ``"augment"``, ...).

    Returns:
        An int that ``torch.Generator.manual_seed`` and ``numpy.random.default_rng``
        both accept.

    Raises:
        TypeError: ``seed`` is not an int (bool included) or ``purpose`` not a str.
        ValueError: ``seed`` is outside ``[-2**63, 2**64 - 1]`` or ``purpose`` is empty.

    Example:
        >>> derive(0, "strategy")
        3332932583511180834
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not -(2**63) <= seed <= _MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**64 - 1], got {seed}")
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"purpose must be a non-empty string, got {purpose!r}")
    data = (seed % 2**64).to_bytes(8, "little") + purpose.encode("utf-8")
    digest = hashlib.blake2b(data, digest_size=8, person=b"llray-crn").digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: fits every seeding API


def generator(seed: int, purpose: str | None = None) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (``purpose`` None) or
    ``derive(seed, purpose)``.

    Example:
        >>> a = torch.rand(2, generator=generator(3, "augment"))
        >>> bool((a == torch.rand(2, generator=generator(3, "augment"))).all())
        True
    """
    return torch.Generator().manual_seed(seed if purpose is None else derive(seed, purpose))
