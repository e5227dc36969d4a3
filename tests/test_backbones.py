"""ResNet backbones: shapes, BatchNorm across tasks and in checkpoints, exact resume,
the strategies that cannot take them, and uint8 pixel inputs for every model."""

import numpy as np
import pytest
import torch

from helpers import roundtrip
from images import image_stream
from llray.backbones import BACKBONES, BasicBlock, ResNet
from llray.config import parse_config
from llray.errors import ConfigError
from llray.learner import LifelongRun, run_stream
from llray.models import ModelConfig, build_model
from llray.strategies import TrainConfig, make_strategy

TRAIN = TrainConfig(epochs=1, batch_size=16, lr=0.05)


@pytest.mark.parametrize("name, nf", [("resnet18_reduced", 20), ("resnet18", 64)])
def test_output_and_feature_shapes(name, nf):
    m = build_model(ModelConfig(name=name), (3, 32, 32), 100, seed=0)
    x = torch.rand(5, 3, 32, 32)
    assert m(x).shape == (5, 100)
    assert m.features(x).shape == (5, 8 * nf) and m.head.in_features == 8 * nf
    torch.testing.assert_close(m(x), m.head(m.features(x)))
    blocks = [b for b in m.modules() if isinstance(b, BasicBlock)]
    assert len(blocks) == 8  # [2, 2, 2, 2]
    assert [b.conv1.stride[0] for b in blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    first_conv = m.features[0]
    assert first_conv.kernel_size == (3, 3) and first_conv.stride == (1, 1)  # CIFAR stem
    # other image sizes and grey images work too (global average pooling)
    g = build_model(ModelConfig(name=name), (1, 64, 48), 7, seed=0)
    assert g(torch.rand(2, 1, 64, 48)).shape == (2, 7)


def test_parameter_counts_match_the_references():
    """GEM's reduced ResNet-18 (nf=20) on CIFAR-100: 1.1 M; Mammoth's ResNet-18: 11.2 M."""
    counts = {n: sum(p.numel() for p in build_model(ModelConfig(name=n), (3, 32, 32), 100, 0)
                     .parameters()) for n in BACKBONES}
    assert counts == {"resnet18_reduced": 1_109_240, "resnet18": 11_220_132}


def test_init_is_a_pure_function_of_the_seed():
    a, b, c = (build_model(ModelConfig(name="resnet18_reduced"), (3, 16, 16), 4, s)
               for s in (1, 1, 2))
    x = torch.rand(3, 3, 16, 16)
    a.eval(), b.eval(), c.eval()
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))


