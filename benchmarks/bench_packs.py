"""Run packs: per-model-step time of K models trained as one batched model.

Part 1 (kernel choice, ``--part kernels``): one training step (forward, backward,
optimizer step) of K small models, per model, for

- ``loop``: K separate ``nn.Module`` s and ``torch.optim.SGD`` s (K runs unpacked);
- ``bmm``: :class:`llray.packs.models.PackedModel` (MLP: ``baddbmm``; ConvNet: grouped
  ``conv2d`` + ``baddbmm``) and :class:`~llray.packs.optim.PackedSGD`;
- ``vmap``: ``torch.func.stack_module_state`` + ``vmap(functional_call)`` + ``grad``;
- ``floor`` (MLP only): the issue's probe, hand-written ``baddbmm`` layers and an
  in-place SGD update on raw tensors, nothing else;
- ``pack``: a real :class:`~llray.packs.run.PackRun` step of naive fine-tuning (batch
  gather from per-run index batches, masked-logit cross-entropy per run, per-run lr),
  timed over one epoch of a task.

Part 2 (``--part sweep``): sweep throughput (runs per minute) of the quickstart grid
(jobs/quickstart.yaml: permuted digits, 5 tasks, MLP 64-100-100-10, Adam, 3 epochs;
naive, EWC, replay, joint) at ``--seeds`` seeds per strategy, ``resources: {pack: 16}``
vs ``{pack: 1}``, each grid one sweep through the real sweep driver on an embedded Ray
with 2 CPUs (one actor per CPU), side by side: the whole sweep, and per strategy in
steady state (runs per minute of slot time, without Ray and actor start-up).

CPU only (torch threads 1 per actor). The machine is shared: the load average is
printed with the numbers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_worker_niceness", "0")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call, grad, stack_module_state, vmap  # noqa: E402

from llray.models import ModelConfig, build_model  # noqa: E402
from llray.packs.models import PackedModel  # noqa: E402
from llray.packs.optim import PackedSGD  # noqa: E402

B = 32


def best_of(fn, steps: int, repeats: int = 3) -> float:
    """Best mean seconds per call of ``fn`` over ``repeats`` rounds of ``steps`` calls."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def setups(cfg: ModelConfig, shape: tuple[int, ...], K: int):
    models = [build_model(cfg, shape, 10, seed=s) for s in range(K)]
    x = torch.rand(K, B, *shape)
    y = torch.randint(10, (K, B))

    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in models]

    def loop():
        for k, (m, o) in enumerate(zip(models, opts)):
            o.zero_grad(set_to_none=True)
            F.cross_entropy(m(x[k]), y[k]).backward()
            o.step()

    pm = PackedModel.from_models(cfg, models)
    popt = PackedSGD(list(pm.parameters()), torch.full((K,), 0.01))

    def bmm():
        popt.zero_grad()
        out = pm(x)
        F.cross_entropy(out.reshape(K * B, -1), y.reshape(-1), reduction="none").view(
            K, B).mean(1).sum().backward()
        popt.step()

    params, buffers = stack_module_state(models)
    base = build_model(cfg, shape, 10, seed=0).to("meta")

    def loss_fn(p, b, xk, yk):
        return F.cross_entropy(functional_call(base, (p, b), (xk,)), yk)

    vgrad = vmap(grad(loss_fn), in_dims=(0, 0, 0, 0))

    def vm():
        g = vgrad(params, buffers, x, y)
        with torch.no_grad():
            for n in params:
                params[n].sub_(0.01 * g[n])

    return {"loop": loop, "bmm": bmm, "vmap": vm}


def floor(K: int, widths=(64, 100, 100, 10)):
    """The issue's probe: raw baddbmm layers, autograd, in-place SGD, nothing else."""
    ws = [torch.randn(K, a, b, requires_grad=True) * 0.1 for a, b in zip(widths, widths[1:])]
    ws = [w.detach().requires_grad_() for w in ws]
    bs = [torch.zeros(K, 1, b, requires_grad=True) for b in widths[1:]]
    x = torch.rand(K, B, widths[0])
    y = torch.randint(10, (K * B,))

    def step():
        h = x
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = torch.baddbmm(b, h, w)
            if i < len(ws) - 1:
                h = torch.relu(h)
        F.cross_entropy(h.reshape(K * B, -1), y).backward()
        with torch.no_grad():
            for p in ws + bs:
                p.sub_(0.01 * p.grad)
                p.grad = None

    return step


