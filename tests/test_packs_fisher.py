"""A pack's batched Fisher equals each run's own ``fisher_diagonal``."""

import pytest
import torch

from llray.models import ModelConfig, build_model
from llray.packs.fisher import masked_logits, pack_fisher, sample_labels
from llray.packs.models import PackedModel
from llray.strategies._fisher import fisher_diagonal
from llray.strategies.base import MASKED


@pytest.mark.parametrize("kind", ["exact", "empirical", "sampled"])
@pytest.mark.parametrize("task_il", [False, True])
def test_pack_fisher_equals_each_runs_own_within_1e_5(kind, task_il):
    """Three runs, other sample counts (padding) and tasks; task-IL masks the logits."""
    cfg = ModelConfig(hidden=(16, 12))
    models = [build_model(cfg, (1, 8, 8), 10, seed=s) for s in range(3)]
    pm = PackedModel.from_models(cfg, models)
    g = torch.Generator().manual_seed(0)
    N, n = 40, torch.tensor([40, 33, 7])
    x, y = torch.rand(3, N, 1, 8, 8, generator=g), torch.randint(10, (3, N), generator=g)
    tids = [0, 1, 1]
    t = torch.tensor(tids).unsqueeze(1).expand(3, N).clone()
    class_mask = None
    if task_il:
        class_mask = torch.zeros(2, 10, dtype=torch.bool)
        class_mask[0, :5], class_mask[1, 5:] = True, True
        y = y % 5 + 5 * t
    labels, drawn = None, {}
    if kind == "sampled":  # each run draws from its own generator, in chunks of 16
        keep = None if class_mask is None else class_mask[t]
        logits = masked_logits(pm, x, keep)
        labels = torch.zeros_like(y)
        for k in range(3):
            gen = torch.Generator().manual_seed(10 + k)
            for i in range(0, int(n[k]), 16):
                j = min(i + 16, int(n[k]))
                labels[k, i:j] = sample_labels(logits[k, i:j], gen)
            drawn[k] = labels[k, : n[k]]
    got = pack_fisher(pm, x, y, t, n, kind, class_mask, labels, chunk=16)
    mask = None if class_mask is None else (
        lambda out, tt: out.masked_fill(~class_mask[tt], MASKED))
    for k, m in enumerate(models):
        xs, ys = x[k, : n[k]], y[k, : n[k]]
        if kind == "sampled":  # the same draws as the run alone: its generator, its chunks
            gen = torch.Generator().manual_seed(10 + k)
            want = fisher_diagonal(m, xs, ys, tids[k], kind="sampled", mask=mask, generator=gen,
                                   batch_size=16)
            alone = fisher_diagonal(m, xs, drawn[k], tids[k], kind="empirical", mask=mask)
            for name in want:  # so the pack's labels were the run's own
                torch.testing.assert_close(alone[name], want[name], atol=1e-7, rtol=1e-5)
        else:
            want = fisher_diagonal(m, xs, ys, tids[k], kind=kind, mask=mask)
        for i, name in enumerate(pm.names):
            scale = float(want[name].abs().max())
            assert scale > 0
            torch.testing.assert_close(got[i][k], want[name], atol=1e-5 * scale, rtol=1e-4)
