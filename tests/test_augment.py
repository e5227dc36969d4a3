"""Augmentation on the device: crop + flip against a per-image reference, determinism per
seed, training batches only (never evaluation), config checks, and the object store."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from images import image_stream
from llray.config_base import from_dict
from llray.data import StreamConfig, make_stream
from llray.data.augment import Augmentation, Augmenter, crop_flip
from llray.errors import ConfigError
from llray.learner import LifelongRun, run_stream
from llray.models import ModelConfig, build_model
from llray.seeding import derive
from llray.strategies import TrainConfig, make_strategy

TRAIN = TrainConfig(epochs=1, batch_size=16, lr=0.05)
CROP_FLIP = Augmentation(("crop", "flip"), padding=4)


def reference(x, offsets, flips, p):
    """One image at a time, the way torchvision's RandomCrop(padding) + flip do it."""
    out = []
    for img, (dy, dx), f in zip(x, offsets.tolist(), flips.tolist()):
        padded = F.pad(img, (p, p, p, p))
        crop = padded[:, dy : dy + img.shape[1], dx : dx + img.shape[2]]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_batched_crop_flip_equals_the_per_image_reference(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 12, 10), generator=g).to(dtype)
    offsets = torch.randint(0, 9, (32, 2), generator=g)
    flips = torch.rand(32, generator=g) < 0.5
    out = crop_flip(x, offsets, flips, 4)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, reference(x, offsets, flips, 4))
    # the centred window without a flip is the image itself
    same = crop_flip(x, torch.full((32, 2), 4), torch.zeros(32, dtype=torch.bool), 4)
    assert torch.equal(same, x)


def test_augmenter_is_deterministic_per_seed_and_draws_the_whole_range():
    x = torch.randint(0, 256, (256, 3, 8, 8), dtype=torch.uint8)
    a, b, c = Augmenter(CROP_FLIP, 0), Augmenter(CROP_FLIP, 0), Augmenter(CROP_FLIP, 1)
    out_a, out_b, out_c = a(x), b(x), c(x)
    assert torch.equal(out_a, out_b) and not torch.equal(out_a, out_c)
    assert not torch.equal(a(x), out_a)  # the next batch gets fresh offsets
    # its generator is the run's derive(seed, "augment") one, nothing global
    g = torch.Generator().manual_seed(derive(0, "augment"))
    offsets = torch.randint(9, (256, 2), generator=g)
    flips = torch.rand(256, generator=g) < 0.5
    assert torch.equal(out_a, crop_flip(x, offsets, flips, 4))
    assert set(offsets.flatten().tolist()) == set(range(9))
    assert 0.35 < flips.float().mean() < 0.65


def test_flip_only_and_crop_only():
    x = torch.rand(64, 1, 6, 6)
    flipped = Augmenter(Augmentation(("flip",)), 0)(x)
    kept = [torch.equal(a, b) for a, b in zip(flipped, x)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x)]
    assert all(k or m for k, m in zip(kept, mirrored)) and 10 < sum(mirrored) < 54
    cropped = Augmenter(Augmentation(("crop",), padding=1), 0)(x)
    assert not torch.equal(cropped, x) and cropped.shape == x.shape


def _stream(augment=True):
    s = image_stream(side=8, n_train=16)
    return replace(s, augment=CROP_FLIP) if augment else s


def _model(s):
    return build_model(ModelConfig(hidden=(16,)), s.input_shape, s.num_classes, seed=0)


def test_augmentation_changes_training_and_is_deterministic_per_seed():
    aug, plain = _stream(), _stream(augment=False)

    def run(s, seed):
        m = _model(s)
        res = run_stream(s, m, make_strategy("naive"), TRAIN, seed=seed)
        return res, torch.cat([p.detach().flatten() for p in m.parameters()])

    (r1, w1), (r2, w2), (r3, w3) = run(aug, 1), run(aug, 1), run(aug, 2)
    rp, wp = run(plain, 1)
    np.testing.assert_array_equal(r1.R, r2.R)
    assert torch.equal(w1, w2)  # same seed: the same augmented batches, the same weights
    assert not torch.equal(w1, wp)  # training saw other pixels than without augmentation
    assert not torch.equal(w1, w3)
    np.testing.assert_array_equal(r1.R[0], rp.R[0])  # the untrained model: same evaluation


def test_evaluation_never_augments():
    s = _stream()
    run = LifelongRun(s, _model(s), make_strategy("naive"), TRAIN, seed=0)
    calls = []
    inner = run.ctx.augment
    run.ctx.augment = lambda x: calls.append(len(x)) or inner(x)
    run.start()
    assert calls == []
    before = run.augmenter.generator.get_state()
    run.evaluate()
    assert calls == [] and torch.equal(run.augmenter.generator.get_state(), before)
    run.learn_next()
    assert sum(calls) == len(s.tasks[0].y_train)  # every training sample, once per epoch
    # evaluation after training equals a plain forward pass on the raw test images
    task = s.tasks[0]
    with torch.no_grad():
        expect = (run.model(task.x_test).argmax(1) == task.y_test).double().mean().item()
    assert run.evaluate()[0] == pytest.approx(expect)


def test_stream_config_builds_the_augmentation():
    s = make_stream(StreamConfig(dataset="digits", kind="split", augment=("crop", "flip"),
                                 crop_padding=2))
    assert s.augment == Augmentation(("crop", "flip"), 2)
    assert make_stream(StreamConfig(dataset="digits", kind="split")).augment is None


@pytest.mark.parametrize("fields, field, words", [
    ({"augment": ["rotate"]}, "augment", "allowed: crop, flip"),
    ({"augment": ["flip", "flip"]}, "augment", "twice"),
    ({"augment": ["flip"], "crop_padding": 2}, "crop_padding", "only used with"),
    ({"augment": ["crop"], "crop_padding": -1}, "crop_padding", ">= 0"),
    ({"dataset": "mnist1d", "augment": ["flip"]}, "augment", "image inputs"),
])
def test_bad_augment_config_names_the_field(fields, field, words):
    with pytest.raises(ConfigError, match=words) as e:
        from_dict(StreamConfig, {"dataset": "digits", "kind": "split", **fields}, "stream")
    assert e.value.field == f"stream.{field}"


def test_the_object_store_handle_keeps_the_augmentation(ray_local):
    from llray.distributed.streaming import get_stream, put_stream

    s = _stream()
    back = get_stream(put_stream(s))
    assert back.augment == s.augment
    assert back.tasks[0].x_train.dtype == torch.uint8  # compact pixels in the object store
    assert torch.equal(back.tasks[0].x_train, s.tasks[0].x_train)
