"""The arrays that evaluation and thresholds take, and the numbers that settings take: checked once, here;
and ``BadInput``, the error for input that the user can mend.

Conventions: ``y_true`` is an (N, C) 0/1 array, ``y_score`` an (N, C) array of scores, ``labels`` the
C finding names in column order. A class with no positive or no negative case has no AUROC and no
threshold of its own.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np


class BadInput(ValueError):
    """Input that the user can mend, a file's content or a run's settings; the message names the file,
    line or setting and says what to do. Scripts report it without a traceback."""


def is_number(value, low: float = -math.inf, high: float = math.inf) -> bool:
    """Whether ``value`` is a real number from ``low`` to ``high``: not a bool, not NaN, not infinite."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False
    return finite and bool(low <= value <= high)


def as_label_matrix(y_true: np.ndarray, name: str = "y_true") -> np.ndarray:
    """(N,) or (N, C) 0/1 values -> (N, C) int8; ValueError for anything else."""
    array = np.asarray(y_true)
    if array.ndim == 1:
        array = array[:, np.newaxis]
    if array.ndim != 2:
        raise ValueError(f"{name} must be an (N, C) array of 0/1 labels, got shape {array.shape}.")
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1 (uncertain or missing labels are not supported).")
    return array.astype(np.int8)


def as_scores(y_score: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N,) or (N, C) finite scores matching the labels' shape -> (N, C) float64."""
    array = np.asarray(y_score, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, np.newaxis]
    if array.shape != shape:
        raise ValueError(f"y_score has shape {array.shape} but y_true has shape {shape}.")
    if not np.isfinite(array).all():
        raise ValueError("y_score contains NaN or infinite values.")
    return array


def check_labels(labels: Sequence[str], num_classes: int) -> list[str]:
    """``labels`` as a list, if there is one per column."""
    labels = list(labels)
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} label names for {num_classes} columns.")
    return labels


def prepare(
    y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Checked (N, C) int8 labels, (N, C) float64 scores and C class names ("0", "1", ... when not given)."""
    truth = as_label_matrix(y_true)
    scores = as_scores(y_score, truth.shape)
    names = check_labels(labels, truth.shape[1]) if labels is not None else [str(i) for i in range(truth.shape[1])]
    return truth, scores, names


def not_computable_reason(positives: int, negatives: int) -> str:
    """'' if a class has both kinds of case, else why its AUROC cannot be computed."""
    if positives and negatives:
        return ""
    if not positives and not negatives:
        return "not computable: no case"
    return "not computable: no positive case" if not positives else "not computable: no negative case"


def safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, NaN where the denominator is 0 (and no warning)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    result = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    return np.divide(numerator, denominator, out=result, where=denominator != 0)
