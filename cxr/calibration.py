"""From the weighted loss's scores to probabilities: undo the class weighting, then Platt scaling,
and the measures that tell whether a probability can be read as one (ECE, reliability).

Why the scores are not probabilities: with ``w_pos = freq_neg`` and ``w_neg = freq_pos`` the weighted
cross-entropy is minimised, for an image whose true probability of a finding is p, by the score q with

    q / (1 - q) = (freq_neg / freq_pos) * p / (1 - p),   i.e.   logit q = logit p + ln(freq_neg / freq_pos).

A 5% finding's logit is pushed up by ln(0.95 / 0.05) = 2.94: an image with a true 10% chance scores
0.68. Subtracting the shift undoes the weighting; a per-finding Platt scaling (a slope and an
intercept on the shifted logit, fitted on the validation split) then corrects what the network's
training left miscalibrated. Both are increasing functions of the score, so the AUROC does not change: where a fit
would not be (a slope of zero or less, for a finding the model ranks no better than chance) or would
rest on too few cases, the shift alone is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

ECE_BINS = 10
MIN_POSITIVES = 10  # fewer validation positives than this: the shift alone (two parameters need cases)
CLIP = 1e-6  # scores are clipped to [CLIP, 1 - CLIP] before the logit, so that 0 and 1 stay finite


def logit(probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), CLIP, 1 - CLIP)
    return np.log(clipped / (1 - clipped))


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(values, dtype=np.float64)))


def weighting_shift(positive_frequencies: Sequence[float]) -> np.ndarray:
    """ln(freq_neg / freq_pos) per class: how far the weighted loss moves each finding's logit."""
    positive = np.asarray(positive_frequencies, dtype=np.float64)
    if ((positive <= 0) | (positive >= 1)).any():
        raise ValueError(f"positive frequencies must lie strictly between 0 and 1, got {positive}.")
    return np.log((1 - positive) / positive)


def fit_calibration(
    scores: np.ndarray, truth: np.ndarray, positive_frequencies: Sequence[float], labels: Sequence[str]
) -> dict:
    """Fit the calibration of each finding on a held-out split (the validation split).

    Args:
        scores: (N, C) model outputs. truth: (N, C) 0/1 labels.
        positive_frequencies: (C,) training-split prevalences, the ones the loss was weighted with.

    Returns:
        ``{"method": ..., "shift": {label: s}, "slope": {label: a}, "intercept": {label: b}}``: the
        calibrated probability is sigmoid(a * (logit(score) - s) + b). JSON-ready.
    """
    scores, truth = np.asarray(scores), np.asarray(truth)
    shift = weighting_shift(positive_frequencies)
    slope, intercept = np.ones(len(shift)), np.zeros(len(shift))
    for column in range(scores.shape[1]):
        positives = int(truth[:, column].sum())
        if positives < MIN_POSITIVES or positives == len(truth):
            continue  # too few cases to fit two parameters: the shift alone
        shifted = (logit(scores[:, column]) - shift[column])[:, np.newaxis]
        platt = LogisticRegression(C=1.0, max_iter=1000).fit(shifted, truth[:, column])
        if platt.coef_[0, 0] > 0:  # a non-positive slope would reorder (or flatten) the scores
            slope[column], intercept[column] = platt.coef_[0, 0], platt.intercept_[0]
    return {
        "method": "weighting shift undone, then Platt scaling fitted on the validation split",
        **{name: {label: round(float(value), 6) for label, value in zip(labels, values)}
           for name, values in (("shift", shift), ("slope", slope), ("intercept", intercept))},
    }  # fmt: skip


def calibrate(scores: np.ndarray, calibration: dict | None, labels: Sequence[str]) -> np.ndarray:
    """Calibrated probabilities of (N, C) model scores (the scores themselves when ``calibration`` is None)."""
    if calibration is None:
        return np.asarray(scores, dtype=np.float64)
    missing = [label for label in labels if label not in calibration.get("shift", {})]
    if missing:
        raise ValueError(f"calibration has no parameters for {missing}: export the model again.")
    parameters = {name: np.array([calibration[name][label] for label in labels])
                  for name in ("shift", "slope", "intercept")}
    return sigmoid(parameters["slope"] * (logit(scores) - parameters["shift"]) + parameters["intercept"])


def expected_calibration_error(truth: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of one class: the image-weighted mean gap between mean probability and observed frequency,
    over ``bins`` equal-width probability bins (Guo et al., ICML 2017)."""
    predicted, observed, counts = reliability(truth, probabilities, bins)
    filled = counts > 0
    return float(np.sum(counts[filled] / counts.sum() * np.abs(predicted[filled] - observed[filled])))


def reliability(truth: np.ndarray, probabilities: np.ndarray,
                bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean probability, observed frequency and number of images (NaN where empty)."""
    truth, probabilities = np.asarray(truth, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(which, probabilities, minlength=bins) / counts
        observed = np.bincount(which, truth, minlength=bins) / counts
    return predicted, observed, counts


def reliability_curves(
    truth: np.ndarray, curves: dict[str, np.ndarray], bins: int = ECE_BINS
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The points of reliability diagrams, for ``plots.plot_reliability``.

    Args:
        truth: (N, C) 0/1 labels. curves: name -> (N, C) probabilities (e.g. before and after calibration).

    Returns:
        name -> (C, bins) mean probabilities and (C, bins) observed frequencies (NaN where a bin is empty).
    """
    truth = np.asarray(truth)
    points = {}
    for name, probabilities in curves.items():
        probabilities = np.asarray(probabilities)
        if probabilities.shape != truth.shape:
            raise ValueError(f"{name!r} probabilities have shape {probabilities.shape}, the labels {truth.shape}.")
        per_class = [reliability(truth[:, column], probabilities[:, column], bins) for column in range(truth.shape[1])]
        points[name] = (np.array([predicted for predicted, _, _ in per_class]),
                        np.array([observed for _, observed, _ in per_class]))
    return points
