"""Evaluating a multi-label classifier's probabilities: AUROC with bootstrap intervals, ROC and
precision-recall curves, operating thresholds, confusion counts and the expert-label check.
The figures of these numbers are drawn by ``cxr.plots``; the probabilities come from ``cxr.inference``.

Conventions: ``y_true`` is an (N, C) 0/1 array, ``y_score`` an (N, C) array of probabilities,
``labels`` the C finding names in column order. A case is called positive when its score is
``>=`` the class threshold. A class with no positive or no negative case has no AUROC: it is
reported as NaN with a note, never as 0.5.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn import metrics

from cxr import data

# Expert finding -> (model labels whose maximum is the score, NIH labels whose "or" is the NIH label).
EXPERT_COMPARISONS = {
    "Pneumothorax": (("Pneumothorax",), ("Pneumothorax",)),
    "Nodule or mass": (("Nodule", "Mass"), ("Nodule", "Mass")),
}
THRESHOLD_RULES = ("youden", "f1")
NOT_COMPUTABLE_THRESHOLD = 0.5


# --- input checks --------------------------------------------------------------------------------


def _as_label_matrix(y_true: np.ndarray, name: str = "y_true") -> np.ndarray:
    """(N,) or (N, C) 0/1 values -> (N, C) int8; ValueError for anything else."""
    array = np.asarray(y_true)
    if array.ndim == 1:
        array = array[:, np.newaxis]
    if array.ndim != 2:
        raise ValueError(f"{name} must be an (N, C) array of 0/1 labels, got shape {array.shape}.")
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1 (uncertain or missing labels are not supported).")
    return array.astype(np.int8)


def _as_scores(y_score: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N,) or (N, C) finite scores matching the labels' shape -> (N, C) float64."""
    array = np.asarray(y_score, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, np.newaxis]
    if array.shape != shape:
        raise ValueError(f"y_score has shape {array.shape} but y_true has shape {shape}.")
    if not np.isfinite(array).all():
        raise ValueError("y_score contains NaN or infinite values.")
    return array


def _check_labels(labels: Sequence[str], num_classes: int) -> list[str]:
    labels = list(labels)
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} label names for {num_classes} columns.")
    return labels


def _prepare(
    y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    truth = _as_label_matrix(y_true)
    scores = _as_scores(y_score, truth.shape)
    names = _check_labels(labels, truth.shape[1]) if labels is not None else [str(i) for i in range(truth.shape[1])]
    return truth, scores, names


def _not_computable_reason(positives: int, negatives: int) -> str:
    """'' if a class has both kinds of case, else why its AUROC cannot be computed."""
    if positives and negatives:
        return ""
    if not positives and not negatives:
        return "not computable: no case"
    return "not computable: no positive case" if not positives else "not computable: no negative case"


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, NaN where the denominator is 0 (and no warning)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    result = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    return np.divide(numerator, denominator, out=result, where=denominator != 0)


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
    return _safe_ratio(concordant, pairs)


def auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve of one class from ranks (Mann-Whitney U / (n_pos n_neg)).

    Args:
        y_true: (N,) 0/1 labels. y_score: (N,) scores.

    Returns:
        The AUROC (ties count one half), or NaN if there is no positive or no negative case.
    """
    truth = _as_label_matrix(np.ravel(y_true))[:, 0]
    score = _as_scores(np.ravel(y_score), (len(truth), 1))[:, 0]
    if _not_computable_reason(int(truth.sum()), int(len(truth) - truth.sum())):
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
    truth, scores, names = _prepare(y_true, y_score, labels)
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
        note = _not_computable_reason(positives, negatives)
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
    truth = _as_label_matrix(y_true)
    if groups is not None and len(groups) != len(truth):
        raise ValueError(f"{len(groups)} group ids for {len(truth)} images.")
    weights = _bootstrap_weights(len(truth), groups, n_bootstrap, np.random.default_rng(seed))
    computable = [c for c in range(truth.shape[1])
                  if not _not_computable_reason(int(truth[:, c].sum()),
                                                int(len(truth) - truth[:, c].sum()))]  # fmt: skip
    point, resampled = {}, {}
    for name, score in scores.items():
        score = _as_scores(score, truth.shape)
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


def _interval(values: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the finite values (NaN, NaN if there is none)."""
    finite = values[np.isfinite(values)]
    return tuple(np.percentile(finite, [2.5, 97.5])) if len(finite) else (np.nan, np.nan)


def mean_class_auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean AUROC over the classes that have both a positive and a negative case (NaN if none has)."""
    truth = _as_label_matrix(y_true)
    scores = _as_scores(y_score, truth.shape)
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
    truth, scores, names = _prepare(y_true, y_score, labels)
    curves = {}
    for column, name in enumerate(names):
        positives = int(truth[:, column].sum())
        if _not_computable_reason(positives, len(truth) - positives):
            curves[name] = None
            continue
        false_positive_rate, true_positive_rate, _ = metrics.roc_curve(truth[:, column], scores[:, column])
        curves[name] = RocCurve(false_positive_rate, true_positive_rate, auroc(truth[:, column], scores[:, column]))
    return curves


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
    truth, scores, names = _prepare(y_true, y_score, labels)
    curves = {}
    for column, name in enumerate(names):
        positives = int(truth[:, column].sum())
        if not positives:
            curves[name] = None
            continue
        precision, recall, _ = metrics.precision_recall_curve(truth[:, column], scores[:, column])
        average_precision = metrics.average_precision_score(truth[:, column], scores[:, column])
        curves[name] = PrecisionRecallCurve(recall, precision, average_precision, positives / len(truth))
    return curves


# --- thresholds ----------------------------------------------------------------------------------


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
    truth, scores, names = _prepare(y_true, y_score, labels)
    thresholds = np.full(truth.shape[1], NOT_COMPUTABLE_THRESHOLD)
    skipped = []
    for column in range(truth.shape[1]):
        positives = int(truth[:, column].sum())
        if _not_computable_reason(positives, len(truth) - positives):
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
            objective = _safe_ratio(2 * precision[:-1] * recall[:-1], precision[:-1] + recall[:-1])
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
    truth, scores, names = _prepare(y_true, y_score, labels)
    cutoffs = _as_thresholds(thresholds, truth.shape[1])
    counts = _confusion_counts(truth, scores, cutoffs)
    tp, fp, tn, fn = (counts[key] for key in ("TP", "FP", "TN", "FN"))
    table = pd.DataFrame(
        {
            "threshold": cutoffs,
            "prevalence": _safe_ratio(tp + fn, np.full(len(names), len(truth))),
            **counts,
            "sensitivity": _safe_ratio(tp, tp + fn),
            "specificity": _safe_ratio(tn, tn + fp),
            "PPV": _safe_ratio(tp, tp + fp),
            "NPV": _safe_ratio(tn, tn + fn),
            "F1": _safe_ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": _safe_ratio(tp + tn, tp + fp + tn + fn),
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
    truth, scores, names = _prepare(y_true, y_score, labels)
    predicted = (scores >= _as_thresholds(thresholds, truth.shape[1])[np.newaxis, :]).astype(np.int8)
    return metrics.classification_report(truth, predicted, target_names=names, zero_division=0)


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
                 if (reason := _not_computable_reason(int(truth.sum()), int(len(truth) - truth.sum())))]
        rows[finding] = {
            "images": int(has_expert.sum()),
            "expert positives": int(expert_truth.sum()),
            "NIH positives": int(nih_truth.sum()),
            "AUROC vs expert": auroc(expert_truth, score),
            "AUROC vs NIH": auroc(nih_truth, score),
            "note": "; ".join(notes),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("finding")