def pack_step_time(K: int) -> float:
    """Seconds per step of a real PackRun (naive, one epoch of a permuted-digits task)."""
    from llray.config import parse_config
    from llray.data import make_stream
    from llray.packs.run import build_pack

    cfg = parse_config({"stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 2},
                        "model": {"hidden": [100, 100]},
                        "train": {"epochs": 1, "batch_size": B, "lr": 0.01},
                        "strategies": ["naive"], "seeds": list(range(K))})
    stream = make_stream(cfg.stream)
    pack = build_pack(cfg.runs(), stream)
    task = stream.tasks[0]
    steps = -(-len(task.y_train) // B)
    data = {k: (task.x_train, task.y_train, torch.zeros_like(task.y_train)) for k in range(K)}
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        pack.strategy.fit(list(range(K)), data)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def kernels(Ks: list[int]) -> None:
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; 1 torch thread; "
          f"batch {B}; microseconds per model-step (lower is better)")
    archs = {"mlp 64-100-100-10": (ModelConfig(hidden=(100, 100)), (64,)),
             "convnet 1x8x8 (16, 32)": (ModelConfig(name="convnet", channels=(16, 32)),
                                        (1, 8, 8))}
    for name, (cfg, shape) in archs.items():
        for K in Ks:
            fns = setups(cfg, shape, K)
            t = {k: best_of(f, max(5, 400 // K)) / K * 1e6 for k, f in fns.items()}
            extra = ""
            if cfg.name == "mlp":
                fl = best_of(floor(K), max(5, 400 // K)) / K * 1e6
                pk = pack_step_time(K) / K * 1e6
                extra = (f" floor {fl:6.0f}  pack {pk:6.0f} (pack/floor {pk / fl:.2f}x,"
                         f" loop/pack {t['loop'] / pk:.1f}x)")
            print(f"{name:24s} K={K:3d}: loop {t['loop']:6.0f}  bmm {t['bmm']:6.0f}  "
                  f"vmap {t['vmap']:6.0f}{extra}", flush=True)
    print(f"load average now {os.getloadavg()[0]:.1f}")


def sweep(seeds: int, pack_sizes: list[int], strategies: list[str]) -> None:
    """The quickstart grid (``strategies`` × ``seeds`` seeds) as one sweep per pack size.

    Prints the whole sweep's runs per minute (Ray and actor start-up included) and, per
    strategy, the steady-state rate: its runs divided by the slot time they held (a
    run's or pack's own wall time; 2 slots run at once).
    """
    import ray
    import yaml

    from llray.config import parse_config
    from llray.data import make_stream
    from llray.distributed.sweep import SweepOptions, run_sweep

    job = os.path.join(os.path.dirname(__file__), "..", "jobs", "quickstart.yaml")
    with open(job) as f:
        base = yaml.safe_load(f)
    entries = [e for e in base["strategies"]
               if (e if isinstance(e, str) else e["name"]) in strategies]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"quickstart grid: {len(entries)} strategies x {seeds} seeds, embedded Ray with "
          f"2 CPUs (2 slots), load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rates: dict[int, dict[str, float]] = {}
    for K in pack_sizes:
        cfg = parse_config({**base, "strategies": entries, "seeds": list(range(seeds)),
                            "resources": {"num_cpus": 1, "pack": K}})
        stream = make_stream(cfg.stream)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            done = run_sweep(cfg.runs(), stream, None, SweepOptions(checkpoint=tmp))
            wall = time.perf_counter() - t0
        assert all(f.result.status == "ok" for f in done)
        rates[K] = {"all": len(done) / wall * 60}
        for name in {f.spec.strategy.display for f in done}:
            mine = [f for f in done if f.spec.strategy.display == name]
            # slot time: each unpacked run's wall, each pack's wall once (its runs share it)
            held = sum(f.result.wall_s for f in mine) / (K if K > 1 else 1)
            rates[K][name] = len(mine) / (held / 2) * 60
        print(f"  pack {K:3d}: {len(done)} runs in {wall:6.1f} s = {rates[K]['all']:6.1f} "
              f"runs/min; steady state per strategy: " + ", ".join(
                  f"{n} {r:.1f}" for n, r in sorted(rates[K].items()) if n != "all")
              + f" runs/min (load {os.getloadavg()[0]:.1f})", flush=True)
    lo, hi = min(pack_sizes), max(pack_sizes)
    print(f"  pack {hi} / pack {lo}: " + ", ".join(
        f"{n} {rates[hi][n] / rates[lo][n]:.1f}x" for n in sorted(rates[lo])))
    ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["kernels", "sweep", "all"], default="all")
    p.add_argument("--packs", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--strategies", nargs="+", default=["naive", "ewc", "replay", "joint"])
    a = p.parse_args()
    if a.part in ("kernels", "all"):
        kernels(a.packs)
    if a.part in ("sweep", "all"):
        sweep(a.seeds, [1, 16], a.strategies)


if __name__ == "__main__":
    main()
