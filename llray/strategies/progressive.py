"""Progressive neural networks: one frozen column per task, with lateral connections.

Rusu, Rabinowitz, Desjardins, Soyer, Kirkpatrick, Kavukcuoglu, Pascanu & Hadsell 2016,
"Progressive Neural Networks", arXiv:1606.04671.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray.config_base import require
from llray.data.stream import Task
from llray.errors import ConfigError
from llray.models import hidden_widths, is_mlp
from llray.strategies.base import Context, Strategy, register


@dataclass(frozen=True)
class ProgressiveConfig:
    """``progressive`` fields.

    Attributes:
        adapters: lateral connections through the paper's non-linear adapters
            ``U σ(V (α h))`` (a learned scale α, a projection V down to one column's
            width, then U); ``false`` uses plain linear laterals ``U h`` (the paper's Eq. 1).
        hidden: hidden widths of every column; empty (default) takes the widths of the
            run's MLP model.
    """

    adapters: bool = True
    hidden: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        require(all(h >= 1 for h in self.hidden), "hidden", f"widths must be >= 1: {self.hidden}")


class Lateral(nn.Module):
    """Lateral connection from the concatenated layer of ``k`` earlier columns."""

    def __init__(self, k: int, width: int, out: int, adapter: bool) -> None:
        super().__init__()
        self.adapter = adapter
        if adapter:
            # α: a learned scalar, initialised to a small random value (Rusu et al. §3)
            self.alpha = nn.Parameter(torch.empty(()).uniform_(0.01, 0.1))
            self.V = nn.Linear(k * width, width)  # projection down to one column's width
            self.U = nn.Linear(width, out, bias=False)
        else:
            self.U = nn.Linear(k * width, out, bias=False)

    def forward(self, h_prev: Tensor) -> Tensor:  # [N, k*width] -> [N, out]
        if self.adapter:
            return self.U(F.relu(self.V(self.alpha * h_prev)))
        return self.U(h_prev)


class Column(nn.Module):
    """Column ``k``: an MLP whose layers ``i >= 1`` (and head) also read, through
    laterals, layer ``i-1`` of every earlier column (Rusu et al., Eq. 1 / Eq. 2).

    ``classes`` (a buffer) are the global class ids its head writes."""

    def __init__(
        self, k: int, widths: Sequence[int], classes: Sequence[int], adapter: bool
    ) -> None:
        super().__init__()
        self.k = k
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], len(classes))
        outs = [*widths[2:], len(classes)]  # lateral targets: hidden layers 1.. and the head
        self.laterals = nn.ModuleList(
            Lateral(k, w, o, adapter) for w, o in zip(widths[1:], outs)
        ) if k > 0 else nn.ModuleList()
        self.register_buffer("classes", torch.tensor(list(classes), dtype=torch.long))

    def forward(self, x: Tensor, prev: list[list[Tensor]]) -> tuple[list[Tensor], Tensor]:
        """``x [N, D]``, ``prev[j][i]`` = hidden layer i of column j -> (own hiddens, logits)."""
        hs: list[Tensor] = []
        h = x
        for i, lin in enumerate(self.layers):
            z = lin(h)
            if i >= 1 and self.k > 0:
                z = z + self.laterals[i - 1](torch.cat([p[i - 1] for p in prev], 1))
            h = F.relu(z)
            hs.append(h)
        out = self.head(h)
        if self.k > 0:
            out = out + self.laterals[-1](torch.cat([p[-1] for p in prev], 1))
        return hs, out


class ProgressiveNet(nn.Module):
    """All columns; ``forward(x)`` writes column k's logits into its task's class slice.

    Task-IL streams give each task a disjoint block of labels and the scenario layer
    masks logits to the sample's block, so no task id is needed here: the logits of
    task j come from column j only, which reads only columns ``<= j``. Classes of tasks
    without a column score 0.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int,
                 adapters: bool = True) -> None:
        super().__init__()
        self.widths = (in_features, *hidden)
        self.num_classes = num_classes
        self.adapters = adapters
        self.columns = nn.ModuleList()
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # follows .to()

    def add_column(self, classes: Sequence[int]) -> Column:
        """Append a new (trainable) column for a task with these classes."""
        col = Column(len(self.columns), self.widths, classes, self.adapters)
        self.columns.append(col.to(self._anchor.device))
        return col

    def forward(self, x: Tensor) -> Tensor:  # [N, *in] -> [N, num_classes]
        x = x.flatten(1)
        out = x.new_zeros(x.shape[0], self.num_classes)
        acts: list[list[Tensor]] = []
        for col in self.columns:
            hs, logits = col(x, acts)
            acts.append(hs)
            out = out.index_copy(1, col.classes, logits)
        return out


@register
class Progressive(Strategy):
    """Progressive neural networks (Rusu et al. 2016), task-incremental.

    ``setup`` replaces the run's MLP with a :class:`ProgressiveNet` of the same hidden
    widths (or ``hidden``). When a task arrives a new column is added (its init drawn
    from the strategy generator) with lateral connections from every earlier column's
    hidden layers; after the task the column is frozen (``requires_grad=False``) and
    training builds its optimizer over trainable parameters only, so no weight decay,
    momentum or other optimizer state ever touches an earlier column. There is no
    batch norm or dropout. Hence task j's logits after any later task are bit-for-bit
    the ones after task j: BWT = 0 exactly. Parameters grow quadratically in the number
    of tasks (laterals), the price of zero forgetting.

    Example config: ``strategies: [{name: progressive, adapters: true}]``.
    """

    name = "progressive"
    scenarios = frozenset({"task"})
    Config = ProgressiveConfig

    def __init__(self, config: ProgressiveConfig | None = None) -> None:
        super().__init__(config)
        self.net: ProgressiveNet | None = None

    def setup(self, model: nn.Module, ctx: Context) -> nn.Module:
        if ctx.scenario != "task":
            raise ConfigError(
                "progressive", f"supports the 'task' scenario only, got {ctx.scenario!r}"
            )
        seen: set[int] = set()
        for t in ctx.stream_info.tasks:
            if seen & set(t.classes):
                raise ConfigError("progressive", "needs tasks with disjoint label sets")
            seen |= set(t.classes)
        hidden = self.config.hidden
        if not hidden:
            if not is_mlp(model):
                raise ConfigError("progressive.hidden", "the model is not an MLP; give the widths")
            hidden = hidden_widths(model)
        in_features = math.prod(ctx.stream_info.input_shape)
        net = ProgressiveNet(in_features, hidden, ctx.stream_info.num_classes, self.config.adapters)
        self.net = net.to(ctx.device)
        return self.net

    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        seed = ctx.strategy_seed()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.add_column(task.classes)

    def after_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        model.columns[-1].requires_grad_(False)

    # -- checkpoints: the columns' architecture; their weights are in the model's state
    def state_dict(self) -> dict:
        cols = self.net.columns if self.net is not None else []
        return {"column_classes": [c.classes.tolist() for c in cols]}

    def load_state_dict(self, state: dict) -> None:
        assert self.net is not None, "call setup before load_state_dict"
        with torch.random.fork_rng(devices=[]):  # values are overwritten by the model's state
            for classes in state["column_classes"][len(self.net.columns):]:
                self.net.add_column(classes)
        self.net.requires_grad_(False)
