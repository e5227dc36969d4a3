"""Cost of on-device crop + flip against one ResNet-18 training step, side by side.

A batch of 256 CIFAR-sized images (3x32x32, uint8 as stored) is augmented by
:class:`llray.data.augment.Augmenter` (random crop with 4 pixels of padding and a
horizontal flip, one gather for the whole batch) and, separately, used for one training
step (forward, cross-entropy, backward, SGD step) of each backbone. The two are timed
interleaved, ``REPEATS`` times, and the medians are compared: the target is augmentation
under 10% of a step. The uint8 -> float conversion is part of the model's step (its
first layer), as in a run. On a GPU (``--device cuda``) the timings synchronise.

This machine is shared and noisy: the load average is printed with the numbers.

Run: ``python benchmarks/bench_augment.py [--device cpu|cuda] [--threads N] [--repeats K]
[--backbones resnet18_reduced resnet18]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from llray.data.augment import Augmentation, Augmenter
from llray.models import ModelConfig, build_model

BATCH = 256
REPEATS = 7


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--backbones", nargs="+", default=["resnet18_reduced", "resnet18"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (BATCH, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    y = torch.randint(0, 100, (BATCH,), generator=g).to(device)
    aug = Augmenter(Augmentation(("crop", "flip"), padding=4), seed=0)
    print(f"batch {BATCH} x 3x32x32 uint8 on {device}, {args.threads} torch threads, "
          f"medians of {args.repeats}; load average before: {os.getloadavg()}")
    print(f"{'backbone':<18}{'step ms':>10}{'augment ms':>12}{'ratio':>9}")
    for name in args.backbones:
        model = build_model(ModelConfig(name=name), (3, 32, 32), 100, seed=0).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step(inputs: torch.Tensor) -> None:
            loss = F.cross_entropy(model(inputs), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step(x), aug(x)  # warm-up
        steps, augs = [], []
        for _ in range(args.repeats):
            augs.append(timed(lambda: aug(x), device))
            steps.append(timed(lambda: step(x), device))
        s, a = statistics.median(steps), statistics.median(augs)
        print(f"{name:<18}{s * 1e3:>10.1f}{a * 1e3:>12.2f}{a / s:>9.2%}", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
