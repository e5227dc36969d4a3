"""Deep Generative Replay: a generator replays pseudo-samples of earlier tasks.

Shin, Lee, Kim & Kim 2017, "Continual Learning with Deep Generative Replay", NeurIPS.
The GAN is trained as in the paper with WGAN-GP (Gulrajani, Ahmed, Arjovsky, Dumoulin &
Courville 2017, "Improved Training of Wasserstein GANs"); the VAE alternative follows
Kingma & Welling 2014, "Auto-Encoding Variational Bayes".
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray import optimizers
from llray.config_base import require
from llray.data.pixels import to_float
from llray.data.stream import Task
from llray.strategies.base import MASKED, Batch, Context, Strategy, register


@dataclass(frozen=True)
class GenerativeReplayConfig:
    """``generative_replay`` fields.

    Attributes:
        generator: ``gan`` (WGAN-GP, as in the paper) or ``vae``.
        latent_dim: size of the generator's noise / latent code.
        hidden: width of the generator's (and critic's, encoder's) two hidden layers.
        generator_epochs: passes over the current task's data per task when training the
            generator (one generator update per minibatch).
        generator_lr: Adam learning rate of the generator (and critic / encoder).
        ratio: ``r``, the weight of the current task's real data in the solver's loss
            ``r·L(real) + (1−r)·L(replay)`` and the share of real samples in the
            generator's training batches; ``null`` (default) uses ``1/N`` with ``N`` the
            number of tasks learned including the current one, so every task counts
            equally.
        replay_batch_size: replayed samples per solver step; ``null`` = ``train.batch_size``.
        targets: replayed samples are labelled by the previous solver: ``hard`` (its
            predicted class, the paper) or ``soft`` (its softmax, as a distillation target).
        critic_iters: WGAN-GP critic updates per generator update.
        gp_weight: WGAN-GP gradient-penalty weight λ.
    """

    generator: Literal["gan", "vae"] = "gan"
    latent_dim: int = 32
    hidden: int = 256
    generator_epochs: int = 30
    generator_lr: float = 1e-3
    ratio: float | None = None
    replay_batch_size: int | None = None
    targets: Literal["hard", "soft"] = "hard"
    critic_iters: int = 5
    gp_weight: float = 10.0

    def __post_init__(self) -> None:
        require(self.generator in ("gan", "vae"), "generator",
                f"must be 'gan' or 'vae', got {self.generator!r}")
        require(self.latent_dim >= 1, "latent_dim", f"must be >= 1, got {self.latent_dim}")
        require(self.hidden >= 1, "hidden", f"must be >= 1, got {self.hidden}")
        require(self.generator_epochs >= 1, "generator_epochs",
                f"must be >= 1, got {self.generator_epochs}")
        require(self.generator_lr > 0, "generator_lr", f"must be > 0, got {self.generator_lr}")
        require(self.ratio is None or 0 < self.ratio <= 1, "ratio",
                f"must be in (0, 1] or null (1/tasks), got {self.ratio}")
        require(self.replay_batch_size is None or self.replay_batch_size >= 1,
                "replay_batch_size", f"must be >= 1 or null, got {self.replay_batch_size}")
        require(self.targets in ("hard", "soft"), "targets",
                f"must be 'hard' or 'soft', got {self.targets!r}")
        require(self.critic_iters >= 1, "critic_iters", f"must be >= 1, got {self.critic_iters}")
        require(self.gp_weight >= 0, "gp_weight", f"must be >= 0, got {self.gp_weight}")


def _mlp(sizes: list[int], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])  # no activation after the last layer


class Generative(nn.Module):
    """A generator of flat inputs; ``bounded`` data in [0, 1] gets a sigmoid output."""

    def __init__(self, dim: int, cfg: GenerativeReplayConfig) -> None:
        super().__init__()
        self.dim, self.latent_dim = dim, cfg.latent_dim
        self.decoder = _mlp([cfg.latent_dim, cfg.hidden, cfg.hidden, dim], nn.ReLU)
        self.bounded = True

    def decode(self, z: Tensor) -> Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) if self.bounded else out

    @torch.no_grad()
    def sample(self, n: int, g: torch.Generator) -> Tensor:  # -> [n, dim]
        z = torch.randn(n, self.latent_dim, generator=g, device=g.device)
        return self.decode(z)

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        raise NotImplementedError

    def step(self, real: Tensor, g: torch.Generator, opts: list, draw) -> Tensor:
        """One training step on a batch ``real`` [n, dim] of the data to imitate;
        ``draw()`` gives another such batch. Returns the loss (to check it is finite)."""
        raise NotImplementedError


class WGANGP(Generative):
    """Generator + critic trained with the Wasserstein loss and gradient penalty."""

    def __init__(self, dim: int, cfg: GenerativeReplayConfig) -> None:
        super().__init__(dim, cfg)
        self.critic = _mlp([dim, cfg.hidden, cfg.hidden, 1], lambda: nn.LeakyReLU(0.2))
        self.critic_iters, self.gp_weight = cfg.critic_iters, cfg.gp_weight

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        betas = (0.5, 0.9)  # as in Gulrajani et al.
        return [optimizers.Adam(self.decoder.parameters(), lr=lr, betas=betas),
                optimizers.Adam(self.critic.parameters(), lr=lr, betas=betas)]

    def step(self, real: Tensor, g: torch.Generator, opts: list, draw) -> Tensor:
        opt_g, opt_d = opts
        for it in range(self.critic_iters):
            x = real if it == 0 else draw()  # a fresh (mixed) real batch per critic update
            n = len(x)
            fake = self.sample(n, g)
            eps = torch.rand(n, 1, generator=g, device=g.device)
            xi = (eps * x + (1 - eps) * fake).requires_grad_(True)
            grad, = torch.autograd.grad(self.critic(xi).sum(), xi, create_graph=True)
            gp = ((grad.norm(dim=1) - 1) ** 2).mean()
            d_loss = self.critic(fake).mean() - self.critic(x).mean() + self.gp_weight * gp
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        z = torch.randn(len(real), self.latent_dim, generator=g, device=g.device)
        g_loss = -self.critic(self.decode(z)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return d_loss.detach() + g_loss.detach()


class VAE(Generative):
    """Variational auto-encoder; samples decode ``z ~ N(0, I)``."""

    def __init__(self, dim: int, cfg: GenerativeReplayConfig) -> None:
        super().__init__(dim, cfg)
        self.encoder = _mlp([dim, cfg.hidden, cfg.hidden], nn.ReLU)
        self.to_stats = nn.Linear(cfg.hidden, 2 * cfg.latent_dim)  # mean, log-variance

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [optimizers.Adam(self.parameters(), lr=lr)]

    def step(self, real: Tensor, g: torch.Generator, opts: list, draw) -> Tensor:
        mu, logvar = self.to_stats(F.relu(self.encoder(real))).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g, device=g.device)
        out = self.decoder(z)
        if self.bounded:
            rec = F.binary_cross_entropy_with_logits(out, real, reduction="none").sum(1)
        else:
            rec = 0.5 * ((out - real) ** 2).sum(1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        loss = (rec + kl).mean()
        opts[0].zero_grad(set_to_none=True)
        loss.backward()
        opts[0].step()
        return loss.detach()


@register
class GenerativeReplay(Strategy):
    """Deep Generative Replay (Shin et al. 2017): a *scholar* = generator + solver.

    When task ``N`` arrives, the solver (the run's model) is trained on
    ``r·CE(real batch) + (1−r)·L(replayed batch)``, where the replayed inputs are drawn
    from the generator as it was after task ``N−1`` and labelled by the solver as it was
    after task ``N−1`` (its prediction among the classes learned so far). The generator
    is then trained, continuing from its previous weights, on a mixture of the current
    task's real inputs (share ``r``) and its own earlier replays (share ``1−r``), so it
    learns to generate every task seen. No real data of earlier tasks is kept: the state
    is the generator (and, while a task is learned, a frozen copy of the previous
    solver and generator).

    In task-IL a replayed sample has no task of its own (the generator makes inputs,
    not tasks), and the heads of different tasks are never trained against each other,
    so an argmax over all old classes picks the wrong task for many samples. As in van de
    Ven's reference code (``train_task_based.py``, ``per_context``), every replayed
    sample is therefore scored on *each* earlier task's head: the previous solver's
    prediction on head ``k`` is the target for the current solver's head ``k``, and the
    replay loss is the mean over the earlier tasks.

    Example config: ``strategies: [{name: generative_replay, generator: gan}]``.
    """

    name = "generative_replay"
    scenarios = frozenset({"task", "domain", "class"})
    Config = GenerativeReplayConfig

    def __init__(self, config: GenerativeReplayConfig | None = None) -> None:
        super().__init__(config)
        self.generator: Generative | None = None
        self.prev_generator: Generative | None = None
        self.prev_solver: nn.Module | None = None
        self.old_classes: Tensor | None = None  # [C] bool: classes of the tasks learned
        self.class_task: Tensor | None = None  # [C] task id owning each class (task-IL)
        self.tasks_learned = 0
        self._g: torch.Generator | None = None  # the current task's replay generator

    def setup(self, model: nn.Module, ctx: Context) -> nn.Module:
        dim = math.prod(ctx.stream_info.input_shape)
        seed = ctx.strategy_seed()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            cls = WGANGP if self.config.generator == "gan" else VAE
            self.generator = cls(dim, self.config).to(ctx.device)
        owner = torch.zeros(ctx.stream_info.num_classes, dtype=torch.long)
        for t in ctx.stream_info.tasks:
            owner[list(t.classes)] = t.id
        self.class_task = owner.to(ctx.device)
        self.old_classes = torch.zeros(ctx.stream_info.num_classes, dtype=torch.bool,
                                       device=ctx.device)
        return model

    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        if self.tasks_learned == 0:  # inputs in [0, 1] get a sigmoid generator output
            x = to_float(task.x_train)
            self.generator.bounded = bool(x.min() >= 0) and bool(x.max() <= 1)
        self.prev_solver = self.prev_generator = None
        if self.tasks_learned > 0:
            self.prev_solver = copy.deepcopy(model).eval().requires_grad_(False)
            self.prev_generator = copy.deepcopy(self.generator).eval().requires_grad_(False)

    def _ratio(self) -> float:
        return self.config.ratio if self.config.ratio is not None else 1 / (self.tasks_learned + 1)

    def _device_generator(self, ctx: Context) -> torch.Generator:
        """A generator on the run's device, seeded from the strategy generator."""
        seed = ctx.strategy_seed()
        return torch.Generator(device=ctx.device).manual_seed(seed)

    def train_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        self._g = self._device_generator(ctx)  # replays of this task's steps, then the GAN/VAE
        self.fit(model, task.x_train, task.y_train, task.id, task, ctx)
        self._train_generator(task, ctx, self._g)

    def _replay(self, n: int, g: torch.Generator, ctx: Context) -> tuple[Tensor, Tensor]:
        """``n`` generated inputs [n, *shape] and the previous solver's raw logits [n, C]."""
        x = self.prev_generator.sample(n, g).view(n, *ctx.stream_info.input_shape)
        with torch.no_grad():
            return x, self.prev_solver(x)

    def _old_tasks(self) -> Tensor:
        """Ids of the tasks learned so far (those owning a learned class)."""
        return torch.unique(self.class_task[self.old_classes])

    def loss(self, model: nn.Module, batch: Batch, task: Task, ctx: Context) -> Tensor:
        """``r · CE(current batch) + (1 − r) · loss on replays of the earlier tasks``."""
        loss = F.cross_entropy(ctx.logits(model, batch.x, batch.t), batch.y)
        if self.prev_generator is None:
            return loss
        r = self._ratio()
        nb = self.config.replay_batch_size or ctx.train.batch_size
        return r * loss + (1 - r) * self._replay_loss(model, task, ctx, self._g, nb)

    def _replay_loss(self, model, task, ctx, g, n: int) -> Tensor:
        """The loss on ``n`` replays: on the classes learned so far (class-IL), all
        outputs (domain-IL), or on each earlier task's head, averaged (task-IL)."""
        xr, old = self._replay(n, g, ctx)
        out = model(xr)  # [n, C]
        if ctx.scenario == "task":
            heads = ctx.class_mask[self._old_tasks()]  # [K, C]: one row per earlier task
            out = out.unsqueeze(1).masked_fill(~heads, MASKED)  # [n, K, C]
            old = old.unsqueeze(1).masked_fill(~heads, MASKED)
        else:
            out = ctx.mask(out, task.id)
            old = old.masked_fill(~self.old_classes, MASKED)
        C = out.shape[-1]
        if self.config.targets == "hard":  # the mean over samples (and heads)
            return F.cross_entropy(out.reshape(-1, C), old.argmax(-1).reshape(-1))
        p = torch.softmax(old, dim=-1)
        return -(p * torch.log_softmax(out, dim=-1)).sum(-1).mean()

    def _train_generator(self, task: Task, ctx: Context, g: torch.Generator) -> None:
        gen, cfg = self.generator, self.config
        gen.train()
        opts = gen.optimizers(cfg.generator_lr)
        x_all = to_float(task.x_train).flatten(1)  # the generator learns floats in [0, 1]
        n_all, bs, r = len(x_all), ctx.train.batch_size, self._ratio()

        def mixed(idx: Tensor) -> Tensor:
            """Real inputs ``x_all[idx]`` plus replays, so that a share ``r`` is real."""
            if self.prev_generator is None:
                return x_all[idx]
            n_fake = round(len(idx) * (1 - r) / r)
            return torch.cat([x_all[idx], self.prev_generator.sample(n_fake, g)])

        def draw() -> Tensor:  # a fresh mixed batch (for the extra critic updates)
            return mixed(torch.randint(n_all, (bs,), generator=g, device=g.device))

        for _ in range(cfg.generator_epochs):
            total = torch.zeros((), device=ctx.device)
            perm = torch.randperm(n_all, generator=g, device=g.device)
            for i in range(0, n_all, bs):
                total += gen.step(mixed(perm[i : i + bs]), g, opts, draw)
            ctx.check_finite(total)
        gen.eval()

    def after_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        self.old_classes[list(task.classes)] = True
        self.tasks_learned += 1
        self.prev_solver = self.prev_generator = None  # only needed while training

    # -- checkpoints: the generator (no data), what it has learned so far -----------------
    def state_dict(self) -> dict:
        return {
            "generator": self.generator.state_dict() if self.generator is not None else {},
            "bounded": self.generator.bounded if self.generator is not None else True,
            "old_classes": self.old_classes,
            "tasks_learned": self.tasks_learned,
        }

    def load_state_dict(self, state: dict) -> None:
        assert self.generator is not None, "call setup before load_state_dict"
        self.generator.load_state_dict(state["generator"])
        self.generator.bounded = bool(state["bounded"])
        self.old_classes = state["old_classes"]
        self.tasks_learned = int(state["tasks_learned"])
