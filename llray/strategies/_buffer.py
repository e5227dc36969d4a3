"""A fixed-size episodic memory filled by reservoir sampling.

Reservoir sampling (Vitter 1985, "Random Sampling with a Reservoir", ACM TOMS 11(1),
Algorithm R) keeps a uniform sample of everything seen so far in ``capacity`` slots:
item number ``n`` (0-based count of the items seen before it) goes to slot ``n`` while
the buffer is not full, and otherwise to slot ``j ~ U{0, ..., n}`` when ``j < capacity``
(it is dropped when ``j >= capacity``). After ``N`` items every item is in the buffer
with probability ``capacity / N``. Chaudhry et al. 2019 ("On Tiny Episodic Memories in
Continual Learning") show that this simple memory is a strong rehearsal baseline.

:meth:`ReservoirBuffer.add` runs Algorithm R on a whole batch of items at once: it
draws every ``j`` in one call and, when several items of the batch pick the same slot,
keeps the *last* of them, exactly what the sequential algorithm would leave there.
Replay, DER++ and A-GEM share this class; strategies that store more per item (DER++'s
logits) write their own arrays with the ``(slots, items)`` that :meth:`add` returns.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> buf = ReservoirBuffer(3, (2,), "cpu")
    >>> _ = buf.add(torch.rand(10, 2), torch.arange(10), 0, g)
    >>> len(buf), buf.seen
    (3, 10)
    >>> tuple(buf.sample(5, g).x.shape)
    (5, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from llray.strategies.base import Batch


def reservoir_targets(seen: int, m: int, capacity: int, generator: torch.Generator) -> Tensor:
    """Algorithm R's target index for each of ``m`` new items, on the CPU.

    Item ``i`` of the batch is item number ``n = seen + i`` of the stream; its target is
    ``n`` while ``n < capacity`` and ``j ~ U{0..n}`` otherwise. Targets ``>= capacity``
    mean "dropped". One uniform draw per item past the fill phase, in item order.

    Returns:
        ``[m]`` int64 targets.
    """
    n = torch.arange(seen, seen + m, dtype=torch.int64)  # [m] stream positions
    target = n.clone()
    late = n >= capacity
    k = int(late.sum())
    if k:
        u = torch.rand(k, dtype=torch.float64, generator=generator)  # [k] in [0, 1)
        j = (u * (n[late] + 1).double()).floor().long()  # [k] in {0..n}
        target[late] = torch.minimum(j, n[late])  # guard against u*(n+1) rounding to n+1
    return target


def last_writer(target: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
    """Resolve slot conflicts the way sequential writes would: the last item wins.

    Args:
        target: ``[m]`` target slot per item in arrival order (``>= capacity``: dropped).
        capacity: number of slots.

    Returns:
        ``(slots, items)``: the slots written, and for each the batch index of the item
        that ends up there (the largest index among the items that targeted it).
    """
    keep = target < capacity
    items = torch.arange(len(target))[keep]  # [k] batch positions, increasing
    slots = target[keep]  # [k]
    winner = torch.full((capacity,), -1, dtype=torch.int64)
    winner.scatter_reduce_(0, slots, items, reduce="amax")  # last item per slot
    written = (winner >= 0).nonzero().squeeze(1)  # [w]
    return written, winner[written]


class ReservoirBuffer:
    """Preallocated reservoir memory of ``(x, y, t)`` triples on one device.

    Attributes:
        x: ``[capacity, *input_shape]`` inputs.
        y: ``[capacity]`` int64 labels.
        t: ``[capacity]`` int64 task ids (each sample keeps its own task).
        seen: number of items offered to :meth:`add` so far.

    Only the first ``len(self)`` slots are filled.
    """

    def __init__(
        self,
        capacity: int,
        input_shape: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        assert capacity >= 1, f"capacity must be >= 1, got {capacity}"
        self.capacity = int(capacity)
        self.x = torch.zeros((self.capacity, *input_shape), dtype=dtype, device=device)
        self.y = torch.zeros(self.capacity, dtype=torch.long, device=device)
        self.t = torch.zeros(self.capacity, dtype=torch.long, device=device)
        self.seen = 0

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    @property
    def device(self) -> torch.device:
        return self.x.device

    @torch.no_grad()
    def add(
        self, x: Tensor, y: Tensor, t: int | Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Offer a batch of items to the reservoir (Algorithm R, vectorised).

        Args:
            x: ``[m, *input_shape]`` inputs.
            y: ``[m]`` labels.
            t: task id of all items, or ``[m]`` per-item task ids.
            generator: the run's strategy generator (one uniform draw per item once full).

        Returns:
            ``(slots, items)`` on the buffer's device: slot ``slots[i]`` now holds batch
            item ``items[i]``; callers storing extra per-item data write it the same way.
        """
        m = len(y)
        target = reservoir_targets(self.seen, m, self.capacity, generator)
        slots, items = last_writer(target, self.capacity)
        slots, items = slots.to(self.device), items.to(self.device)
        self.x[slots] = x[items].to(self.x)
        self.y[slots] = y[items].to(self.device)
        tt = t[items] if isinstance(t, Tensor) else torch.full_like(items, int(t))
        self.t[slots] = tt.to(self.device)
        self.seen += m
        return slots, items

    def sample_indices(self, k: int, generator: torch.Generator) -> Tensor:
        """``k`` slot indices drawn uniformly (with replacement) from the filled part."""
        assert len(self) > 0, "cannot sample from an empty buffer"
        return torch.randint(len(self), (k,), generator=generator).to(self.device)

    def sample(self, k: int, generator: torch.Generator) -> Batch:
        """A memory batch of ``k`` items drawn uniformly, with per-sample task ids."""
        idx = self.sample_indices(k, generator)
        return Batch(self.x[idx], self.y[idx], self.t[idx])

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The filled slots and the count (plain tensors and ints)."""
        n = len(self)
        return {
            "capacity": self.capacity,
            "seen": self.seen,
            "x": self.x[:n].clone(),
            "y": self.y[:n].clone(),
            "t": self.t[:n].clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into this buffer (same capacity and input shape)."""
        assert int(state["capacity"]) == self.capacity, "buffer capacity differs"
        n = len(state["y"])
        self.x.zero_()
        self.y.zero_()
        self.t.zero_()
        self.x[:n] = state["x"].to(self.x)
        self.y[:n] = state["y"].to(self.device)
        self.t[:n] = state["t"].to(self.device)
        self.seen = int(state["seen"])

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str | None = None) -> "ReservoirBuffer":
        """A buffer rebuilt from :meth:`state_dict` alone (shape and dtype from its tensors)."""
        x = state["x"]
        buf = cls(int(state["capacity"]), x.shape[1:], device or x.device, x.dtype)
        buf.load_state_dict(state)
        return buf

    def to(self, device: torch.device | str) -> "ReservoirBuffer":
        """Move the memory to ``device`` in place; returns self."""
        self.x, self.y, self.t = self.x.to(device), self.y.to(device), self.t.to(device)
        return self
