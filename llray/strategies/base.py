"""The strategy seam: one small class per continual-learning method.

A strategy keeps its own state (Fisher, anchors, buffer, ...) and returns losses; it
never reaches into the learner. The learner calls, for each task of the order::

    strategy.before_task(model, task, ctx)
    strategy.train_task(model, task, ctx)   # default: minibatch SGD on strategy.loss
    strategy.after_task(model, task, ctx)

and evaluates with ``strategy.predict``. Methods that change the training loop itself
(joint training, A-GEM's projection, generative replay, expansion) override
``train_task``. Scenario rules live in :meth:`Context.logits` alone.

Each strategy has a frozen ``Config`` dataclass whose field names are the ones that
tuning searches (``ewc.lambda_``, ``replay.ratio``, ...); ``__post_init__`` checks them.

Example:
    >>> s = make_strategy("naive", {})
    >>> s.name
    'naive'
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray import optimizers, seeding
from llray.config_base import from_dict, require
from llray.data.stream import Task, TaskStream
from llray.errors import ConfigError, Diverged

MASKED = -1e9  # logit given to classes outside a sample's task in task-IL


@dataclass(frozen=True)
class TrainConfig:
    """How each task is trained (the ``train:`` section of a config)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    eval_batch_size: int = 2048

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")


class Batch(NamedTuple):
    """A minibatch: inputs, global labels, task ids (an int for a one-task batch)."""

    x: Tensor
    y: Tensor
    t: int | Tensor


@dataclass
class Context:
    """What a strategy may know about the run: scenario, device, RNGs, tasks seen so far.

    Two seeded CPU generators, owned by the run (common random numbers, see
    :mod:`llray.seeding`):

    - ``generator`` (``manual_seed(seed)``) draws the batch order and nothing else; use
      it only through :meth:`batches`. Runs with the same seed therefore train on the
      same batches whatever the strategy or its hyperparameters.
    - ``strategy_generator`` (``manual_seed(derive(seed, "strategy"))``) takes every
      draw of a strategy: memory batches, reservoir slots, sampled Fisher labels, MAS
      samples, generator noise, seeds of new modules. Use it directly or through
      :meth:`randint`.

    Both are saved in checkpoints, so a run is a pure function of its config and seed.
    """

    stream_info: TaskStream  # scenario, num_classes, input_shape (use ``seen`` for data)
    train: TrainConfig
    device: torch.device
    generator: torch.Generator  # batch order only (``batches``)
    seen: list[Task] = field(default_factory=list)  # tasks learned before the current one
    samples_trained: int = 0
    class_mask: Tensor | None = None  # [T, C] bool on device; set in task-IL only
    # every strategy draw; None: derived from ``generator``'s seed (``derive(seed, "strategy")``)
    strategy_generator: torch.Generator | None = None
    augment: Callable[[Tensor], Tensor] | None = None  # training-batch augmentation
    # a streamed stream's reader (llray.data.streaming.ShardReader); None: tasks in memory
    reader: Any = None

    def __post_init__(self) -> None:
        if self.strategy_generator is None:
            seed = self.generator.initial_seed()
            self.strategy_generator = seeding.generator(seed, seeding.STRATEGY)

    def augmented(self, x: Tensor) -> Tensor:
        """A training batch's inputs, augmented when the stream asks for it
        (:mod:`llray.data.augment`); never used at evaluation."""
        return x if self.augment is None else self.augment(x)

    @property
    def scenario(self) -> str:
        return self.stream_info.scenario

    def logits(self, model: nn.Module, x: Tensor, t: int | Tensor) -> Tensor:
        """``model(x)`` with, in task-IL, the classes outside each sample's task masked."""
        return self.mask(model(x), t)

    def mask(self, out: Tensor, t: int | Tensor) -> Tensor:
        if self.class_mask is None:
            return out
        return out.masked_fill(~self.class_mask[t], MASKED)

    def batches(self, n: int, batch_size: int | None = None) -> Iterator[Tensor]:
        """Index batches over ``range(n)`` in an order drawn from the data-order generator."""
        bs = batch_size or self.train.batch_size
        perm = torch.randperm(n, generator=self.generator).to(self.device)
        for i in range(0, n, bs):
            yield perm[i : i + bs]

    def randint(self, high: int, size: int) -> Tensor:
        """``size`` integers in ``[0, high)`` from the strategy generator, on the device."""
        return torch.randint(high, (size,), generator=self.strategy_generator).to(self.device)

    def strategy_seed(self) -> int:
        """A fresh seed in ``[0, 2**62)`` from the strategy generator (to seed a module's
        init or a device generator without touching the global RNG)."""
        return int(torch.randint(2**62, (1,), generator=self.strategy_generator))

    def optimizer(self, params: Iterator[nn.Parameter] | list) -> torch.optim.Optimizer:
        cfg = self.train
        if cfg.optimizer == "adam":  # torch's, without its compiler import (llray.optimizers)
            return optimizers.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return optimizers.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )

    @staticmethod
    def check_finite(loss_sum: Tensor) -> None:
        """Raise :class:`Diverged` when an accumulated loss is NaN or infinite."""
        if not bool(torch.isfinite(loss_sum)):
            raise Diverged(f"loss became {float(loss_sum)}")


@dataclass(frozen=True)
class NoConfig:
    """Config of a strategy without hyperparameters."""


