"""Seeds derived from a run's seed, one per purpose (common random numbers).

``derive(seed, purpose)`` gives each consumer of randomness in a run its own stream:
the same on every machine and Python version (SHA-256 of the seed and the purpose),
independent of the others, and a valid ``torch.Generator.manual_seed`` value.

Example:
    >>> derive(0, "augment") == derive(0, "augment"), derive(0, "augment") == derive(1, "augment")
    (True, False)
    >>> 0 <= derive(2**64 - 1, "strategy") < 2**63
    True
"""

from __future__ import annotations

import hashlib


def derive(seed: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` from the run's ``seed`` (any int 0..2**64-1)."""
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
