"""Grouping a sweep's grid into packs: runs that can train as one batched model.

Runs share a pack when they share the stream, the model, the resources, the strategy
and every strategy field that shapes tensors (``PackStrategy.shared``, e.g. a replay
buffer's size), and the training loop's shape (optimizer kind, epochs, batch sizes).
Seeds, orders, learning rate, momentum, weight decay and the other strategy fields
(``ewc.lambda_``, ``replay.ratio``, ...) may differ within a pack. A strategy without a
pack version gets packs of one: it runs unpacked.

Example:
    >>> from llray.config import parse_config
    >>> cfg = parse_config({"strategies": ["naive", "gem"], "seeds": [0, 1, 2],
    ...                     "resources": {"pack": 2}})
    >>> [len(p) for p in group_packs(cfg.runs(), 2)]
    [2, 1, 1, 1, 1]
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from llray.config import RunSpec
from llray.packs.strategies import PACKED


def pack_key(spec: RunSpec) -> Hashable | None:
    """What runs of one pack must share; None when the strategy has no pack version."""
    cls = PACKED.get(spec.strategy.name)
    if cls is None:
        return None
    cfg = spec.strategy.config()
    t = spec.train
    return (spec.stream, spec.model, spec.resources, spec.strategy.name,
            tuple(getattr(cfg, f) for f in cls.shared),
            t.optimizer, t.epochs, t.batch_size, t.eval_batch_size)


def group_packs(specs: Sequence[RunSpec], size: int) -> list[list[RunSpec]]:
    """``specs`` as packs of at most ``size`` runs, in the grid's order of first appearance;
    runs that cannot share a pack are packs of one."""
    groups: dict[Hashable, list[RunSpec]] = {}
    alone: list[list[RunSpec]] = []
    order: list[tuple[str, Hashable]] = []
    for s in specs:
        key = pack_key(s) if size > 1 else None
        if key is None:
            alone.append([s])
            order.append(("alone", len(alone) - 1))
            continue
        if key not in groups:
            groups[key] = []
            order.append(("group", key))
        groups[key].append(s)
    packs: list[list[RunSpec]] = []
    for kind, key in order:
        if kind == "alone":
            packs.append(alone[key])
        else:
            g = groups[key]
            packs += [g[i : i + size] for i in range(0, len(g), size)]
    return packs
