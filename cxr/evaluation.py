"""Evaluating a multi-label classifier's scores: AUROC with bootstrap intervals (per class, mean,
paired between models, by subgroup), ROC and precision-recall curves, and the expert-label check.

The arrays follow ``cxr.checks``' conventions. A class with no positive or no negative case has no
AUROC: it is reported as NaN with a note, never as 0.5. The figures of these numbers are drawn by
``cxr.plots``, the scores come from ``cxr.inference``, thresholds are ``cxr.thresholds``'.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn import metrics

from cxr import data
from cxr.checks import as_label_matrix, as_scores, not_computable_reason, prepare, safe_ratio

# Expert finding -> (model labels whose maximum is the score, NIH labels whose "or" is the NIH label).
EXPERT_COMPARISONS = {
    "Pneumothorax": (("Pneumothorax",), ("Pneumothorax",)),
    "Nodule or mass": (("Nodule", "Mass"), ("Nodule", "Mass")),
}


# --- AUROC ---------------------------------------------------------------------------------------


def _weighted_auroc(truth: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC of one class for many weightings of the same cases at once.

    A bootstrap resample is the original cases weighted by how often each was drawn, so all
    resamples share one sort of the scores.

    Args:
        truth: (N,) 0/1 labels. score: (N,) scores. weights: (B, N) non-negative case weights.

    Returns:
        (B,) AUROC per weighting; NaN where it has no positive or no negative weight.
    """
    order = np.argsort(score, kind="stable")
    sorted_score, sorted_truth = score[order], truth[order].astype(bool)
    sorted_weights = weights[:, order]
    # Start of each run of tied scores: ties count one half, as in the rank-sum statistic.
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    positive = np.add.reduceat(np.where(sorted_truth, sorted_weights, 0.0), starts, axis=1)
    negative = np.add.reduceat(np.where(sorted_truth, 0.0, sorted_weights), starts, axis=1)
    negatives_below = np.cumsum(negative, axis=1) - negative
    concordant = (positive * (negatives_below + 0.5 * negative)).sum(axis=1)
    pairs = positive.sum(axis=1) * negative.sum(axis=1)
    return safe_ratio(concordant, pairs)


def auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve of one class from ranks (Mann-Whitney U / (n_pos n_neg)).

    Args:
        y_true: (N,) 0/1 labels. y_score: (N,) scores.

    Returns:
        The AUROC (ties count one half), or NaN if there is no positive or no negative case.
    """
    truth = as_label_matrix(np.ravel(y_true))[:, 0]
    score = as_scores(np.ravel(y_score), (len(truth), 1))[:, 0]
    if not_computable_reason(int(truth.sum()), int(len(truth) - truth.sum())):
        return float("nan")
    return float(_weighted_auroc(truth, score, np.ones((1, len(truth))))[0])


def _bootstrap_weights(
    num_images: int, groups: np.ndarray | None, n_bootstrap: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_bootstrap, N) times each image is drawn when resampling images, or patients, with replacement."""
    if groups is None:
        codes, num_units = np.arange(num_images), num_images
    else:
        _, codes = np.unique(np.asarray(groups), return_inverse=True)
        num_units = int(codes.max()) + 1
    draws = rng.integers(0, num_units, size=(n_bootstrap, num_units))
    # Counting draws per row in one bincount: offset each resample's unit codes by its row.
    offsets = (np.arange(n_bootstrap) * num_units)[:, np.newaxis]
    unit_counts = np.bincount((draws + offsets).ravel(), minlength=n_bootstrap * num_units)
    unit_counts = unit_counts.reshape(n_bootstrap, num_units).astype(np.float64)
    # An image is drawn as often as its patient.
    return unit_counts[:, codes]


