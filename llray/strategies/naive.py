"""Naive fine-tuning: the lower bound every report shows."""

from llray.strategies.base import Strategy, register


@register
class Naive(Strategy):
    """Plain fine-tuning on each new task with cross-entropy; no protection at all.

    The lower bound of continual learning: it forgets (BWT clearly negative on a
    shifting stream). Example config: ``strategies: [naive]``.
    """

    name = "naive"
