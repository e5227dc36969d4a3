"""GEM and A-GEM: the projections (against brute force and scipy), the gradients applied
in training, memories, config errors, checkpoint round trips, runs that beat naive."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import llray.strategies.agem as agem_mod
import llray.strategies.gem as gem_mod
from helpers import roundtrip
from llray import optimizers
from llray.data import StreamConfig, Task, TaskStream, make_stream
from llray.errors import ConfigError
from llray.learner import LifelongRun, run_stream
from llray.models import ModelConfig, build_model
from llray.strategies import TrainConfig, make_strategy
from llray.strategies._qp import agem_project, gem_project, grad_params, solve_gem_dual

torch.set_num_threads(1)
TOL = 1e-6


# -- A-GEM's projection ----------------------------------------------------------------------
def test_agem_projection_has_non_negative_dot_and_is_unchanged_when_aligned():
    gen = torch.Generator().manual_seed(0)
    projected = 0
    for _ in range(200):
        g, g_ref = torch.randn(7, generator=gen), torch.randn(7, generator=gen)
        out = agem_project(g, g_ref)
        dot = float(g @ g_ref)
        if dot >= 0:
            assert out is g  # untouched
            continue
        projected += 1
        assert float(out @ g_ref) >= -TOL * float(g.norm() * g_ref.norm())
        # the closest vector of the half-space: g moves along g_ref only, by the exact amount
        expected = g - dot / float(g_ref @ g_ref) * g_ref
        torch.testing.assert_close(out, expected)
        assert float(out @ g_ref) == pytest.approx(0.0, abs=1e-5)
    assert 50 < projected < 150


# -- GEM's QP --------------------------------------------------------------------------------
def brute_force_projection(g: np.ndarray, G: np.ndarray) -> np.ndarray:
    """argmin ½‖z − g‖² s.t. G z ≥ 0, by trying every active set: the optimum is the
    projection of g onto {z : G_S z = 0} for its active set S, and it is the closest
    feasible candidate."""
    best, best_d = None, np.inf
    K = len(G)
    for r in range(K + 1):
        for S in itertools.combinations(range(K), r):
            z = g.copy()
            if S:
                GS = G[list(S)]
                z = g - np.linalg.pinv(GS) @ (GS @ g)
            if (G @ z >= -1e-9).all() and np.linalg.norm(z - g) < best_d:
                best, best_d = z, np.linalg.norm(z - g)
    return best


def random_case(rng, K, P):
    G = rng.normal(size=(K, P))
    if K >= 2 and rng.random() < 0.3:
        G[1] = G[0] * 2.0  # parallel memory gradients: G Gᵀ is singular
    g = rng.normal(size=P) - G.sum(0)  # usually violates some constraints
    return g, G


def test_gem_projection_satisfies_every_constraint_and_is_the_closest_such_vector():
    rng = np.random.default_rng(0)
    projected = 0
    for trial in range(60):
        K, P = int(rng.integers(1, 6)), int(rng.integers(2, 9))  # includes K > P
        g, G = random_case(rng, K, P)
        out = gem_project(torch.tensor(g), torch.tensor(G), margin=0.0).numpy()
        assert (G @ out >= -TOL).all(), (trial, G @ out)
        if (G @ g >= 0).all():
            np.testing.assert_array_equal(out, g)
            continue
        projected += 1
        np.testing.assert_allclose(out, brute_force_projection(g, G), atol=1e-6)
    assert projected > 30


def test_gem_margin_solves_the_dual_with_v_at_least_gamma():
    """With γ > 0 the dual's minimiser agrees with scipy's bounded solver and G g̃ ≥ 0."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    for _ in range(20):
        K, P = int(rng.integers(2, 5)), int(rng.integers(3, 8))
        g, G = random_case(rng, K, P)
        gram, q = G @ G.T, G @ g
        v = solve_gem_dual(gram, q, margin=0.5)
        assert (v >= 0.5 - 1e-12).all()
        obj = lambda u: 0.5 * u @ gram @ u + q @ u  # noqa: E731
        ref = minimize(obj, np.full(K, 0.5), jac=lambda u: gram @ u + q,
                       bounds=[(0.5, None)] * K, method="L-BFGS-B",
                       options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000})
        assert obj(v) <= ref.fun + 1e-8
        if (q < 0).any():
            out = gem_project(torch.tensor(g), torch.tensor(G), margin=0.5).numpy()
            assert (G @ out >= -TOL).all()
            np.testing.assert_allclose(out, G.T @ v + g, atol=1e-9)


# -- the gradients applied in training ---------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=3))