def auroc_table(
    y_true: np.ndarray,
    y_score: np.ndarray,
    labels: Sequence[str],
    groups: Sequence | np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """AUROC per class with a bootstrap 95% percentile interval.

    Each resample draws patients (``groups``) with replacement, keeping all their images, or
    images when ``groups`` is None; the same resamples serve every class. A resample without a
    positive or a negative case of a class is skipped for that class.

    Args:
        y_true: (N, C) 0/1 labels. y_score: (N, C) scores. labels: the C class names.
        groups: (N,) patient id of each image, or None to resample images.
        n_bootstrap: number of resamples (0: no interval).
        seed: seed of the resampling.

    Returns:
        DataFrame indexed by label with ``AUROC``, ``CI low``, ``CI high``, ``positives``,
        ``negatives`` and ``note`` (why a class is not computable, or how many resamples the
        interval rests on when some were skipped).
    """
    truth, scores, names = prepare(y_true, y_score, labels)
    if not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}.")
    if groups is not None and len(groups) != len(truth):
        raise ValueError(f"{len(groups)} group ids for {len(truth)} images.")
    weights = None
    if n_bootstrap and len(truth):
        weights = _bootstrap_weights(len(truth), groups, n_bootstrap, np.random.default_rng(seed))

    rows = []
    for column, name in enumerate(names):
        positives = int(truth[:, column].sum())
        negatives = len(truth) - positives
        note = not_computable_reason(positives, negatives)
        point = low = high = np.nan
        if not note:
            point = auroc(truth[:, column], scores[:, column])
            if weights is not None:
                resampled = _weighted_auroc(truth[:, column], scores[:, column], weights)
                valid = resampled[np.isfinite(resampled)]
                if len(valid):
                    low, high = np.percentile(valid, [2.5, 97.5])
                if len(valid) < n_bootstrap:
                    note = f"CI from {len(valid)} of {n_bootstrap} resamples (others lacked a positive or a negative)"
        rows.append({"AUROC": point, "CI low": low, "CI high": high, "positives": positives,
                     "negatives": negatives, "note": note})
    return pd.DataFrame(rows, index=pd.Index(names, name="label"))


