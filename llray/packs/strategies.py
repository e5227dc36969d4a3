"""Pack versions of the strategies: per-run losses ``[K]`` of a batched step.

A pack strategy trains a :class:`~llray.packs.run.PackRun`'s batched model on per-run
batches and returns one loss per run; the pack sums them (each run gets its own
gradient). Per-run hyperparameters (``ewc.lambda_``, ``replay.ratio``, ...) are ``[K]``
tensors read from each member's own config. The per-task hooks (``before_task``,
``after_task``: Fisher, importances, buffer fills) are the members' own single-run
strategy code, run on their plain models with their own generators, so a run's state
in a pack is the state it has alone (and checkpoints in the same format). Every random
draw a step needs comes from the member's strategy generator in the order the run
draws it alone (batch order from ``ctx.generator``, every strategy draw from
``ctx.strategy_generator``); replay and A-GEM draw a whole epoch's memory indices when
the epoch starts (the same numbers: a CPU generator's ``randint`` of ``S·k`` values
equals ``S`` draws of ``k``), so a step needs nothing from the host.

Strategies with a pack version: naive, joint, ewc (every Fisher kind, online), replay,
si, mas, lwf, agem, derpp. Fields in ``shared`` must be equal within a pack (they shape
tensors); the others may differ run by run. Every other strategy runs unpacked:
:func:`check_packable` says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from llray.errors import ConfigError
from llray.strategies._fisher import trainable
from llray.strategies.base import MASKED, Context

if TYPE_CHECKING:
    from llray.packs.run import PackRun


@dataclass
class PackBatch:
    """One step of a pack: ``x [K, B, *in]``, ``y [K, B]``, task ids ``t [K, B]``,
    sample weights ``w [K, B]`` (1 real, 0 padding; None: every sample is real)."""

    x: Tensor
    y: Tensor
    t: Tensor
    w: Tensor | None = None


def strategy_generator(ctx: Context) -> torch.Generator:
    """The generator every strategy draw of a run comes from (common random numbers:
    the batch order has its own, ``ctx.generator``, used through ``ctx.batches``)."""
    return ctx.strategy_generator


def mean_ce(out: Tensor, y: Tensor, w: Tensor | None = None) -> Tensor:
    """Per-run mean cross-entropy ``[K]`` of logits ``[K, B, C]`` over the real samples."""
    K, B = y.shape
    ce = F.cross_entropy(out.reshape(K * B, -1), y.reshape(-1), reduction="none").view(K, B)
    return ce.mean(1) if w is None else (ce * w).sum(1) / w.sum(1).clamp_min(1)


class PackStrategy:
    """Base: cross-entropy per run (naive fine-tuning); subclasses add their terms."""

    name: ClassVar[str] = "naive"
    shared: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pack: "PackRun") -> None:
        self.pack = pack
        self.members = pack.members
        self.K, self.device = pack.K, pack.device
        ctx = self.members[0].ctx
        self.class_mask = ctx.class_mask  # [T, C] or None
        self.train = ctx.train
        self.batch_size = ctx.train.batch_size
        self.arange = torch.arange(self.K, device=self.device)

    # -- helpers ---------------------------------------------------------------------------
    def vec(self, field: str, runs: list[int] | None = None) -> Tensor:
        """``[K]`` per-run values of config ``field`` (0 for runs not in ``runs``)."""
        vals = [float(getattr(m.strategy.config, field)) for m in self.members]
        if runs is not None:
            vals = [v if k in runs else 0.0 for k, v in enumerate(vals)]
        return torch.tensor(vals, dtype=torch.float32, device=self.device)

    def mask(self, out: Tensor, t: Tensor | int) -> Tensor:
        """Task-IL: classes outside each sample's task masked (as ``Context.mask``)."""
        if self.class_mask is None:
            return out
        return out.masked_fill(~self.class_mask[t], MASKED)

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        return self.mask(self.pack.model(x), t)

    def predict(self, x: Tensor, t: int) -> Tensor:
        """Scores ``[K, M, C]`` of every run on shared inputs of task ``t``."""
        return self.mask(self.pack.model.forward_shared(x), t)

    def params(self) -> list[torch.nn.Parameter]:
        return list(self.pack.model.parameters())

    # -- hooks -------------------------------------------------------------------------------
    def before_task(self, runs: list[int], tasks: dict) -> None:
        for k in runs:
            m = self.members[k]
            m.strategy.before_task(m.model, tasks[k], m.ctx)

    def after_task(self, runs: list[int], tasks: dict) -> None:
        for k in runs:
            m = self.members[k]
            m.model.train()
            m.strategy.after_task(m.model, tasks[k], m.ctx)

    def train_task(self, runs: list[int], tasks: dict) -> None:
        data = {k: (t.x_train, t.y_train, torch.full_like(t.y_train, t.id))
                for k, t in tasks.items()}
        self.fit(runs, data)

    def loss(self, batch: PackBatch, s: int) -> Tensor:
        """``[K]`` losses of step ``s``."""
        return mean_ce(self.logits(batch.x, batch.t), batch.y, batch.w)

    def epoch_start(self, runs: list[int], steps: dict[int, int], S: int) -> None:
        """Called after the epoch's batches are drawn (``steps[k]`` batches of run k)."""

    def before_step(self, batch: PackBatch, s: int, on: Tensor | None) -> None:
        """After backward, before the optimizer (``on [K]``: runs that step; None: all)."""

    def after_step(self, on: Tensor | None) -> None:
        """After the optimizer step."""

    def sync_members(self) -> None:
        """Write pack-held state into the members before they are checkpointed."""

    def load_members(self) -> None:
        """Re-read the members' state after they were restored from checkpoints."""

    # -- the training loop -----------------------------------------------------------------------
    def plan(self, runs: list[int], sizes: dict[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """Each run's index batches for one epoch, drawn from its own generator.

        Returns ``idx [K, S, B]`` (long, device), ``valid [K, S, B]`` (bool, device) and
        the same ``valid`` on the CPU (which steps are full for the whole pack), built
        from the sizes alone: planning an epoch reads nothing back from the device.
        """
        B = self.batch_size
        S = max(math.ceil(sizes[k] / B) for k in runs)
        idx = torch.zeros(self.K, S * B, dtype=torch.long, device=self.device)
        valid = torch.zeros(self.K, S * B, dtype=torch.bool)
        for k in runs:
            perm = torch.cat(list(self.members[k].ctx.batches(sizes[k], B)))
            idx[k, : len(perm)] = perm
            valid[k, : sizes[k]] = True
        valid = valid.view(self.K, S, B)
        return idx.view(self.K, S, B), valid.to(self.device), valid

    def fit(self, runs: list[int], data: dict[int, tuple[Tensor, Tensor, Tensor]]) -> None:
        """``train.epochs`` epochs of batched steps; each run on its own ``(x, y, t)``.

        A run whose epoch loss is not finite is marked diverged and masked from then on.
        """
        from llray.packs.optim import packed_optimizer
        from llray.packs.run import pad_stack

        sizes = {k: len(data[k][1]) for k in runs}
        n = max(sizes.values())
        zero = next(iter(data.values()))
        pick = lambda i: pad_stack([data[k][i] if k in data else zero[i][:0]  # noqa: E731
                                    for k in range(self.K)], n)
        X, Y, TT = pick(0), pick(1), pick(2)  # [K, N, *in], [K, N], [K, N]
        opt = packed_optimizer(self.params(), [m.ctx.train for m in self.members], self.device)
        # flat views: a step's batch is one index_select of the runs' rows (k·n + i)
        Xf, Yf, Tf = X.reshape(self.K * n, *X.shape[2:]), Y.reshape(-1), TT.reshape(-1)
        offset = (self.arange * n).view(-1, 1, 1)
        for _ in range(self.train.epochs):
            idx, valid, cpu_valid = self.plan(runs, sizes)
            S, B = idx.shape[1], idx.shape[2]
            flat = (idx + offset).transpose(0, 1).reshape(S, self.K * B)  # [S, K·B]
            self.real = cpu_valid.sum(-1)  # [K, S] real samples per run and step (CPU)
            steps = {k: int(cpu_valid[k].any(-1).sum()) for k in runs}
            self.epoch_start(runs, steps, S)
            on_all = cpu_valid.all(-1).all(0).tolist()  # [S]: every run steps on a full batch
            on = valid.any(-1)  # [K, S]
            host_on = cpu_valid.any(-1).T.tolist()  # [S][K]: the same, on the host
            total = torch.zeros(self.K, device=self.device)
            for s in range(S):
                i = flat[s]
                full = on_all[s]
                batch = PackBatch(Xf.index_select(0, i).view(self.K, B, *X.shape[2:]),
                                  Yf.index_select(0, i).view(self.K, B),
                                  Tf.index_select(0, i).view(self.K, B),
                                  None if full else valid[:, s].to(X.dtype))
                losses = self.loss(batch, s)
                m = None if full else on[:, s]
                if m is not None:
                    losses = torch.where(m, losses, torch.zeros_like(losses))
                opt.zero_grad()
                losses.sum().backward()
                self.before_step(batch, s, m)
                opt.step(None if full else host_on[s])
                self.after_step(m)
                total += losses.detach()
            for k in runs:
                self.members[k].ctx.samples_trained += sizes[k]
            finite = torch.isfinite(total).tolist()  # the epoch's one host sync
            for k in list(runs):
                if not finite[k]:
                    self.pack.diverge(k, float(total[k]))
                    runs.remove(k)
            if not runs:
                return


class PackNaive(PackStrategy):
    name = "naive"


class PackJoint(PackStrategy):
    """Joint training: each run on the union of the tasks it has seen and the new one."""

    name = "joint"

    def train_task(self, runs: list[int], tasks: dict) -> None:
        data = {}
        for k in runs:
            ts = [*self.members[k].ctx.seen, tasks[k]]
            data[k] = (torch.cat([t.x_train for t in ts]), torch.cat([t.y_train for t in ts]),
                       torch.cat([torch.full_like(t.y_train, t.id) for t in ts]))
        self.fit(runs, data)


class _Quadratic(PackStrategy):
    """A penalty ``scale_k Σ Ω_k (θ_k − θ*_k)²`` per run from each member's importance
    ``Ω`` and anchor ``θ*`` (SI, MAS, EWC), stacked per parameter as ``[K, *shape]``.

    The penalty's gradient ``2 scale_k Ω_k (θ_k − θ*_k)`` is added to the gradients in
    :meth:`before_step` instead of being back-propagated: autograd through the penalty
    (a flattened copy of every parameter, temporaries for the difference, its square and
    the product, and their backward) cost as much as the model's own forward and
    backward. The loss keeps the penalty's value (:meth:`penalty`), so a run whose
    penalty overflows is still caught as diverged.
    """

    scale_field: ClassVar[str] = ""

    def _stack_penalty(self, runs) -> None:
        used = [k for k in runs if self.members[k].strategy.importance]
        self.state, self._grads = None, None
        if not used:
            return
        names = sorted(self.members[used[0]].strategy.importance)
        pm = self.pack.model.named()
        zero = {n: torch.zeros_like(pm[n][0]) for n in names}
        imp = {n: torch.stack([m.strategy.importance.get(n, zero[n]) if k in used else zero[n]
                               for k, m in enumerate(self.members)]) for n in names}
        anc = {n: torch.stack([m.strategy.anchor.get(n, zero[n]) if k in used else zero[n]
                               for k, m in enumerate(self.members)]) for n in names}
        self.state = (names, imp, anc, self.vec(self.scale_field, used))
        self._weigh()

    def _weigh(self) -> None:
        """The gradient's weight ``2 scale_k Ω_k`` and buffers for ``θ − θ*`` and the
        gradient (large temporaries allocated every step cost more than the arithmetic)."""
        names, imp, anc, scale = self.state
        self._w2 = {n: imp[n] * (2 * scale).view(-1, *([1] * (imp[n].dim() - 1)))
                    for n in names}
        self._d = {n: torch.empty_like(imp[n]) for n in names}
        self._g = {n: torch.empty_like(imp[n]) for n in names}

    @torch.no_grad()
    def penalty(self) -> Tensor | None:
        """``[K]`` values of the penalty at the current weights (no autograd); leaves its
        gradient ``2 scale Ω (θ − θ*)`` per parameter for :meth:`before_step`."""
        if self.state is None:
            return None
        names, _, anc, _ = self.state
        pm = self.pack.model.named()
        total = torch.zeros(self.K, device=self.device)
        for n in names:
            d, g = self._d[n], self._g[n]
            torch.sub(pm[n], anc[n], out=d)
            torch.mul(self._w2[n], d, out=g)
            total += torch.linalg.vecdot(g.view(self.K, -1), d.view(self.K, -1))
        self._grads = self._g
        return 0.5 * total

    def loss(self, batch, s):
        ce = super().loss(batch, s)
        pen = self.penalty()
        return ce if pen is None else ce + pen

    @torch.no_grad()
    def before_step(self, batch, s, on):
        if self.state is None or self._grads is None:
            return
        for n, p in self.pack.model.named().items():
            g = self._grads.get(n)
            if g is None:
                continue
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)
        self._grads = None


class PackEWC(_Quadratic):
    """EWC and online EWC: ``λ_k/2 (Σ A_k (θ_k − μ_k)² + K_k)`` per run; each member
    computes its own Fisher (any kind) and merges it (:class:`~llray.strategies.ewc.EWC`)
    into ``A`` (its ``importance``), ``μ`` (its ``anchor``) and ``K`` (its ``const``)."""

    name = "ewc"
    scale_field = "lambda_"

    def before_task(self, runs, tasks):
        super().before_task(runs, tasks)
        self._stack_penalty(runs)
        if self.state is not None:
            names, imp, anc, lam = self.state
            self.state = (names, imp, anc, 0.5 * lam)
            self._weigh()
            self.const = 0.5 * lam * torch.tensor(
                [float(m.strategy.const) for m in self.members], device=self.device)

    def loss(self, batch, s):
        out = super().loss(batch, s)
        return out if self.state is None else out + self.const

    def after_task(self, runs, tasks):
        """Each run's Fisher of its task, merged into its own EWC state. For an MLP pack
        all runs' Fishers of one kind are one batched computation
        (:func:`~llray.packs.fisher.pack_fisher`); otherwise each member computes its own."""
        if self.pack.model.cfg.name != "mlp":
            return super().after_task(runs, tasks)
        kinds: dict[str, list[int]] = {}
        for k in runs:
            kinds.setdefault(self.members[k].strategy.config.fisher, []).append(k)
        fishers: dict[int, dict[str, Tensor]] = {}
        for kind, ks in kinds.items():
            fishers.update(self._fishers(kind, ks, tasks))
        for k in runs:  # in run order, as each run alone
            m = self.members[k]
            m.strategy.consolidate(fishers[k], trainable(m.model))
            m.strategy._warn_if_too_stiff(m.ctx)

    def _fishers(self, kind: str, ks: list[int], tasks: dict) -> dict[int, dict[str, Tensor]]:
        from llray.packs.fisher import masked_logits, pack_fisher, sample_labels, stack_sets

        # each run's Fisher samples, drawn from its own generator as alone
        sets = [self.members[k].strategy._fisher_set(tasks[k], self.members[k].ctx) for k in ks]
        x, y, n = stack_sets(sets, self.K, ks)
        t = torch.zeros_like(y)
        for k in ks:
            t[k] = tasks[k].id
        labels = None
        keep = None if self.class_mask is None else self.class_mask[t]
        if kind == "sampled":  # labels drawn per run, in the chunks the run draws them in
            labels = torch.zeros_like(y)
            logits = masked_logits(self.pack.model, x, keep)
            for k in ks:
                m = self.members[k]
                fb = m.strategy.config.fisher_batch
                for i in range(0, int(n[k]), fb):
                    j = min(i + fb, int(n[k]))
                    labels[k, i:j] = sample_labels(logits[k, i:j], m.ctx.strategy_generator)
        chunk = min(128, *(self.members[k].strategy.config.fisher_batch for k in ks))
        F_ = pack_fisher(self.pack.model, x, y, t, n, kind, self.class_mask, labels, chunk)
        names = self.pack.model.names
        return {k: {name: f[k] for name, f in zip(names, F_)} for k in ks}


class PackMAS(_Quadratic):
    """MAS: members compute the output-sensitivity importance; the penalty is batched."""

    name = "mas"
    scale_field = "lambda_"

    def before_task(self, runs, tasks):
        super().before_task(runs, tasks)
        self._stack_penalty(runs)


class PackSI(_Quadratic):
    """SI: the path integral ``ω ← ω − g_task · Δθ`` of every run, accumulated batched."""

    name = "si"
    scale_field = "c"

    def before_task(self, runs, tasks):
        super().before_task(runs, tasks)  # members record their start point
        self._stack_penalty(runs)
        self.omega = [torch.zeros_like(p) for p in self.params()]

    def before_step(self, batch, s, on):
        ps = self.params()
        self.g = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                  for p in ps]  # the task loss's gradient alone
        self.before = [p.detach().clone() for p in ps]
        super().before_step(batch, s, on)  # grad += 2c Ω (θ − θ*), the penalty's gradient

    @torch.no_grad()
    def after_step(self, on):
        for w, g, b, p in zip(self.omega, self.g, self.before, self.params()):
            w.addcmul_(g, p - b, value=-1.0)

    def after_task(self, runs, tasks):
        for k in runs:
            self.members[k].strategy.omega = {
                n: w[k].clone() for n, w in zip(self.pack.model.names, self.omega)}
        super().after_task(runs, tasks)


