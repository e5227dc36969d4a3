"""iCaRL: herding exemplars, distillation, nearest-mean-of-exemplars classification.

Rebuffi, Kolesnikov, Sperl & Lampert 2017, "iCaRL: Incremental Classifier and
Representation Learning", CVPR.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray.config_base import require
from llray.data.stream import Task
from llray.errors import ConfigError
from llray.strategies.base import MASKED, Batch, Context, Strategy, register


@dataclass(frozen=True)
class ICaRLConfig:
    """``icarl`` fields.

    Attributes:
        memory_size: total number of exemplars ``K``, shared evenly by the classes seen
            so far (``K // classes`` each; old sets are cut when new classes arrive).
        selection: ``herding`` (the paper) or ``random`` (an ablation baseline).
    """

    memory_size: int = 200
    selection: Literal["herding", "random"] = "herding"

    def __post_init__(self) -> None:
        require(self.memory_size >= 1, "memory_size", f"must be >= 1, got {self.memory_size}")
        require(self.selection in ("herding", "random"), "selection",
                f"must be 'herding' or 'random', got {self.selection!r}")


def normalized_features(model: nn.Module, x: Tensor, batch_size: int = 2048) -> Tensor:
    """L2-normalised ``model.features(x)`` [N, D], computed in batches without gradients."""
    with torch.no_grad():
        parts = [model.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return F.normalize(torch.cat(parts).flatten(1), dim=1)


def herding(features: Tensor, m: int) -> Tensor:
    """Indices of ``m`` exemplars chosen by herding, in priority order (Rebuffi et al.,
    Algorithm 4): step k picks the sample that brings the mean of the k chosen features
    closest to the mean of all ``features`` (each sample is picked at most once).

    Args:
        features: ``[n, D]`` (normalised) features of one class's samples.
        m: how many to pick (at most ``n``).

    Example:
        >>> herding(torch.tensor([[0.0], [1.0], [2.0]]), 2).tolist()
        [1, 0]
    """
    n = features.shape[0]
    m = min(m, n)
    mu = features.mean(0)
    running = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    chosen = []
    for k in range(1, m + 1):
        dist = (mu - (running + features) / k).norm(dim=1).masked_fill(taken, float("inf"))
        i = dist.argmin()
        chosen.append(i)
        running = running + features[i]
        taken[i] = True
    return torch.stack(chosen) if chosen else torch.zeros(0, dtype=torch.long)


def nme_scores(feats: Tensor, means: Tensor, known: Tensor) -> Tensor:
    """Negative Euclidean distance of normalised features [N, D] to class means [C, D];
    classes not ``known`` [C] score ``MASKED``."""
    d = torch.cdist(feats, means, compute_mode="donot_use_mm_for_euclid_dist")
    return (-d).masked_fill(~known, MASKED)


@register
class ICaRL(Strategy):
    """iCaRL (Rebuffi et al. 2017), class-incremental.

    - **Exemplars**: a fixed total memory of ``memory_size`` real samples, split evenly
      over the classes seen so far. After each task, every old class's set is cut to its
      first ``K // classes`` exemplars (they are stored in herding priority order), and
      each new class gets that many, chosen by :func:`herding` on L2-normalised features.
    - **Training** on the new task's data plus all exemplars with sigmoid binary
      cross-entropy over the classes seen so far: one-hot targets for the new classes and,
      as distillation, the previous model's sigmoid outputs for the old classes.
    - **Classification** by nearest mean of exemplars: ``predict`` returns the negative
      distance of the normalised feature to each class's (normalised) exemplar mean.

    The model must follow the feature protocol of :mod:`llray.models`: ``model.features(x)``
    returns the representation, ``model.head`` the logits (MLP and ConvNet both do).

    Example config: ``strategies: [{name: icarl, memory_size: 200}]``.
    """

    name = "icarl"
    scenarios = frozenset({"class"})
    Config = ICaRLConfig

    def __init__(self, config: ICaRLConfig | None = None) -> None:
        super().__init__(config)
        self.exemplars: dict[int, Tensor] = {}  # class -> [m, *input_shape], priority order
        self.means: Tensor | None = None  # [C, D] normalised exemplar means
        self.known: Tensor | None = None  # [C] bool, classes with a mean
        self.old_model: nn.Module | None = None  # frozen copy, during training only
        self._cls: Tensor | None = None  # classes trained on now (old + new), sorted
        self._old_pos: Tensor | None = None  # positions of the old classes within _cls

    def setup(self, model: nn.Module, ctx: Context) -> nn.Module:
        if not (hasattr(model, "features") and hasattr(model, "head")):
            raise ConfigError("icarl", "needs a model with .features and .head (mlp, convnet)")
        n = ctx.stream_info.num_classes
        if self.config.memory_size < n:
            raise ConfigError(
                "icarl.memory_size",
                f"{self.config.memory_size} cannot hold one exemplar for each of {n} classes",
            )
        return model

    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        old = sorted(self.exemplars)
        cls = sorted(set(old) | set(task.classes))
        self._cls = torch.tensor(cls, device=ctx.device)
        self._old_pos = torch.tensor([cls.index(c) for c in old], dtype=torch.long,
                                     device=ctx.device)
        self.old_model = None
        if old:
            self.old_model = copy.deepcopy(model).eval().requires_grad_(False)

    def train_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        """Train on the new task's data together with every stored exemplar."""
        xs = [task.x_train, *self.exemplars.values()]
        ys = [task.y_train, *(torch.full((len(e),), c, device=ctx.device)
                              for c, e in self.exemplars.items())]
        self.fit(model, torch.cat(xs), torch.cat(ys), task.id, task, ctx)

    def loss(self, model: nn.Module, batch: Batch, task: Task, ctx: Context) -> Tensor:
        """Classification + distillation, sigmoid BCE over the classes seen so far."""
        logits = ctx.logits(model, batch.x, batch.t)[:, self._cls]  # [B, K]
        target = (batch.y[:, None] == self._cls[None, :]).to(logits.dtype)
        if self.old_model is not None:
            with torch.no_grad():
                old = torch.sigmoid(self.old_model(batch.x)[:, self._cls[self._old_pos]])
            target[:, self._old_pos] = old
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return bce.sum(1).mean()

    @torch.no_grad()
    def after_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        """Cut old exemplar sets, select the new classes' sets, recompute class means."""
        self.old_model = None
        was_training = model.training
        model.eval()
        classes = sorted(set(self.exemplars) | set(task.classes))
        m = self.config.memory_size // len(classes)
        for c in list(self.exemplars):
            self.exemplars[c] = self.exemplars[c][:m]  # ReduceExemplarSet
        for c in task.classes:
            xc = task.x_train[task.y_train == c]
            self.exemplars[c] = xc[self._select(model, xc, m, ctx)]
        self._update_means(model, ctx)
        model.train(was_training)

    def _select(self, model: nn.Module, xc: Tensor, m: int, ctx: Context) -> Tensor:
        if self.config.selection == "random":
            perm = torch.randperm(len(xc), generator=ctx.strategy_generator).to(xc.device)
            return perm[:m]
        return herding(normalized_features(model, xc), m)

    def _update_means(self, model: nn.Module, ctx: Context) -> None:
        C = ctx.stream_info.num_classes
        means, known = None, torch.zeros(C, dtype=torch.bool, device=ctx.device)
        for c, ex in self.exemplars.items():
            if len(ex) == 0:
                continue
            mu = F.normalize(normalized_features(model, ex).mean(0), dim=0)
            if means is None:
                means = torch.zeros(C, mu.shape[0], device=ctx.device, dtype=mu.dtype)
            means[c], known[c] = mu, True
        self.means, self.known = means, known

    def predict(self, model: nn.Module, x: Tensor, t: int, ctx: Context) -> Tensor:
        """Nearest mean of exemplars; the model's logits before the first task is learned."""
        if self.means is None:
            return ctx.logits(model, x, t)
        return nme_scores(normalized_features(model, x), self.means, self.known)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        classes = sorted(self.exemplars)
        return {
            "classes": classes,
            "exemplars": [self.exemplars[c] for c in classes],
            "means": self.means,
            "known": self.known,
        }

    def load_state_dict(self, state: dict) -> None:
        self.exemplars = dict(zip(state["classes"], state["exemplars"]))
        self.means, self.known = state["means"], state["known"]