def compare_mean_auroc(
    y_true: np.ndarray,
    scores: dict[str, np.ndarray],
    groups: Sequence | np.ndarray | None = None,
    reference: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean AUROC over classes of several models scored on the same images, with bootstrap 95% CIs,
    and each model's paired difference from ``reference``.

    Every model is scored on the same resamples of patients (``groups``), so the difference's
    interval reflects how the two models disagree on the same cases, which is far narrower than
    comparing two separate intervals. A class without a positive or a negative case in a resample
    is left out of that resample's mean.

    Args:
        y_true: (N, C) 0/1 labels. scores: model name -> (N, C) scores.
        groups: (N,) patient id of each image, or None to resample images.
        reference: name of the model the others are compared with (e.g. the metadata baseline).

    Returns:
        DataFrame indexed by model with ``mean AUROC``, ``CI low``, ``CI high``, and with a
        reference, ``difference``, ``difference CI low``, ``difference CI high``.
    """
    if reference is not None and reference not in scores:
        raise ValueError(f"reference {reference!r} is not one of the models {list(scores)}.")
    truth = as_label_matrix(y_true)
    if groups is not None and len(groups) != len(truth):
        raise ValueError(f"{len(groups)} group ids for {len(truth)} images.")
    weights = _bootstrap_weights(len(truth), groups, n_bootstrap, np.random.default_rng(seed))
    computable = [c for c in range(truth.shape[1])
                  if not not_computable_reason(int(truth[:, c].sum()),
                                                int(len(truth) - truth[:, c].sum()))]  # fmt: skip
    point, resampled = {}, {}
    for name, score in scores.items():
        score = as_scores(score, truth.shape)
        point[name] = mean_class_auroc(truth, score)
        per_class = [_weighted_auroc(truth[:, c], score[:, c], weights) for c in computable]
        with warnings.catch_warnings():  # a resample without any computable class gives NaN, left out
            warnings.simplefilter("ignore", RuntimeWarning)
            resampled[name] = np.nanmean(per_class, axis=0) if per_class else np.full(n_bootstrap, np.nan)
    rows = {}
    for name in scores:
        low, high = _interval(resampled[name])
        row = {"mean AUROC": point[name], "CI low": low, "CI high": high}
        if reference is not None:
            low, high = _interval(resampled[name] - resampled[reference])
            row.update({"difference": point[name] - point[reference],
                        "difference CI low": low, "difference CI high": high})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, groups: Sequence | np.ndarray | None = None, n_bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """The mean of ``values`` with a bootstrap 95% interval, resampling ``groups`` (e.g. patients:
    a patient's values are drawn together) or, with None, the values themselves."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or not len(values):
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}.")
    if not np.isfinite(values).all():
        raise ValueError(f"values must be finite numbers; {int((~np.isfinite(values)).sum())} are not.")
    if groups is not None and len(groups) != len(values):
        raise ValueError(f"{len(groups)} groups for {len(values)} values.")
    weights = _bootstrap_weights(len(values), groups, n_bootstrap, np.random.default_rng(seed))
    return (float(values.mean()), *_interval(weights @ values / weights.sum(axis=1)))


def _interval(values: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the finite values (NaN, NaN if there is none)."""
    finite = values[np.isfinite(values)]
    return tuple(np.percentile(finite, [2.5, 97.5])) if len(finite) else (np.nan, np.nan)


def mean_class_auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean AUROC over the classes that have both a positive and a negative case (NaN if none has)."""
    truth = as_label_matrix(y_true)
    scores = as_scores(y_score, truth.shape)
    values = [auroc(truth[:, c], scores[:, c]) for c in range(truth.shape[1])]
    values = [value for value in values if np.isfinite(value)]
    return float(np.mean(values)) if values else float("nan")


def subgroup_mean_auroc(
    y_true: np.ndarray,
    y_score: np.ndarray,
    subgroups: pd.Series | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean AUROC with its bootstrap 95% CI within each subgroup (view, sex, age band, ...).

    Returns:
        DataFrame indexed by subgroup with ``images``, ``mean AUROC``, ``CI low``, ``CI high``.
    """
    subgroups = np.asarray(subgroups)
    groups = None if groups is None else np.asarray(groups)
    rows = {}
    for value in pd.unique(subgroups):
        inside = subgroups == value
        inside_groups = None if groups is None else groups[inside]
        table = compare_mean_auroc(np.asarray(y_true)[inside], {"model": np.asarray(y_score)[inside]},
                                   inside_groups, n_bootstrap=n_bootstrap, seed=seed)  # fmt: skip
        rows[value] = {"images": int(inside.sum()), **table.loc["model"].to_dict()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("subgroup").sort_index()


def mean_auroc(table: pd.DataFrame) -> float:
    """Mean AUROC over the computable classes of an ``auroc_table`` (NaN if there is none)."""
    if "AUROC" not in table:
        raise ValueError("Expected a table with an 'AUROC' column, as made by auroc_table.")
    values = table["AUROC"].to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


# --- curves --------------------------------------------------------------------------------------


class RocCurve(NamedTuple):
    """One class's ROC curve and the area under it."""

    false_positive_rate: np.ndarray
    true_positive_rate: np.ndarray
    auroc: float


class PrecisionRecallCurve(NamedTuple):
    """One class's precision-recall curve, its average precision and its prevalence in the set."""

    recall: np.ndarray
    precision: np.ndarray
    average_precision: float
    prevalence: float


def roc_curves(y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str]) -> dict[str, RocCurve | None]:
    """Each class's ROC curve and AUROC, by class name; None for a class without both a positive
    and a negative case.

    Args:
        y_true: (N, C) 0/1 labels. y_score: (N, C) scores. labels: the C class names.
    """
    def curve(truth: np.ndarray, score: np.ndarray) -> RocCurve | None:
        if not_computable_reason(int(truth.sum()), int(len(truth) - truth.sum())):
            return None
        false_positive_rate, true_positive_rate, _ = metrics.roc_curve(truth, score)
        return RocCurve(false_positive_rate, true_positive_rate, auroc(truth, score))

    return _by_class(y_true, y_score, labels, curve)


def precision_recall_curves(
    y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str]
) -> dict[str, PrecisionRecallCurve | None]:
    """Each class's precision-recall curve, average precision and prevalence, by class name; None
    for a class without a positive case.

    Precision depends on prevalence, so a class's chance level is its prevalence in this set
    (which, for a selected subset of the release, is not the clinical one).

    Args:
        y_true: (N, C) 0/1 labels. y_score: (N, C) scores. labels: the C class names.
    """
    def curve(truth: np.ndarray, score: np.ndarray) -> PrecisionRecallCurve | None:
        if not truth.any():
            return None
        precision, recall, _ = metrics.precision_recall_curve(truth, score)
        return PrecisionRecallCurve(recall, precision, metrics.average_precision_score(truth, score), truth.mean())

    return _by_class(y_true, y_score, labels, curve)


def _by_class(y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str], curve: Callable) -> dict:
    """``curve(truth, score)`` of each class's column, by class name."""
    truth, scores, names = prepare(y_true, y_score, labels)
    return {name: curve(truth[:, column], scores[:, column]) for column, name in enumerate(names)}