class _Buffered(PackStrategy):
    """Strategies with a reservoir buffer per member: the members' buffers become views
    of one ``[K, capacity, ...]`` tensor, so a step gathers every run's memory at once."""

    buffer_attr: ClassVar[str] = "buffer"

    def __init__(self, pack):
        super().__init__(pack)
        self.bind()

    def bind(self) -> None:
        bufs = [getattr(m.strategy, self.buffer_attr) for m in self.members]
        for field in ("x", "y", "t"):
            packed = torch.stack([getattr(b, field) for b in bufs])
            for k, b in enumerate(bufs):
                setattr(b, field, packed[k])
            setattr(self, "b" + field, packed)

    def load_members(self) -> None:
        self.bind()

    def lens(self) -> list[int]:
        return [len(getattr(m.strategy, self.buffer_attr)) for m in self.members]

    def draw_epoch(self, runs, steps, S, k_mem: int, use: list[int]) -> Tensor:
        """Memory indices ``[K, S, k_mem]`` for the epoch, each run's from its generator."""
        idx = torch.zeros(self.K, S, k_mem, dtype=torch.long)
        lens = self.lens()
        for k in use:
            gen = strategy_generator(self.members[k].ctx)
            idx[k, : steps[k]] = torch.randint(lens[k], (steps[k] * k_mem,),
                                               generator=gen).view(steps[k], k_mem)
        return idx.to(self.device)

    def gather(self, i: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each run's memory samples ``i [K, k]``: one ``index_select`` per field of the
        flat ``[K·capacity, ...]`` buffers (cheaper than advanced indexing)."""
        K, k = i.shape
        cap = self.by.shape[1]
        flat = (i + self.arange.unsqueeze(1) * cap).reshape(-1)
        x = self.bx.view(K * cap, *self.bx.shape[2:]).index_select(0, flat)
        return (x.view(K, k, *self.bx.shape[2:]),
                self.by.view(-1).index_select(0, flat).view(K, k),
                self.bt.view(-1).index_select(0, flat).view(K, k))


class PackReplay(_Buffered):
    """ER: ``(1 − r_k) CE(batch) + r_k CE(memory batch)`` per run, one forward for both."""

    name = "replay"
    shared = ("buffer_size", "mem_batch_size")

    def epoch_start(self, runs, steps, S):
        lens = self.lens()
        self.use = [k for k in runs if lens[k] > 0 and self.members[k].strategy.config.ratio > 0]
        cfg = self.members[0].strategy.config
        self.k_mem = cfg.mem_batch_size or self.batch_size
        self.mem = self.draw_epoch(runs, steps, S, self.k_mem, self.use) if self.use else None
        self.ratio = self.vec("ratio", self.use)

    def loss(self, batch, s):
        if self.mem is None:
            return super().loss(batch, s)
        mx, my, mt = self.gather(self.mem[:, s])
        n = batch.y.shape[1]
        out = self.logits(torch.cat([batch.x, mx], 1), torch.cat([batch.t, mt], 1))
        cur, old = mean_ce(out[:, :n], batch.y, batch.w), mean_ce(out[:, n:], my)
        return (1 - self.ratio) * cur + self.ratio * old


class PackAGEM(_Buffered):
    """A-GEM: each run's gradient projected on its own memory gradient when they conflict."""

    name = "agem"
    shared = ("memory_size", "mem_batch_size")

    def before_task(self, runs, tasks):
        super().before_task(runs, tasks)
        self.projected = torch.zeros(self.K, dtype=torch.long, device=self.device)

    def epoch_start(self, runs, steps, S):
        lens = self.lens()
        self.use = [k for k in runs if lens[k] > 0]
        k_mem = self.members[0].strategy.config.mem_batch_size
        self.mem = self.draw_epoch(runs, steps, S, k_mem, self.use) if self.use else None
        self.use_mask = torch.zeros(self.K, dtype=torch.bool, device=self.device)
        self.use_mask[self.use] = True

    def before_step(self, batch, s, on):
        if self.mem is None:
            return
        ps = self.params()
        mx, my, mt = self.gather(self.mem[:, s])
        ref = mean_ce(self.logits(mx, mt), my).sum()
        g_ref = torch.cat([g.reshape(self.K, -1) for g in torch.autograd.grad(ref, ps)], 1)
        g = torch.cat([p.grad.reshape(self.K, -1) for p in ps], 1)  # [K, P]
        dot = (g * g_ref).sum(1)
        proj = g - (dot / (g_ref * g_ref).sum(1).clamp_min(1e-30)).unsqueeze(1) * g_ref
        hit = self.use_mask & (dot < 0)
        if on is not None:
            hit = hit & on
        g_new = torch.where(hit.unsqueeze(1), proj, g)
        i = 0
        for p in ps:
            n = p[0].numel()
            p.grad.copy_(g_new[:, i : i + n].view_as(p))
            i += n
        self.projected += hit

    def after_task(self, runs, tasks):
        counts = self.projected.tolist()
        for k in runs:
            self.members[k].strategy.projections += counts[k]
        super().after_task(runs, tasks)


class PackDERPP(_Buffered):
    """DER++: ``CE + α_k MSE(h(x'), z') + β_k CE(h(x''), y'')`` per run; every run's batch
    enters its own reservoir (and stored logits) each step, as alone."""

    name = "derpp"
    shared = ("buffer_size", "mem_batch_size")

    def bind(self) -> None:
        super().bind()
        logits = torch.stack([m.strategy.logits for m in self.members])  # [K, cap, C]
        for k, m in enumerate(self.members):
            m.strategy.logits = logits[k]
        self.z = logits

    def epoch_start(self, runs, steps, S):
        self.runs, self.steps = runs, steps
        self.k_mem = self.members[0].strategy.config.mem_batch_size or self.batch_size
        self.alpha, self.beta = self.vec("alpha"), self.vec("beta")

    def loss(self, batch, s):
        out = self.pack.model(batch.x)  # [K, B, C] raw
        loss = mean_ce(self.mask(out, batch.t), batch.y, batch.w)
        active = [k for k in self.runs if s < self.steps[k]]
        lens = self.lens()
        use = [k for k in active if lens[k] > 0 and (
            self.members[k].strategy.config.alpha > 0 or self.members[k].strategy.config.beta > 0)]
        if use:
            loss = loss + self._replay(use)
        self._observe(active, batch, out.detach(), s)
        return loss

    def _replay(self, use: list[int]) -> Tensor:
        k_mem = self.k_mem
        i = torch.zeros(self.K, 2 * k_mem, dtype=torch.long, device=self.device)
        for k in use:
            buf, gen = self.members[k].strategy.buffer, strategy_generator(self.members[k].ctx)
            i[k] = torch.cat([buf.sample_indices(k_mem, gen), buf.sample_indices(k_mem, gen)])
        ar = self.arange.unsqueeze(1)
        i1, i2 = i[:, :k_mem], i[:, k_mem:]
        out = self.pack.model(self.bx[ar, i])  # [K, 2k, C]
        z, t1 = self.z[ar, i1], self.bt[ar, i1]
        if self.class_mask is None:
            mse = (out[:, :k_mem] - z).square().mean((1, 2))
        else:
            head = self.class_mask[t1].to(out.dtype)
            mse = ((out[:, :k_mem] - z).square() * head).sum((1, 2)) / head.sum((1, 2)).clamp_min(1)
        ce = mean_ce(self.mask(out[:, k_mem:], self.bt[ar, i2]), self.by[ar, i2])
        on = torch.zeros(self.K, dtype=torch.bool, device=self.device)
        on[use] = True
        a = torch.where(on, self.alpha, torch.zeros_like(self.alpha))
        b = torch.where(on, self.beta, torch.zeros_like(self.beta))
        return a * mse + b * ce

    @torch.no_grad()
    def _observe(self, active: list[int], batch: PackBatch, out: Tensor, s: int) -> None:
        real = self.real[:, s].tolist()  # known on the host: no device read-back
        for k in active:
            n = real[k]
            m = self.members[k]
            slots, items = m.strategy.buffer.add(batch.x[k, :n], batch.y[k, :n], batch.t[k, :n],
                                                 strategy_generator(m.ctx))
            m.strategy.logits[slots] = out[k, items].to(m.strategy.logits)


class PackLwF(PackStrategy):
    """LwF: each run distils from its own weights before the task (a frozen copy of the
    pack's weights), per-run ``alpha`` and ``temperature``."""

    name = "lwf"

    def before_task(self, runs, tasks):
        super().before_task(runs, tasks)  # members' groups (and plain teachers)
        self.teacher = None
        used = [k for k in runs if self.members[k].strategy.old_model is not None]
        for k in runs:
            self.members[k].strategy.old_model = None  # the pack's teacher replaces it
        if not used:
            return
        from llray.packs.models import PackedModel

        pm = self.pack.model
        self.teacher = PackedModel(pm.cfg, pm.names, [p.detach().clone() for p in pm.params])
        self.teacher.requires_grad_(False)
        G = self.members[used[0]].strategy.groups.shape[0]
        C = self.members[used[0]].strategy.groups.shape[1]
        none = torch.ones(G, C, dtype=torch.bool, device=self.device)
        self.groups = torch.stack([self.members[k].strategy.groups if k in used else none
                                   for k in range(self.K)]).unsqueeze(1)  # [K, 1, G, C]
        self.alpha = self.vec("alpha", used)
        self.temp = self.vec("temperature").view(-1, 1, 1, 1)

    def loss(self, batch, s):
        out = self.pack.model(batch.x)  # [K, B, C]
        ce = mean_ce(self.mask(out, batch.t), batch.y, batch.w)
        if self.teacher is None:
            return ce
        with torch.no_grad():
            old = self.teacher(batch.x).unsqueeze(2).masked_fill(~self.groups, MASKED)
            target = F.softmax(old / self.temp, dim=-1)  # [K, B, G, C]
        log_q = F.log_softmax(out.unsqueeze(2).masked_fill(~self.groups, MASKED) / self.temp, -1)
        per = -(target * log_q).sum((2, 3))  # [K, B]
        kd = per.mean(1) if batch.w is None else (per * batch.w).sum(1) / batch.w.sum(1)
        return ce + self.alpha * kd

    def after_task(self, runs, tasks):
        self.teacher = None
        super().after_task(runs, tasks)


PACKED: dict[str, type[PackStrategy]] = {
    c.name: c for c in (PackNaive, PackJoint, PackEWC, PackReplay, PackSI, PackMAS, PackLwF,
                        PackAGEM, PackDERPP)
}


def check_packable(name: str, where: str = "resources.pack") -> type[PackStrategy]:
    """The pack version of strategy ``name``; ConfigError saying it runs unpacked if none."""
    if name not in PACKED:
        raise ConfigError(where, f"strategy {name!r} has no pack version and runs unpacked; "
                                 f"packable: {', '.join(sorted(PACKED))}")
    return PACKED[name]


def make_pack_strategy(pack: "PackRun") -> PackStrategy:
    """The pack strategy for ``pack``'s members (one strategy name, equal shared fields)."""
    names = {m.strategy.name for m in pack.members}
    assert len(names) == 1, f"one strategy per pack, got {names}"
    cls = check_packable(names.pop())
    for f in cls.shared:
        vals = {getattr(m.strategy.config, f) for m in pack.members}
        if len(vals) > 1:
            raise ConfigError(f"{cls.name}.{f}", f"must be equal within a pack, got {vals}")
    return cls(pack)
