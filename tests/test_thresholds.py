"""Operating thresholds: the rules that choose them and the metrics at them (small hand-made cases)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cxr import thresholds

LABELS3 = ("A", "B", "C")


@pytest.fixture
def no_warnings():
    """Turn any warning (e.g. numpy's division by zero) into an error inside the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def threshold_case():
    """3 positives, 12 negatives: Youden prefers catching every positive, F1 avoiding false positives."""
    positives = [0.5, 0.8, 0.9]
    negatives = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.6, 0.7]
    y_true = np.array([1] * 3 + [0] * 12)[:, np.newaxis]
    y_score = np.array(positives + negatives)[:, np.newaxis]
    return y_true, y_score


def test_youden_threshold_by_hand():
    # At 0.5: sensitivity 1, specificity 10/12, J = 0.833; at 0.8: J = 2/3.
    assert thresholds.choose_thresholds(*threshold_case(), rule="youden") == pytest.approx([0.5])


def test_f1_threshold_by_hand():
    # At 0.8: TP 2, FP 0, FN 1, F1 = 0.8; at 0.5: TP 3, FP 2, F1 = 0.75.
    assert thresholds.choose_thresholds(*threshold_case(), rule="f1") == pytest.approx([0.8])


def test_threshold_of_a_perfect_separation_separates():
    y_true = np.array([[0], [0], [1], [1]])
    y_score = np.array([[0.1], [0.3], [0.6], [0.7]])
    for rule in ("youden", "f1"):
        threshold = thresholds.choose_thresholds(y_true, y_score, rule)[0]
        assert 0.3 < threshold <= 0.6


def test_threshold_of_a_class_without_positives_is_half_with_a_warning():
    y_true, y_score = threshold_case()
    y_true = np.hstack([y_true, np.zeros_like(y_true)])
    y_score = np.hstack([y_score, y_score])
    with pytest.warns(UserWarning, match="Hernia"):
        chosen = thresholds.choose_thresholds(y_true, y_score, "youden", labels=("Mass", "Hernia"))
    assert chosen == pytest.approx([0.5, 0.5])


def test_unknown_threshold_rule_raises():
    with pytest.raises(ValueError, match="rule"):
        thresholds.choose_thresholds(*threshold_case(), rule="accuracy")


def test_threshold_metrics_by_hand(no_warnings):
    # Class A at 0.85: only 0.9 called positive. Class B: no positive and nothing called positive.
    y_true = np.array([[1, 0], [1, 0], [0, 0], [0, 0], [0, 0]])
    y_score = np.array([[0.9, 0.1], [0.2, 0.1], [0.8, 0.1], [0.1, 0.1], [0.5, 0.1]])
    table = thresholds.threshold_metrics(y_true, y_score, [0.85, 0.5], ("A", "B"))
    a = table.loc["A"]
    assert (a["TP"], a["FP"], a["TN"], a["FN"]) == (1, 0, 3, 1)
    table = thresholds.threshold_metrics(y_true, y_score, 0.5, ("A", "B"))
    a, b = table.loc["A"], table.loc["B"]
    # 0.5 counts as positive (score >= threshold): the fifth case is a false positive.
    assert (a["TP"], a["FP"], a["TN"], a["FN"]) == (1, 2, 1, 1)
    assert a["sensitivity"] == pytest.approx(1 / 2)
    assert a["specificity"] == pytest.approx(1 / 3)
    assert a["PPV"] == pytest.approx(1 / 3)
    assert a["NPV"] == pytest.approx(1 / 2)
    assert a["F1"] == pytest.approx(2 / (2 + 2 + 1))
    assert a["accuracy"] == pytest.approx(2 / 5)
    assert a["prevalence"] == pytest.approx(2 / 5)
    assert (b["TP"], b["FP"], b["TN"], b["FN"]) == (0, 0, 5, 0)
    assert np.isnan(b["sensitivity"]) and np.isnan(b["PPV"]) and np.isnan(b["F1"])
    assert b["specificity"] == 1.0 and b["NPV"] == 1.0 and b["accuracy"] == 1.0


def test_threshold_metrics_rejects_the_wrong_number_of_thresholds():
    with pytest.raises(ValueError, match="threshold"):
        thresholds.threshold_metrics(np.zeros((3, 2)), np.zeros((3, 2)), [0.5, 0.5, 0.5], ("A", "B"))


def test_classification_report_names_every_label():
    rng = np.random.default_rng(0)
    y_true = (rng.random((60, 3)) < 0.3).astype(np.int8)
    y_true[0, :2], y_true[1, :2], y_true[:, 2] = 1, 0, 0  # the third class has no positive case
    y_score = np.round(rng.random((60, 3)) * 0.5 + 0.4 * y_true, 2)
    report = thresholds.classification_report(y_true, y_score, [0.5, 0.5, 0.5], LABELS3)
    assert isinstance(report, str)
    assert all(label in report for label in LABELS3) and "macro avg" in report


def test_threshold_at_specificity_keeps_that_share_of_negatives_below_it():
    rng = np.random.default_rng(3)
    truth = (rng.random((500, 2)) < 0.3).astype(int)
    scores = rng.random((500, 2)) + truth * 0.3
    chosen = thresholds.threshold_at_specificity(truth, scores, 0.9)
    for column in range(2):
        negatives = scores[truth[:, column] == 0, column]
        specificity = (negatives < chosen[column]).mean()
        assert 0.9 <= specificity < 0.9 + 2 / len(negatives)
