"""Metrics of R on hand-made matrices whose answers are worked out below by hand."""

import numpy as np
import pytest

from llray import metrics

# Rows: random init, then after tasks 1..3 of the order. Columns: tasks of the order.
R3 = np.array(
    [
        [0.10, 0.20, 0.30],
        [0.90, 0.25, 0.35],
        [0.70, 0.85, 0.40],
        [0.60, 0.75, 0.95],
    ]
)

# A non-monotone first column (0.50 -> 0.90 -> 0.60), a high random-init entry (0.95)
# and a high entry before task 2 is learned (0.99): neither may count for forgetting.
R_NONMONO = np.array(
    [
        [0.95, 0.10, 0.10],
        [0.50, 0.99, 0.20],
        [0.90, 0.60, 0.30],
        [0.60, 0.40, 0.80],
    ]
)


def test_acc_is_mean_of_last_row():
    assert metrics.acc(R3) == pytest.approx((0.60 + 0.75 + 0.95) / 3)


def test_bwt_divides_by_t_minus_one():
    by_hand = ((0.60 - 0.90) + (0.75 - 0.85)) / 2  # = -0.20
    assert metrics.bwt(R3) == pytest.approx(by_hand)
    assert metrics.bwt(R3) != pytest.approx(((0.60 - 0.90) + (0.75 - 0.85)) / 3)


def test_fwt_uses_row_before_learning_and_random_init_baseline():
    by_hand = ((0.25 - 0.20) + (0.40 - 0.30)) / 2  # R[1,2]-b[2], R[2,3]-b[3] (1-based)
    assert metrics.fwt(R3) == pytest.approx(by_hand)
    assert metrics.fwt(R3) != pytest.approx(by_hand * 2 / 3)


def test_gem_reference_code_convention_is_t_minus_one_over_t_of_ours():
    T = R3.shape[1]
    # GEM's metrics.py: per-task vectors with a 0 for the last (bwt) / first (fwt) task,
    # then .mean() over all T tasks.
    result = R3[1:]
    gem_bwt = np.mean(result[T - 1] - np.diag(result))
    gem_fwt = np.mean([0.0] + [result[t - 1, t] - R3[0, t] for t in range(1, T)])
    assert metrics.bwt(R3) * (T - 1) / T == pytest.approx(gem_bwt)
    assert metrics.fwt(R3) * (T - 1) / T == pytest.approx(gem_fwt)
    assert metrics.bwt(R3) != pytest.approx(gem_bwt)


def test_learning_accuracy_is_mean_diagonal():
    assert metrics.learning_accuracy(R3) == pytest.approx((0.90 + 0.85 + 0.95) / 3)


def test_forgetting_monotone_equals_minus_bwt():
    assert metrics.forgetting(R3) == pytest.approx(((0.90 - 0.60) + (0.85 - 0.75)) / 2)
    assert metrics.forgetting(R3) == pytest.approx(-metrics.bwt(R3))


def test_forgetting_non_monotone_column_uses_best_row_since_learned():
    # task 1: max(0.50, 0.90) - 0.60 = 0.30; task 2: max(0.60) - 0.40 = 0.20
    assert metrics.forgetting(R_NONMONO) == pytest.approx((0.30 + 0.20) / 2)
    # BWT only sees the entry right after learning: (0.60-0.50) + (0.40-0.60)
    assert metrics.bwt(R_NONMONO) == pytest.approx((0.10 - 0.20) / 2)


def test_two_tasks():
    R = [[0.1, 0.1], [0.9, 0.2], [0.6, 0.8]]
    assert metrics.acc(R) == pytest.approx(0.7)
    assert metrics.bwt(R) == pytest.approx(-0.3)
    assert metrics.fwt(R) == pytest.approx(0.1)
    assert metrics.forgetting(R) == pytest.approx(0.3)


def test_scalar_input_returns_python_float():
    for fn in (metrics.acc, metrics.bwt, metrics.fwt, metrics.forgetting,
               metrics.learning_accuracy):
        assert type(fn(R3)) is float


def test_vectorised_equals_per_matrix():
    rng = np.random.default_rng(0)
    stack = rng.random((4, 5, 6, 5))  # batch [4, 5] of R with T = 5
    for fn in (metrics.acc, metrics.bwt, metrics.fwt, metrics.forgetting,
               metrics.learning_accuracy):
        out = fn(stack)
        assert out.shape == (4, 5)
        expected = np.array([[fn(stack[a, b]) for b in range(5)] for a in range(4)])
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-15)


def test_summary_batched_and_keys():
    stack = np.stack([R3, R_NONMONO])
    s = metrics.summary(stack)
    assert list(s) == ["acc", "bwt", "fwt", "forgetting", "learning_accuracy"]
    assert s["forgetting"].tolist() == pytest.approx([0.20, 0.25])


def test_summary_single_task_has_nan_comparisons():
    s = metrics.summary([[0.1], [0.8]])
    assert s["acc"] == pytest.approx(0.8) and np.isnan(s["bwt"]) and np.isnan(s["fwt"])


def test_nan_rows_propagate():
    R = R3.copy()
    R[2:] = np.nan  # diverged while learning task 2
    assert np.isnan(metrics.acc(R)) and np.isnan(metrics.bwt(R)) and np.isnan(metrics.fwt(R))


@pytest.mark.parametrize("shape", [(3,), (3, 3), (3, 4), (2, 5, 5)])
def test_bad_shapes_are_value_errors(shape):
    with pytest.raises(ValueError, match=r"\[\.\.\., T\+1, T\]"):
        metrics.acc(np.zeros(shape))


def test_comparison_metrics_need_two_tasks():
    for fn in (metrics.bwt, metrics.fwt, metrics.forgetting):
        with pytest.raises(ValueError, match="at least 2 tasks"):
            fn([[0.1], [0.9]])


def test_running_metrics_over_seen_tasks():
    R = R3.copy()
    R[3] = np.nan  # not reached yet
    m2 = metrics.running_metrics(R, 2)
    assert m2["acc"] == pytest.approx((0.70 + 0.85) / 2)
    assert m2["bwt"] == pytest.approx(0.70 - 0.90)  # one earlier task: divide by 1
    m1 = metrics.running_metrics(R, 1)
    assert m1 == {"acc": pytest.approx(0.90), "bwt": 0.0}


def test_running_metrics_at_last_step_equal_final():
    m = metrics.running_metrics(R3, 3)
    assert m["acc"] == pytest.approx(metrics.acc(R3))
    assert m["bwt"] == pytest.approx(metrics.bwt(R3))


def test_running_metrics_batched():
    stack = np.stack([R3, R_NONMONO])
    m = metrics.running_metrics(stack, 2)
    assert m["acc"].tolist() == pytest.approx([(0.70 + 0.85) / 2, (0.90 + 0.60) / 2])


@pytest.mark.parametrize("step", [0, 4, 1.5, True])
def test_running_metrics_bad_step(step):
    with pytest.raises(ValueError, match="step must be an integer in 1..3"):
        metrics.running_metrics(R3, step)