def split_task_stream(num_tasks=3):
    """Task-IL split digits (classes 0-1, 2-3, ...) built directly from sklearn's digits."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    tasks = []
    for t in range(num_tasks):
        cls = (2 * t, 2 * t + 1)
        idx = torch.nonzero(torch.isin(y, torch.tensor(cls))).squeeze(1)
        tr, te = idx[::2], idx[1::2]
        tasks.append(Task(t, f"split-{t}", x[tr], y[tr], x[te], y[te], cls))
    return TaskStream(tuple(tasks), "task", "split-digits", (64,), 10)


def mlp(stream, seed=0):
    return build_model(ModelConfig(hidden=(32,)), stream.input_shape, stream.num_classes, seed)


def record(monkeypatch, module, fn_name):
    """Wrap ``module.fn_name`` so every (args, result) is kept."""
    calls = []
    fn = getattr(module, fn_name)

    def wrapper(*args, **kw):
        out = fn(*args, **kw)
        calls.append((args, out))
        return out

    monkeypatch.setattr(module, fn_name, wrapper)
    return calls


def test_agem_applies_the_projected_gradient_in_training(digits, monkeypatch):
    """Every step's update is −lr·g̃ with g̃ᵀg_ref ≥ 0 (plain SGD); some steps project."""
    lr = 0.05
    run = LifelongRun(digits, mlp(digits), make_strategy("agem", {"memory_size": 100,
                      "mem_batch_size": 32}), TrainConfig(epochs=2, lr=lr), seed=0)
    run.learn_next()
    calls = record(monkeypatch, agem_mod, "agem_project")
    params = grad_params(run.model)
    before = [torch.cat([p.detach().reshape(-1) for p in params])]
    orig_step = optimizers.SGD.step  # the strategies' SGD (torch's, llray.optimizers)

    def step(self, *a, **k):  # remember the parameters after every step
        out = orig_step(self, *a, **k)
        before.append(torch.cat([p.detach().reshape(-1) for p in params]))
        return out

    monkeypatch.setattr(optimizers.SGD, "step", step)
    run.learn_next()
    assert len(calls) == len(before) - 1 > 10
    n_proj = 0
    for ((g, g_ref), out), a, b in zip(calls, before[:-1], before[1:]):
        assert float(out @ g_ref) >= -1e-5 * float(g.norm() * g_ref.norm())
        torch.testing.assert_close(b - a, -lr * out, rtol=1e-4, atol=1e-7)
        n_proj += out is not g
    assert 0 < n_proj == run.strategy.projections


def test_gem_memory_gradients_are_per_task_and_applied_steps_satisfy_the_constraints(
    monkeypatch,
):
    stream = split_task_stream(3)
    gem = make_strategy("gem", {"memory_per_task": 20, "margin": 0.5})
    run = LifelongRun(stream, mlp(stream), gem, TrainConfig(epochs=1, lr=0.1), seed=0)
    run.learn_next()
    run.learn_next()
    assert gem.memory_tasks == [0, 1] and len(gem.mem_y) == 40
    assert all(set(gem.mem_y[gem.mem_t == k].tolist()) <= set(stream.tasks[k].classes)
               for k in (0, 1))
    # one batched backward == one autograd.grad per task memory (masked to its head)
    params = grad_params(run.model)
    G = gem.memory_gradients(run.model, params, run.ctx)
    for row, k in enumerate((0, 1)):
        sel = gem.mem_t == k
        loss = F.cross_entropy(run.ctx.logits(run.model, gem.mem_x[sel], k), gem.mem_y[sel])
        ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(G[row], ref, rtol=1e-5, atol=1e-7)
    calls = record(monkeypatch, gem_mod, "gem_project")
    projections_before = gem.projections
    run.learn_next()
    assert calls
    for (g, G, margin), out in calls:
        assert G.shape[0] == 2 and margin == 0.5
        assert (G @ out >= -1e-5 * float(g.norm()) * G.norm(dim=1)).all()
    n_proj = sum(out is not g for (g, *_), out in calls)
    assert gem.projections - projections_before == n_proj > 0


# -- configs, checkpoints, runs ------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, params, field",
    [
        ("gem", {"memory_per_task": 0}, "memory_per_task"),
        ("gem", {"margin": -0.1}, "margin"),
        ("agem", {"memory_size": 0}, "memory_size"),
        ("agem", {"mem_batch_size": 0}, "mem_batch_size"),
        ("agem", {"memory_size": "big"}, "memory_size"),
    ],
)
def test_bad_config_raises_config_error_naming_the_field(name, params, field):
    with pytest.raises(ConfigError) as e:
        make_strategy(name, params)
    assert e.value.field == f"{name}.{field}"


@pytest.mark.parametrize("name, params", [("gem", {"memory_per_task": 32}),
                                          ("agem", {"memory_size": 100, "mem_batch_size": 32})])
def test_checkpoint_round_trip_resumes_to_the_same_R(digits, name, params):
    train = TrainConfig(epochs=1, lr=0.05)
    full = run_stream(digits, mlp(digits), make_strategy(name, params), train, seed=1)
    first = LifelongRun(digits, mlp(digits), make_strategy(name, params), train, seed=1)
    first.learn_next()
    state = roundtrip(first.state_dict())
    resumed = LifelongRun(digits, mlp(digits), make_strategy(name, params), train, seed=1)
    resumed.load_state_dict(state)
    while not resumed.done:
        resumed.learn_next()
    assert full.status == resumed.status == "ok"
    np.testing.assert_array_equal(resumed.R, full.R)


@pytest.mark.parametrize("name", ["gem", "agem"])
def test_runs_in_task_il_with_per_sample_heads(name):
    stream = split_task_stream(3)
    res = run_stream(stream, mlp(stream), make_strategy(name), TrainConfig(epochs=5), seed=0)
    assert res.status == "ok" and res.R[-1].mean() > 0.8, res.R


def test_gem_and_agem_beat_naive_on_permuted_digits(digits):
    train = TrainConfig(epochs=5, lr=0.05)
    acc = {}
    for name in ("naive", "agem", "gem"):
        res = run_stream(digits, mlp(digits), make_strategy(name), train, seed=0)
        assert res.status == "ok"
        acc[name] = res.R[-1].mean()
    assert acc["agem"] > acc["naive"] + 0.03, acc
    assert acc["gem"] > acc["naive"] + 0.03, acc
