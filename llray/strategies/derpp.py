"""Dark Experience Replay++ (Buzzega et al. 2020).

Buzzega, Boschini, Porrello, Abati & Calderara 2020, "Dark Experience for General
Continual Learning: a Strong, Simple Baseline", NeurIPS. A reservoir buffer keeps, for
every stored sample, its input, label, task id **and the logits the network gave it when
it was stored**. Each step minimises (Eq. 6)::

    CE(h(x), y) + α · MSE(h(x'), z') + β · CE(h(x''), y'')

with ``(x, y)`` the current batch, ``(x', z')`` and ``(x'', y'')`` two independent
batches drawn from the buffer, ``z'`` the stored logits. The buffer is filled during
training, on every incoming batch, by reservoir sampling (Vitter's Algorithm R, shared
with replay and A-GEM: :mod:`llray.strategies._buffer`), as in the paper's Algorithm 1;
the replayed batches are drawn before the current batch is inserted. Logits are stored
raw (unmasked) from the same forward pass that computes the loss, i.e. before that
step's update. The MSE is the mean over logit entries (as the authors' code); in
task-IL only the entries of each sample's own head are compared, and each replayed
sample is scored with its own head. A step's cost does not depend on how many tasks
were seen.

Example config::

    strategies:
      - {name: derpp, alpha: 0.5, beta: 0.5, buffer_size: 200}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray.config_base import require
from llray.data.stream import Task
from llray.strategies._buffer import ReservoirBuffer
from llray.strategies.base import Batch, Context, Strategy, register


@dataclass(frozen=True)
class DERPPConfig:
    """Hyperparameters of :class:`DERPP`.

    Attributes:
        alpha: weight α of the logit-matching (MSE) term (>= 0).
        beta: weight β of the replayed-label cross-entropy (>= 0; 0 gives plain DER).
        buffer_size: buffer capacity in samples, shared by all tasks (>= 1).
        mem_batch_size: samples in each of the two replayed batches; null: the train
            batch size.
    """

    alpha: float = 0.5
    beta: float = 0.5
    buffer_size: int = 200
    mem_batch_size: int | None = None

    def __post_init__(self) -> None:
        require(self.alpha >= 0, "alpha", f"must be >= 0, got {self.alpha}")
        require(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")
        require(self.buffer_size >= 1, "buffer_size", f"must be >= 1, got {self.buffer_size}")
        require(
            self.mem_batch_size is None or self.mem_batch_size >= 1,
            "mem_batch_size",
            f"must be >= 1 or null (the train batch size), got {self.mem_batch_size}",
        )


def logit_mse(out: Tensor, z: Tensor, t: Tensor, ctx: Context) -> Tensor:
    """Mean squared error between logits ``out`` and stored ``z`` ``[k, C]``; in task-IL
    over the entries of each sample's own head only."""
    if ctx.class_mask is None:
        return F.mse_loss(out, z)
    head = ctx.class_mask[t].to(out.dtype)  # [k, C]
    return ((out - z).square() * head).sum() / head.sum().clamp_min(1)


@register
class DERPP(Strategy):
    """DER++: replay of labels and of the logits stored at insertion time.

    Example:
        >>> from llray.strategies import make_strategy
        >>> make_strategy("derpp", {"alpha": 0.3, "beta": 1.0}).config
        DERPPConfig(alpha=0.3, beta=1.0, buffer_size=200, mem_batch_size=None)
    """

    name = "derpp"
    Config = DERPPConfig

    def __init__(self, config: DERPPConfig | None = None) -> None:
        super().__init__(config)
        self.buffer: ReservoirBuffer | None = None
        self.logits: Tensor | None = None  # [capacity, C], parallel to the buffer's slots

    def setup(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.buffer is None:
            self.buffer = ReservoirBuffer(
                self.config.buffer_size, ctx.stream_info.input_shape, ctx.device
            )
            self.logits = torch.zeros(self.config.buffer_size, ctx.stream_info.num_classes,
                                      device=ctx.device)
        self._to(ctx.device)
        return model

    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        self.setup(model, ctx)

    # -- the loss ------------------------------------------------------------------------
    def replay_loss(self, model: nn.Module, i1: Tensor, i2: Tensor, ctx: Context) -> Tensor:
        """``α · MSE(h(x'), z') + β · CE(h(x''), y'')`` for buffer slots ``i1`` and ``i2``."""
        buf, k = self.buffer, len(i1)
        assert buf is not None and self.logits is not None
        idx = torch.cat([i1, i2])
        out = model(buf.x[idx])  # [2k, C]: one forward pass for both replayed batches
        mse = logit_mse(out[:k], self.logits[i1], buf.t[i1], ctx)
        ce = F.cross_entropy(ctx.mask(out[k:], buf.t[i2]), buf.y[i2])
        return self.config.alpha * mse + self.config.beta * ce

    def loss(self, model: nn.Module, batch: Batch, task: Task, ctx: Context) -> Tensor:
        """The DER++ loss of one step; then the batch (with its logits) joins the buffer."""
        if self.buffer is None:
            self.setup(model, ctx)
        out = model(batch.x)  # [N, C] raw logits
        loss = F.cross_entropy(ctx.mask(out, batch.t), batch.y)
        cfg = self.config
        if len(self.buffer) > 0 and (cfg.alpha > 0 or cfg.beta > 0):
            k = cfg.mem_batch_size or ctx.train.batch_size
            i1 = self.buffer.sample_indices(k, ctx.strategy_generator)
            i2 = self.buffer.sample_indices(k, ctx.strategy_generator)
            loss = loss + self.replay_loss(model, i1, i2, ctx)
        self.observe(batch, out.detach(), ctx)
        return loss

    @torch.no_grad()
    def observe(self, batch: Batch, logits: Tensor, ctx: Context) -> None:
        """Reservoir-insert the batch, and write each stored item's logits to its slot."""
        assert self.buffer is not None and self.logits is not None
        slots, items = self.buffer.add(batch.x, batch.y, batch.t, ctx.strategy_generator)
        self.logits[slots] = logits[items].to(self.logits)

    # -- checkpoints ------------------------------------------------------------------------
    def _to(self, device: torch.device) -> None:
        if self.buffer is not None:
            self.buffer.to(device)
            self.logits = self.logits.to(device)

    def state_dict(self) -> dict:
        if self.buffer is None:
            return {}
        return {"buffer": self.buffer.state_dict(),
                "logits": self.logits[: len(self.buffer)].clone()}

    def load_state_dict(self, state: dict) -> None:
        if "buffer" not in state:
            return
        if self.buffer is None:
            self.buffer = ReservoirBuffer.from_state(state["buffer"])
            logits = state["logits"]
            self.logits = torch.zeros(self.buffer.capacity, logits.shape[1],
                                      dtype=logits.dtype, device=self.buffer.device)
        else:
            self.buffer.load_state_dict(state["buffer"])
            self.logits.zero_()
        self.logits[: len(state["logits"])] = state["logits"].to(self.logits)
