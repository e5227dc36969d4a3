"""run_stream vs a minimal hand-written PyTorch loop on the same stream and model.

Both train the quickstart stream (permuted digits, 5 tasks, MLP 64-100-100-10, SGD,
batch 32) and evaluate every task after each task; preloaded tensors, no DataLoader.
Target: run_stream takes at most 1.2x the hand loop's time. Runs are interleaved and
the median of several repeats is reported, since this machine is noisy.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from llray.data import StreamConfig, make_stream
from llray.learner import run_stream
from llray.models import ModelConfig, build_model
from llray.strategies import TrainConfig, make_strategy

EPOCHS, BS, LR, REPEATS = 3, 32, 0.05, 7


def hand_loop(stream, model) -> list[list[float]]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for task in stream.tasks:
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        model.train()
        x, y = task.x_train, task.y_train
        for _ in range(EPOCHS):
            perm = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), BS):
                idx = perm[i : i + BS]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            rows.append([(model(t.x_test).argmax(1) == t.y_test).float().mean().item()
                         for t in stream.tasks])
    return rows


def main() -> None:
    torch.set_num_threads(1)
    stream = make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=5))
    cfg = TrainConfig(epochs=EPOCHS, batch_size=BS, lr=LR)
    mcfg = ModelConfig(hidden=(100, 100))

    def ours() -> None:
        m = build_model(mcfg, stream.input_shape, stream.num_classes, seed=0)
        run_stream(stream, m, make_strategy("naive"), cfg, seed=0)

    def theirs() -> None:
        hand_loop(stream, build_model(mcfg, stream.input_shape, stream.num_classes, seed=0))

    times: dict[str, list[float]] = {"run_stream": [], "hand loop": []}
    ours(), theirs()  # warm up
    for _ in range(REPEATS):
        for name, fn in (("run_stream", ours), ("hand loop", theirs)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:>10}: {v * 1000:8.1f} ms (median of {REPEATS})")
    print(f"ratio run_stream / hand loop: {med['run_stream'] / med['hand loop']:.3f} "
          f"(target <= 1.2)")


if __name__ == "__main__":
    main()
