"""Calibration: the weighted loss's logit shift, Platt scaling, ECE, reliability and thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cxr import calibration, evaluation

LABELS = ["a", "b"]


def test_weighted_cross_entropy_shifts_the_logit_by_log_negative_over_positive_frequency():
    # A logistic model trained with the course's weights (w_pos = freq_neg, w_neg = freq_pos) on a
    # finding whose true probability is sigmoid(2x - 3): its logit is the true one plus the shift.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200_000, 1))
    truth = (rng.random(len(x)) < calibration.sigmoid(2 * x[:, 0] - 3)).astype(int)
    freq_pos = truth.mean()
    weights = np.where(truth == 1, 1 - freq_pos, freq_pos)
    weighted = LogisticRegression(C=1e6, max_iter=1000).fit(x, truth, sample_weight=weights)
    grid = np.linspace(-2, 2, 9)[:, np.newaxis]
    learnt_logit = weighted.decision_function(grid)
    shift = calibration.weighting_shift([freq_pos])[0]
    assert shift == pytest.approx(np.log((1 - freq_pos) / freq_pos))
    np.testing.assert_allclose(learnt_logit - shift, 2 * grid[:, 0] - 3, atol=0.05)


def _weighted_scores(rng, n=4000):
    """Scores as the weighted loss would give them: true probabilities pushed up by each class's shift."""
    true_logit = rng.normal(-2.0, 1.5, size=(n, 2))
    truth = (rng.random((n, 2)) < calibration.sigmoid(true_logit)).astype(int)
    freq_pos = truth.mean(axis=0)
    scores = calibration.sigmoid(true_logit + calibration.weighting_shift(freq_pos))
    return scores, truth, freq_pos


def test_calibration_brings_weighted_scores_back_to_probabilities_and_keeps_the_auroc():
    rng = np.random.default_rng(1)
    scores, truth, freq_pos = _weighted_scores(rng)
    fitted = calibration.fit_calibration(scores, truth, freq_pos, LABELS)
    assert set(fitted) >= {"shift", "slope", "intercept"} and set(fitted["slope"]) == set(LABELS)
    assert fitted["slope"]["a"] == pytest.approx(1, abs=0.15) and fitted["intercept"]["a"] == pytest.approx(0, abs=0.15)
    fresh_scores, fresh_truth, _ = _weighted_scores(np.random.default_rng(2))
    calibrated = calibration.calibrate(fresh_scores, fitted, LABELS)
    for column in range(2):
        before = calibration.expected_calibration_error(fresh_truth[:, column], fresh_scores[:, column])
        after = calibration.expected_calibration_error(fresh_truth[:, column], calibrated[:, column])
        assert before > 0.15 and after < 0.03
        assert evaluation.auroc(fresh_truth[:, column], calibrated[:, column]) == pytest.approx(
            evaluation.auroc(fresh_truth[:, column], fresh_scores[:, column]), abs=1e-12
        )


def test_without_calibration_the_scores_pass_through_and_missing_labels_are_named():
    scores = np.array([[0.2, 0.7]])
    np.testing.assert_array_equal(calibration.calibrate(scores, None, LABELS), scores)
    with pytest.raises(ValueError, match="'b'"):
        calibration.calibrate(scores, {"shift": {"a": 0}, "slope": {"a": 1}, "intercept": {"a": 0}}, LABELS)


def test_a_class_with_too_few_positives_keeps_the_shift_alone():
    rng = np.random.default_rng(4)
    truth = np.zeros((300, 2), int)
    truth[:9, 0] = 1  # 9 positives: too few for Platt scaling
    truth[:100, 1] = 1
    scores = np.clip(0.3 + 0.4 * truth + rng.normal(0, 0.1, truth.shape), 0.01, 0.99)
    fitted = calibration.fit_calibration(scores, truth, [0.3, 0.1], LABELS)
    assert (fitted["slope"]["a"], fitted["intercept"]["a"]) == (1.0, 0.0)
    assert fitted["slope"]["b"] != 1.0


def test_calibration_never_reverses_a_findings_ranking():
    # A finding the model ranks worse than chance: Platt scaling would fit a negative slope.
    rng = np.random.default_rng(5)
    truth = (rng.random((500, 2)) < 0.3).astype(int)
    scores = np.clip(0.5 - 0.2 * truth + rng.normal(0, 0.1, truth.shape), 0.01, 0.99)
    fitted = calibration.fit_calibration(scores, truth, [0.3, 0.3], LABELS)
    calibrated = calibration.calibrate(scores, fitted, LABELS)
    for column in range(2):
        assert fitted["slope"][LABELS[column]] > 0
        assert evaluation.auroc(truth[:, column], calibrated[:, column]) == pytest.approx(
            evaluation.auroc(truth[:, column], scores[:, column]), abs=1e-12)


def test_frequencies_of_zero_or_one_are_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        calibration.weighting_shift([0.0, 0.5])


def test_ece_is_the_weighted_gap_per_bin_and_zero_when_calibrated():
    truth = np.array([1, 0, 0, 0, 1, 1])
    probabilities = np.array([0.25, 0.25, 0.25, 0.25, 0.95, 0.95])
    # bin [0.2, 0.3): mean 0.25, observed 0.25; bin [0.9, 1]: mean 0.95, observed 1.
    assert calibration.expected_calibration_error(truth, probabilities) == pytest.approx(2 / 6 * 0.05)
    predicted, observed, counts = calibration.reliability(truth, probabilities)
    assert counts.tolist() == [0, 0, 4, 0, 0, 0, 0, 0, 0, 2]
    assert predicted[2] == pytest.approx(0.25) and observed[9] == 1.0 and np.isnan(observed[0])


def test_reliability_curves_are_each_columns_reliability():
    rng = np.random.default_rng(0)
    truth = (rng.random((200, 3)) < 0.3).astype(int)
    probabilities = rng.random((200, 3))
    predicted, observed = calibration.reliability_curves(truth, {"model": probabilities}, bins=5)["model"]
    for column in range(3):
        expected = calibration.reliability(truth[:, column], probabilities[:, column], 5)
        np.testing.assert_array_equal(predicted[column], expected[0])
        np.testing.assert_array_equal(observed[column], expected[1])
    with pytest.raises(ValueError, match="'model'"):
        calibration.reliability_curves(truth, {"model": probabilities[:10]})