def test_evaluation_uses_and_keeps_running_statistics():
    m = ResNet(3, 4, nf=4)
    x = torch.rand(8, 3, 16, 16)
    m.train()
    m(x)  # one training forward pass moves the running statistics
    bn = m.features[1]
    assert int(bn.num_batches_tracked) == 1 and not torch.all(bn.running_mean == 0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.eval()
    out1 = m(x[:3])
    out2 = m(x[:1])  # eval output of a sample does not depend on the rest of the batch
    torch.testing.assert_close(out1[:1], out2)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_batchnorm_state_roundtrips_bit_exactly_through_a_checkpoint():
    s = image_stream()
    run = LifelongRun(s, build_model(ModelConfig(name="resnet18_reduced"), s.input_shape,
                                     s.num_classes, 0), make_strategy("naive"), TRAIN)
    run.learn_next()
    state = roundtrip(run.state_dict())
    bn_keys = [k for k in state["model"] if "running_" in k or "num_batches" in k]
    assert len(bn_keys) == 3 * 20  # stem + 2 per block x 8 + 3 shortcuts; 3 buffers each
    fresh = build_model(ModelConfig(name="resnet18_reduced"), s.input_shape, s.num_classes, 9)
    fresh.load_state_dict(state["model"])
    for k, v in run.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


@pytest.mark.parametrize("strategy, augment", [("naive", False), ("replay", True)])
def test_resumed_resnet_run_equals_the_uninterrupted_one(strategy, augment):
    from dataclasses import replace

    from llray.data.augment import Augmentation

    s = image_stream(num_tasks=3)
    if augment:
        s = replace(s, augment=Augmentation(("crop", "flip"), 2))

    def model(seed):
        return build_model(ModelConfig(name="resnet18_reduced"), s.input_shape,
                           s.num_classes, seed)

    full = run_stream(s, model(0), make_strategy(strategy), TRAIN, seed=5)
    run = LifelongRun(s, model(0), make_strategy(strategy), TRAIN, seed=5)
    run.start()
    run.learn_next()
    state = roundtrip(run.state_dict())
    resumed = LifelongRun(s, model(99), make_strategy(strategy), TRAIN, seed=5)
    resumed.load_state_dict(state)
    while not resumed.done:
        resumed.learn_next()
    np.testing.assert_array_equal(resumed.R, full.R)
    assert full.status == "ok" and not np.isnan(full.R).any()


def test_resnet_learns_the_toy_images():
    """Evaluated in eval mode, i.e. with the running statistics: they need a few tens of
    steps (momentum 0.1) before they describe the trained network's activations."""
    s = image_stream(num_tasks=2, n_train=24, scenario="task")
    m = build_model(ModelConfig(name="resnet18_reduced"), s.input_shape, s.num_classes, 0)
    res = run_stream(s, m, make_strategy("naive"), TrainConfig(epochs=10, batch_size=16, lr=0.1))
    assert res.R[0].max() <= 0.75 and res.R[2].min() > 0.9, res.R


@pytest.mark.parametrize("strategy, index", [("expand", 1), ("progressive", 1)])
def test_mlp_only_strategies_refuse_a_resnet_in_the_config(strategy, index):
    cfg = {"experiment": "x", "stream": {"dataset": "digits", "kind": "split",
                                         "scenario": "task"},
           "model": {"name": "resnet18"}, "strategies": ["naive", strategy]}
    with pytest.raises(ConfigError) as e:
        parse_config(cfg)
    assert e.value.field == f"strategies[{index}]" and "model.name: mlp" in str(e.value)
    cfg["model"] = {"name": "mlp"}
    parse_config(cfg)  # the same strategies with an MLP are fine


@pytest.mark.parametrize("shape, words", [((64,), "image inputs"), ((3, 8, 8), "16 pixels")])
def test_backbone_input_errors_name_the_model(shape, words):
    with pytest.raises(ConfigError, match=words) as e:
        build_model(ModelConfig(name="resnet18_reduced"), shape, 10, seed=0)
    assert e.value.field == "model.name"


def test_unknown_model_lists_the_backbones():
    with pytest.raises(ConfigError, match="resnet18_reduced"):
        ModelConfig(name="resnet50")


# -- uint8 pixels: every model converts in its first layer, every strategy still works ----
@pytest.mark.parametrize("name", ["mlp", "convnet", "resnet18_reduced"])
def test_uint8_input_is_the_same_as_float_pixels(name):
    m = build_model(ModelConfig(name=name, hidden=(16,), channels=(4,)), (3, 16, 16), 5, 0)
    m.eval()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(m(x), m(x.float() / 255))
    assert torch.equal(m.features(x), m.features(x.float() / 255))


STRATEGIES = ["naive", "joint", "ewc", "si", "mas", "lwf", "replay", "derpp", "agem", "gem",
              "generative_replay", "icarl", "expand", "progressive"]


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_gives_the_same_r_on_uint8_and_float_pixels(name):
    scenario = "class" if name == "icarl" else "task"
    u8 = image_stream(scenario=scenario, n_train=12, n_test=6, side=8)
    f32 = image_stream(scenario=scenario, n_train=12, n_test=6, side=8, dtype=torch.float32)
    assert u8.tasks[0].x_train.dtype == torch.uint8
    params = {"generator_epochs": 1, "hidden": 32} if name == "generative_replay" else {}
    rs = []
    for s in (u8, f32):
        m = build_model(ModelConfig(hidden=(16,)), s.input_shape, s.num_classes, seed=0)
        rs.append(run_stream(s, m, make_strategy(name, params), TRAIN, seed=3))
    assert rs[0].status == rs[1].status == "ok"
    np.testing.assert_array_equal(rs[0].R, rs[1].R)


@pytest.mark.parametrize("name", ["replay", "derpp", "agem"])
def test_replay_buffers_keep_uint8_pixels_in_checkpoints(name):
    s = image_stream(side=8)
    m = build_model(ModelConfig(hidden=(16,)), s.input_shape, s.num_classes, seed=0)
    run = LifelongRun(s, m, make_strategy(name), TRAIN)
    run.learn_next()
    state = roundtrip(run.state_dict())["strategy"]["buffer"]
    assert state["x"].dtype == torch.uint8 and len(state["x"]) > 0
    # every stored memory is one of the task's images, bit for bit
    pool = {bytes(x.numpy()) for x in s.tasks[0].x_train}
    assert all(bytes(x.numpy()) in pool for x in state["x"])