class Strategy:
    """Base class: fine-tuning with cross-entropy; subclasses add their own terms."""

    name: ClassVar[str] = "base"
    scenarios: ClassVar[frozenset[str]] = frozenset({"task", "domain", "class"})
    Config: ClassVar[type] = NoConfig

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    # -- hooks ---------------------------------------------------------------------
    def setup(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Called once before the first task; may wrap or replace the model."""
        return model

    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        """Called before training on ``task``."""

    def loss(self, model: nn.Module, batch: Batch, task: Task, ctx: Context) -> Tensor:
        """Training loss of one batch: cross-entropy plus the strategy's own terms."""
        return F.cross_entropy(ctx.logits(model, batch.x, batch.t), batch.y)

    def after_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        """Called after training on ``task`` (consolidation, buffer update, ...)."""

    def train_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        """Minibatch training on ``task`` with :meth:`loss` (:meth:`fit`, or
        :meth:`fit_streamed` when the stream is read from shards); Diverged on NaN."""
        if ctx.reader is not None:
            self.fit_streamed(model, (task.id,), task, ctx)
            return
        self.fit(model, task.x_train, task.y_train, task.id, task, ctx)

    def fit(
        self, model: nn.Module, x: Tensor, y: Tensor, t: int | Tensor, task: Task, ctx: Context
    ) -> None:
        """``train.epochs`` epochs of minibatch steps on ``self.loss`` over (x, y, t).

        Only parameters with ``requires_grad`` are optimised (frozen ones are never
        touched, not even by weight decay or momentum); :meth:`before_step` sees each
        step's gradients before the optimizer applies them.
        """
        per_sample_t = isinstance(t, Tensor)

        def epoch() -> Iterator[tuple[Tensor, Tensor, int | Tensor]]:
            for idx in ctx.batches(len(y)):
                yield x[idx], y[idx], (t[idx] if per_sample_t else t)

        self._fit_epochs(model, epoch, task, ctx)

    def fit_streamed(
        self, model: nn.Module, task_ids: tuple[int, ...], task: Task, ctx: Context
    ) -> None:
        """:meth:`fit` over the training rows of ``task_ids`` read batch by batch from
        shards (``ctx.reader``, :mod:`llray.data.streaming`), shuffled per epoch from the
        data-order generator; rows keep their own task ids when there are several tasks."""

        def epoch() -> Iterator[tuple[Tensor, Tensor, int | Tensor]]:
            for bx, by, bt in ctx.reader.train_batches(task_ids, ctx.generator,
                                                       ctx.train.batch_size):
                yield bx, by, (bt if len(task_ids) > 1 else task.id)

        self._fit_epochs(model, epoch, task, ctx)

    def _fit_epochs(self, model: nn.Module, epoch: Callable[[], Iterator], task: Task,
                    ctx: Context) -> None:
        """``train.epochs`` passes of ``epoch()``'s ``(x, y, t)`` batches on ``self.loss``."""
        params = [p for p in model.parameters() if p.requires_grad]
        opt = ctx.optimizer(params)
        for _ in range(ctx.train.epochs):
            total = torch.zeros((), device=ctx.device)
            n = 0
            for bx, by, bt in epoch():
                loss = self.loss(model, Batch(ctx.augmented(bx), by, bt), task, ctx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                self.before_step(model, params, ctx)
                opt.step()
                total += loss.detach()
                n += len(by)
            ctx.samples_trained += n
            ctx.check_finite(total)

    def before_step(self, model: nn.Module, params: list[nn.Parameter], ctx: Context) -> None:
        """Called in :meth:`fit` after ``loss.backward()``, before the optimizer step; may
        rewrite the trained ``params``' ``.grad`` (A-GEM/GEM project it). Default: nothing."""

    def predict(self, model: nn.Module, x: Tensor, t: int, ctx: Context) -> Tensor:
        """Scores [N, C] for evaluation on task ``t``; argmax is the prediction."""
        return ctx.logits(model, x, t)

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain values needed to resume (loadable with weights_only=True)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


# -- registry -----------------------------------------------------------------------------
_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its ``name``."""
    assert cls.name not in _REGISTRY or _REGISTRY[cls.name] is cls, f"duplicate {cls.name}"
    _REGISTRY[cls.name] = cls
    return cls


@functools.cache
def _discover() -> None:
    """Import every module of ``llray.strategies`` once, so each registers itself (the
    driver asks for every finished run: listing the package each time cost 2 ms)."""
    import llray.strategies as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"llray.strategies.{info.name}")


def strategy_names() -> list[str]:
    """Names of all registered strategies, sorted."""
    _discover()
    return sorted(_REGISTRY)


def strategy_class(name: str, where: str = "strategy") -> type[Strategy]:
    """The class registered as ``name``; ConfigError listing the known names otherwise."""
    names = strategy_names()
    if name not in _REGISTRY:
        raise ConfigError(where, f"unknown strategy {name!r}; known: {', '.join(names)}")
    return _REGISTRY[name]


def make_config(name: str, params: Mapping[str, Any] | None) -> Any:
    """The checked config dataclass of strategy ``name`` from ``params``."""
    return from_dict(strategy_class(name).Config, params, name)


def make_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """A fresh strategy instance; bad names or values raise ConfigError."""
    cls = strategy_class(name)
    return cls(make_config(name, params))


def check_scenario(name: str, scenario: str) -> None:
    """ConfigError when strategy ``name`` does not support ``scenario``."""
    cls = strategy_class(name)
    if scenario not in cls.scenarios:
        allowed = ", ".join(sorted(cls.scenarios))
        raise ConfigError(
            f"{name}", f"does not support the {scenario!r} scenario; it supports: {allowed}"
        )
