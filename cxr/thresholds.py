"""Operating thresholds: choosing one per finding, and what a model does at it.

A case is called positive when its score is ``>=`` the threshold of its class. The shipped model's
thresholds are those at 90% specificity on the validation split (``threshold_at_specificity``);
Youden's J and F1 (``choose_thresholds``) are the alternatives.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn import metrics

from cxr.checks import not_computable_reason, prepare, safe_ratio

THRESHOLD_RULES = ("youden", "f1")
NOT_COMPUTABLE_THRESHOLD = 0.5


def choose_thresholds(
    y_true: np.ndarray, y_score: np.ndarray, rule: str = "youden", labels: Sequence[str] | None = None
) -> np.ndarray:
    """One operating threshold per class (a case is positive when its score is >= the threshold).

    Rules:
        ``"youden"``: the threshold maximising Youden's J = sensitivity + specificity - 1.
        ``"f1"``: the threshold maximising F1 = 2 PPV sensitivity / (PPV + sensitivity).
    Ties go to the highest threshold. A class without both a positive and a negative case gets
    0.5 and a warning.

    Args:
        y_true: (N, C) 0/1 labels. y_score: (N, C) scores.
        rule: ``"youden"`` or ``"f1"``.
        labels: class names, only for the warning.

    Returns:
        (C,) float64 thresholds.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule must be one of {THRESHOLD_RULES}, got {rule!r}.")
    truth, scores, names = prepare(y_true, y_score, labels)
    thresholds = np.full(truth.shape[1], NOT_COMPUTABLE_THRESHOLD)
    skipped = []
    for column in range(truth.shape[1]):
        positives = int(truth[:, column].sum())
        if not_computable_reason(positives, len(truth) - positives):
            skipped.append(names[column])
            continue
        if rule == "youden":
            false_positive_rate, true_positive_rate, candidates = metrics.roc_curve(
                truth[:, column], scores[:, column], drop_intermediate=False
            )
            # The first candidate is +inf (nothing called positive): never a usable threshold.
            objective, candidates = (true_positive_rate - false_positive_rate)[1:], candidates[1:]
        else:
            precision, recall, candidates = metrics.precision_recall_curve(truth[:, column], scores[:, column])
            objective = safe_ratio(2 * precision[:-1] * recall[:-1], precision[:-1] + recall[:-1])
            objective = np.nan_to_num(objective, nan=0.0)
        best = np.flatnonzero(objective == objective.max())
        thresholds[column] = candidates[best].max()
    if skipped:
        warnings.warn(
            f"No threshold can be chosen for {skipped} (no positive or no negative case); using "
            f"{NOT_COMPUTABLE_THRESHOLD}.",
            stacklevel=2,
        )
    return thresholds


def _as_thresholds(thresholds: float | np.ndarray, num_classes: int) -> np.ndarray:
    array = np.asarray(thresholds, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(num_classes, float(array))
    if array.shape != (num_classes,):
        raise ValueError(f"Expected one threshold or {num_classes}, got shape {array.shape}.")
    return array


def _confusion_counts(truth: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """(C,) TP, FP, TN, FN counts per class at ``score >= threshold``."""
    predicted = scores >= thresholds[np.newaxis, :]
    actual = truth.astype(bool)
    return {
        "TP": (predicted & actual).sum(axis=0),
        "FP": (predicted & ~actual).sum(axis=0),
        "TN": (~predicted & ~actual).sum(axis=0),
        "FN": (~predicted & actual).sum(axis=0),
    }


def threshold_metrics(
    y_true: np.ndarray, y_score: np.ndarray, thresholds: float | np.ndarray, labels: Sequence[str]
) -> pd.DataFrame:
    """Confusion counts and the metrics derived from them, per class, at the given thresholds.

    PPV, NPV and accuracy depend on the prevalence of this set, reported alongside them.

    Args:
        y_true: (N, C) 0/1 labels. y_score: (N, C) scores.
        thresholds: (C,) thresholds, or one for all classes; positive means score >= threshold.
        labels: the C class names.

    Returns:
        DataFrame indexed by label with ``threshold``, ``prevalence``, ``TP``, ``FP``, ``TN``,
        ``FN``, ``sensitivity``, ``specificity``, ``PPV``, ``NPV``, ``F1``, ``accuracy``
        (NaN where a denominator is 0).
    """
    truth, scores, names = prepare(y_true, y_score, labels)
    cutoffs = _as_thresholds(thresholds, truth.shape[1])
    counts = _confusion_counts(truth, scores, cutoffs)
    tp, fp, tn, fn = (counts[key] for key in ("TP", "FP", "TN", "FN"))
    table = pd.DataFrame(
        {
            "threshold": cutoffs,
            "prevalence": safe_ratio(tp + fn, np.full(len(names), len(truth))),
            **counts,
            "sensitivity": safe_ratio(tp, tp + fn),
            "specificity": safe_ratio(tn, tn + fp),
            "PPV": safe_ratio(tp, tp + fp),
            "NPV": safe_ratio(tn, tn + fn),
            "F1": safe_ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": safe_ratio(tp + tn, tp + fp + tn + fn),
        },
        index=pd.Index(names, name="label"),
    )
    return table


def classification_report(
    y_true: np.ndarray, y_score: np.ndarray, thresholds: float | np.ndarray, labels: Sequence[str]
) -> str:
    """scikit-learn's multilabel precision/recall/F1 report at the given thresholds (0 where undefined).

    Args:
        y_true: (N, C) 0/1 labels. y_score: (N, C) scores.
        thresholds: (C,) thresholds or one for all; positive means score >= threshold.
        labels: the C class names.
    """
    truth, scores, names = prepare(y_true, y_score, labels)
    predicted = (scores >= _as_thresholds(thresholds, truth.shape[1])[np.newaxis, :]).astype(np.int8)
    return metrics.classification_report(truth, predicted, target_names=names, zero_division=0)


def threshold_at_specificity(truth: np.ndarray, scores: np.ndarray, specificity: float = 0.9) -> np.ndarray:
    """Per class, a threshold whose specificity on these images is the smallest reachable at or above
    ``specificity`` (a case is positive when its score is >= the threshold): midway between the
    highest negative score it must stay above and the next negative score. A class without negatives gets 0.5."""
    truth, scores = np.asarray(truth), np.asarray(scores, dtype=np.float64)
    thresholds = np.full(scores.shape[1], 0.5)
    for column in range(scores.shape[1]):
        negatives = np.sort(scores[truth[:, column] == 0, column])
        if len(negatives) == 0:
            continue
        # Specificity at threshold t is the share of negatives below t: at least `specificity` of them.
        kept = int(np.ceil(specificity * len(negatives)))
        below = negatives[kept - 1] if kept > 0 else -np.inf
        above = negatives[negatives > below]
        thresholds[column] = np.nextafter(below, np.inf) if len(above) == 0 else (below + above[0]) / 2
    return thresholds
