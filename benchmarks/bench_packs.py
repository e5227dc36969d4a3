"""Run packs: where a pack's time goes, per model-step and per run, pack vs unpacked.

The machine may be shared: every part prints the load average next to its numbers,
measures CPU time (``time.thread_time`` / ``time.process_time``, and for the sweep the
CPU time of every Ray process) beside wall time, and repeats its comparisons
interleaved (A, B, A, B, ...) and reports the median ratio.

Part ``kernels`` (``--packs 1 16 64``): one training step (forward, backward, optimizer
step) of K small models, microseconds per model-step (thread CPU time, best of 3), for

- ``loop``: K separate ``nn.Module`` s and ``torch.optim.SGD`` s (K runs unpacked);
- ``bmm``: :class:`llray.packs.models.PackedModel` (MLP: ``baddbmm``; ConvNet: grouped
  ``conv2d`` + ``baddbmm``) and :class:`~llray.packs.optim.PackedSGD`;
- ``vmap``: ``torch.func.stack_module_state`` + ``vmap(functional_call)`` + ``grad``;

and, for the MLP 64-100-100-10, the issue's target: a real pack step vs the
batched-matmul **floor** (hand-written ``baddbmm`` layers, autograd, an in-place SGD
update on raw tensors, nothing else). ``pack sgd`` is a :class:`~llray.packs.run.PackRun`
epoch of naive fine-tuning with SGD (batch gather from per-run index batches, masked
cross-entropy per run, per-run lr); ``pack adam`` the same with Adam (the quickstart's
optimizer). Ratio = median over ``2 · --repeats + 1`` interleaved (floor, pack)
measurements.

Part ``runs``: the quickstart's strategies (jobs/quickstart.yaml: permuted digits, 5
tasks, MLP 64-100-100-10, Adam, 3 epochs) in this process, no Ray: CPU and wall seconds
per run of ``--alone`` runs trained one after another as plain runs (what ``pack: 1``
does) vs one pack of ``--seeds`` runs, each including a checkpoint per task serialised
to memory; median ratio over ``--repeats`` interleaved rounds.

Part ``sweep``: sweep throughput (runs per minute) of the quickstart grid at ``--seeds``
seeds per strategy, ``resources: {pack: SEEDS}`` vs ``{pack: 1}``, each grid one sweep
through the real sweep driver on an embedded Ray with 2 CPUs (one actor per CPU): the
whole sweep's wall time and the CPU seconds of every Ray process it ran on (polled from
``/proc``), and per strategy the steady-state rate (runs per minute of slot time,
without Ray and actor start-up).

Example (about 5 minutes on 2 quiet cores)::

    python benchmarks/bench_packs.py                       # all three parts
    python benchmarks/bench_packs.py --part runs --repeats 5

CPU only (one torch thread per actor). This process tunes its allocator as a pack actor
does (:mod:`llray.packs.malloc`), for the unpacked and the packed measurements alike.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import threading
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_worker_niceness", "0")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call, grad, stack_module_state, vmap  # noqa: E402

from llray.models import ModelConfig, build_model  # noqa: E402
from llray.packs.malloc import keep_large_blocks  # noqa: E402
from llray.packs.models import PackedModel  # noqa: E402
from llray.packs.optim import PackedSGD  # noqa: E402

B = 32


def cpu_per_call(fn, steps: int) -> float:
    """Mean thread CPU seconds per call of ``fn`` over ``steps`` calls."""
    t0 = time.thread_time()
    for _ in range(steps):
        fn()
    return (time.thread_time() - t0) / steps


def best_of(fn, steps: int, repeats: int = 3) -> float:
    """Best mean thread CPU seconds per call of ``fn`` over ``repeats`` rounds of ``steps``."""
    fn()
    return min(cpu_per_call(fn, steps) for _ in range(repeats))


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg()) + \
        f" on {os.cpu_count()} cores"


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


def pack_epoch(K: int, optimizer: str):
    """``(step, steps)``: ``step()`` trains one epoch of a task as a real PackRun (naive,
    permuted digits, MLP 64-100-100-10, batch 32) of ``steps`` pack steps."""
    from llray.config import parse_config
    from llray.data import make_stream
    from llray.packs.run import build_pack

    cfg = parse_config({"stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 2},
                        "model": {"hidden": [100, 100]},
                        "train": {"epochs": 1, "batch_size": B, "lr": 0.01,
                                  "optimizer": optimizer},
                        "strategies": ["naive"], "seeds": list(range(K))})
    stream = make_stream(cfg.stream)
    pack = build_pack(cfg.runs(), stream)
    task = stream.tasks[0]
    data = {k: (task.x_train, task.y_train, torch.zeros_like(task.y_train)) for k in range(K)}
    return (lambda: pack.strategy.fit(list(range(K)), data)), -(-len(task.y_train) // B)


def floor_vs_pack(K: int, repeats: int) -> dict[str, list[float]]:
    """Microseconds per model-step of the floor and of pack steps (SGD, Adam), measured
    interleaved ``repeats`` times (thread CPU time)."""
    fl = floor(K)
    packs = {f"pack {o}": pack_epoch(K, o) for o in ("sgd", "adam")}
    n_floor = max(20, 2000 // K)
    out: dict[str, list[float]] = {"floor": [], **{k: [] for k in packs}}
    fl()
    for fn, _ in packs.values():
        fn()
    for _ in range(repeats):
        out["floor"].append(cpu_per_call(fl, n_floor) / K * 1e6)
        for name, (fn, steps) in packs.items():
            out[name].append(cpu_per_call(fn, 1) / steps / K * 1e6)
    return out


def kernels(Ks: list[int], repeats: int) -> None:
    torch.set_num_threads(1)
    print(f"== kernels: microseconds per model-step, thread CPU time, 1 torch thread, batch {B} "
          f"(lower is better); {load()}")
    archs = {"mlp 64-100-100-10": (ModelConfig(hidden=(100, 100)), (64,)),
             "convnet 1x8x8 (16, 32)": (ModelConfig(name="convnet", channels=(16, 32)),
                                        (1, 8, 8))}
    for name, (cfg, shape) in archs.items():
        for K in Ks:
            fns = setups(cfg, shape, K)
            t = {k: best_of(f, max(5, 400 // K)) / K * 1e6 for k, f in fns.items()}
            print(f"{name:24s} K={K:3d}: loop {t['loop']:6.0f}  bmm {t['bmm']:6.0f}  "
                  f"vmap {t['vmap']:6.0f}  (loop/bmm {t['loop'] / t['bmm']:.1f}x)", flush=True)
    print(f"pack step vs the batched-matmul floor (MLP 64-100-100-10), median of {repeats} "
          f"interleaved repeats [min-max]:")
    for K in Ks:
        if K < 2:
            continue
        r = floor_vs_pack(K, repeats)
        med = {k: statistics.median(v) for k, v in r.items()}
        ratios = {k: [p / f for p, f in zip(v, r["floor"])] for k, v in r.items() if k != "floor"}
        print(f"  K={K:3d}: floor {med['floor']:5.0f} us  " + "  ".join(
            f"{k} {med[k]:5.0f} us ({k}/floor {statistics.median(q):.2f}x "
            f"[{min(q):.2f}-{max(q):.2f}])" for k, q in ratios.items()) + f"  ({load()})",
            flush=True)


def train_all(specs, stream, packed: bool) -> None:
    """Train ``specs`` to the end (one pack, or one plain run after another), with a
    checkpoint per task serialised to memory, as the actors do."""
    from llray.experiment import build_run
    from llray.packs.run import build_pack

    def save(states) -> None:
        for st in states:
            torch.save(st, io.BytesIO())

    if packed:
        pack = build_pack(specs, stream)
        while not pack.done:
            pack.learn_next()
            save(pack.state_dicts())
        return
    for spec in specs:
        run = build_run(spec, stream, "cpu")
        run.start()
        while not run.done:
            run.learn_next()
            save([run.state_dict()])


def run_costs(strategies: list[str], seeds: int, alone: int, repeats: int) -> None:
    """Per-run CPU and wall seconds, unpacked vs one pack of ``seeds`` runs, per strategy."""
    import yaml

    from llray.config import parse_config
    from llray.data import make_stream

    torch.set_num_threads(1)
    base = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "jobs",
                                            "quickstart.yaml")))
    stream = None
    grids = {}
    for e in base["strategies"]:
        name = e if isinstance(e, str) else e["name"]
        if name in strategies:
            cfg = parse_config({**base, "strategies": [e], "seeds": list(range(seeds))})
            stream = stream or make_stream(cfg.stream)
            grids[name] = cfg.runs()
    print(f"== runs: quickstart, in one process, no Ray; seconds per run, {alone} runs unpacked "
          f"vs a pack of {seeds}; median of {repeats} interleaved rounds; {load()}", flush=True)
    res = {n: {"cpu": [], "wall": [], "a": [], "p": []} for n in grids}
    for specs in grids.values():  # warm-up (first calls of every kernel), not timed
        train_all(specs[:1], stream, False)
        train_all(specs[:2], stream, True)
    for _ in range(repeats):
        for name, specs in grids.items():
            got = []
            for packed, group in ((False, specs[:alone]), (True, specs)):
                c0, w0 = time.process_time(), time.perf_counter()
                train_all(group, stream, packed)
                got.append(((time.process_time() - c0) / len(group),
                            (time.perf_counter() - w0) / len(group)))
            (ac, aw), (pc, pw) = got
            r = res[name]
            r["a"].append(ac)
            r["p"].append(pc)
            r["cpu"].append(ac / pc)
            r["wall"].append(aw / pw)
    med = statistics.median
    for name, r in res.items():
        print(f"  {name:7s}: CPU s/run unpacked {med(r['a']):.3f}, pack {med(r['p']):.3f}; "
              f"pack speed-up CPU {med(r['cpu']):.2f}x [{min(r['cpu']):.2f}-{max(r['cpu']):.2f}]"
              f", wall {med(r['wall']):.2f}x [{min(r['wall']):.2f}-{max(r['wall']):.2f}]")
    print(f"  ({load()})", flush=True)


def _proc_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of this process and all its descendants, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / tick)  # ppid, cpu
    tree, todo = set(), [os.getpid()]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, (pp, _) in stats.items() if pp == p and c not in tree]
    return {p: stats[p][1] for p in tree if p in stats}


class CPUWatch:
    """CPU seconds used by this process and every process it started (Ray's raylet,
    workers, actors) between ``start`` and ``stop``, polled from ``/proc`` (a process
    that ends between two polls loses at most one interval)."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval

    def start(self) -> "CPUWatch":
        self.base = _proc_cpu()
        self.last = dict(self.base)
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self) -> None:
        while self.running:
            time.sleep(self.interval)
            for p, c in _proc_cpu().items():
                self.last[p] = max(c, self.last.get(p, 0.0))

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        for p, c in _proc_cpu().items():
            self.last[p] = max(c, self.last.get(p, 0.0))
        return sum(c - self.base.get(p, 0.0) for p, c in self.last.items())


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
    print(f"== sweep: quickstart grid, {len(entries)} strategies x {seeds} seeds, embedded Ray "
          f"with 2 CPUs (2 slots); {load()}")
    rates: dict[int, dict[str, float]] = {}
    cpu: dict[int, float] = {}
    for K in pack_sizes:
        cfg = parse_config({**base, "strategies": entries, "seeds": list(range(seeds)),
                            "resources": {"num_cpus": 1, "pack": K}})
        stream = make_stream(cfg.stream)
        with tempfile.TemporaryDirectory() as tmp:
            watch = CPUWatch().start()
            t0 = time.perf_counter()
            done = run_sweep(cfg.runs(), stream, None, SweepOptions(checkpoint=tmp))
            wall = time.perf_counter() - t0
            cpu[K] = watch.stop() / len(done)
        assert all(f.result.status == "ok" for f in done)
        rates[K] = {"all": len(done) / wall * 60}
        for name in {f.spec.strategy.display for f in done}:
            mine = [f for f in done if f.spec.strategy.display == name]
            # slot time: each unpacked run's wall, each pack's wall once (its runs share it)
            held = sum(f.result.wall_s for f in mine) / (K if K > 1 else 1)
            rates[K][name] = len(mine) / (held / 2) * 60
        print(f"  pack {K:3d}: {len(done)} runs in {wall:6.1f} s = {rates[K]['all']:6.1f} "
              f"runs/min, {cpu[K]:.2f} CPU s/run (Ray processes); steady state per strategy: "
              + ", ".join(
                  f"{n} {r:.1f}" for n, r in sorted(rates[K].items()) if n != "all")
              + f" runs/min ({load()})", flush=True)
    lo, hi = min(pack_sizes), max(pack_sizes)
    print(f"  pack {hi} / pack {lo}: CPU per run {cpu[lo] / cpu[hi]:.1f}x; wall runs/min: " +
          ", ".join(f"{n} {rates[hi][n] / rates[lo][n]:.1f}x" for n in sorted(rates[lo])))
    ray.shutdown()


def main() -> None:
    keep_large_blocks()  # this process's allocator as in a pack actor (see llray.packs.malloc)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["kernels", "runs", "sweep", "all"], default="all")
    p.add_argument("--packs", type=int, nargs="+", default=[1, 16, 64],
                   help="pack sizes of the kernels part")
    p.add_argument("--seeds", type=int, default=16, help="runs per strategy (the pack size)")
    p.add_argument("--alone", type=int, default=4,
                   help="unpacked runs timed per strategy and round (runs part)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    p.add_argument("--strategies", nargs="+", default=["naive", "ewc", "replay", "joint"])
    a = p.parse_args()
    if a.part in ("kernels", "all"):
        kernels(a.packs, a.repeats * 2 + 1)
    if a.part in ("runs", "all"):
        run_costs(a.strategies, a.seeds, a.alone, a.repeats)
    if a.part in ("sweep", "all"):
        sweep(a.seeds, [1, a.seeds], a.strategies)


if __name__ == "__main__":
    main()