# --- expert labels -------------------------------------------------------------------------------


def expert_label_comparison(
    frame: pd.DataFrame, y_score: np.ndarray, labels: Sequence[str], data_dir: str | Path | None = None
) -> pd.DataFrame:
    """AUROC of the model against expert labels and against NIH's text-mined labels, same images.

    Only the images of ``frame`` with an expert label count. Pneumothorax is scored by the
    Pneumothorax probability; "Nodule or mass" by max(Nodule, Mass) against NIH's Nodule or Mass.

    Args:
        frame: split table with ``Image`` and the NIH label columns, one row per row of ``y_score``.
        y_score: (N, C) model probabilities. labels: the C class names of ``y_score``.
        data_dir: NIH data folder (None: ``config.data_dir()``).

    Returns:
        DataFrame indexed by expert finding with ``images``, ``expert positives``, ``NIH positives``,
        ``AUROC vs expert``, ``AUROC vs NIH`` (NaN when not computable) and ``note``.
    """
    scores = np.asarray(y_score, dtype=np.float64)
    names = list(labels)
    if scores.ndim != 2 or scores.shape != (len(frame), len(names)):
        raise ValueError(f"y_score must be (len(frame), len(labels)) = ({len(frame)}, {len(names)}), "
                         f"got {scores.shape}.")
    needed = sorted({name for model_labels, nih_labels in EXPERT_COMPARISONS.values()
                     for name in (*model_labels, *nih_labels)})
    missing_labels = [name for name in needed if name not in names]
    missing_columns = [name for name in ["Image", *needed] if name not in frame]
    if missing_labels or missing_columns:
        raise ValueError(f"The comparison needs scores for {needed} (missing {missing_labels}) and split "
                         f"columns Image + {needed} (missing {missing_columns}).")
    expert = data.read_expert_labels(data_dir)
    # Positions of the split's rows that have an expert label, in split order.
    expert_rows = expert.set_index("Image").reindex(frame["Image"].to_numpy())
    has_expert = expert_rows.notna().all(axis=1).to_numpy()
    rows = {}
    for finding, (model_labels, nih_labels) in EXPERT_COMPARISONS.items():
        score = scores[has_expert][:, [names.index(name) for name in model_labels]].max(axis=1)
        expert_truth = expert_rows[finding].to_numpy()[has_expert].astype(np.int8)
        nih_truth = (frame[list(nih_labels)].to_numpy()[has_expert] > 0).any(axis=1).astype(np.int8)
        notes = [f"{source}: {reason}" for source, truth in (("expert", expert_truth), ("NIH", nih_truth))
                 if (reason := not_computable_reason(int(truth.sum()), int(len(truth) - truth.sum())))]
        rows[finding] = {
            "images": int(has_expert.sum()),
            "expert positives": int(expert_truth.sum()),
            "NIH positives": int(nih_truth.sum()),
            "AUROC vs expert": auroc(expert_truth, score),
            "AUROC vs NIH": auroc(nih_truth, score),
            "note": "; ".join(notes),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("finding")
