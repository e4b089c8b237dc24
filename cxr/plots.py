"""Every figure of the project. Each function takes numbers computed elsewhere (``cxr.evaluation``,
``cxr.calibration``, ``cxr.gradcam``), returns a matplotlib ``Figure`` and neither shows nor prints."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

if TYPE_CHECKING:  # for the annotations only: importing them would load TensorFlow
    from cxr.evaluation import PrecisionRecallCurve, RocCurve
    from cxr.gradcam import Explanation

OVERLAY_ALPHA = 0.4
CONFUSION_COLUMNS = ("threshold", "TP", "FP", "TN", "FN")


# --- data ----------------------------------------------------------------------------------------


def plot_class_frequencies(
    label_names: tuple[str, ...], positive: np.ndarray, negative: np.ndarray, title: str
) -> Figure:
    """Side-by-side bars of the positive and negative value per class."""
    table = pd.DataFrame(
        {
            "Class": list(label_names) * 2,
            "Label": ["Positive"] * len(label_names) + ["Negative"] * len(label_names),
            "Value": np.concatenate([positive, negative]),
        }
    )
    figure, axes = plt.subplots(figsize=(10, 4))
    sns.barplot(data=table, x="Class", y="Value", hue="Label", ax=axes)
    axes.set_title(title)
    axes.tick_params(axis="x", rotation=60)
    figure.tight_layout()
    return figure


def plot_image_grid(
    images: np.ndarray, labels: np.ndarray, label_names: tuple[str, ...], columns: int = 4
) -> Figure:
    """A grid of (N, H, W) or (N, H, W, C) images titled with their positive findings."""
    rows = int(np.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, image, row in zip(axes.ravel(), images, labels):
        axis.imshow(image[..., 0] if image.ndim == 3 else image, cmap="gray")
        findings = [name for name, value in zip(label_names, row) if value > 0.5]
        axis.set_title("\n".join(findings) or "No Finding", fontsize=9)
    figure.tight_layout()
    return figure


# --- evaluation ----------------------------------------------------------------------------------


def _class_colours(num_classes: int) -> list:
    palette = plt.get_cmap("tab20" if num_classes > 10 else "tab10")
    return [palette(i % palette.N) for i in range(num_classes)]


def _draw_class_curves(axes, curves: Mapping[str, tuple | None], missing: str, points: Callable) -> None:
    """One line per class in its colour, ``points(curve)`` giving (x, y, legend note); a class without
    a curve gets a legend entry alone, noting ``missing``."""
    for (name, curve), colour in zip(curves.items(), _class_colours(len(curves))):
        if curve is None:
            axes.plot([], [], color=colour, label=f"{name} ({missing})")
            continue
        x, y, note = points(curve)
        axes.plot(x, y, color=colour, linewidth=1.5, label=f"{name} ({note})")
    axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)


def plot_roc_curves(curves: Mapping[str, RocCurve | None]) -> Figure:
    """ROC curves of all classes in one axes, the legend giving each AUROC.

    Args:
        curves: ``evaluation.roc_curves``: class name -> its curve, or None where not computable.
    """
    figure, axes = plt.subplots(figsize=(8, 6.5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="Chance (AUROC 0.50)")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
             ylabel="True positive rate (sensitivity)", title="ROC curves")
    _draw_class_curves(axes, curves, "not computable",
                       lambda curve: (curve.false_positive_rate, curve.true_positive_rate, f"AUROC {curve.auroc:.2f}"))
    figure.tight_layout()
    return figure


def plot_precision_recall_curves(curves: Mapping[str, PrecisionRecallCurve | None]) -> Figure:
    """Precision-recall curves of all classes, the legend giving average precision and prevalence
    (a class's chance level).

    Args:
        curves: ``evaluation.precision_recall_curves``: class name -> its curve, or None where the
            class has no positive case.
    """
    figure, axes = plt.subplots(figsize=(8, 6.5))
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision (PPV)",
             title="Precision-recall curves\n(chance level = each class's prevalence in this set)")
    _draw_class_curves(axes, curves, "no positive case", lambda curve: (
        curve.recall, curve.precision, f"AP {curve.average_precision:.2f}, prevalence {curve.prevalence:.2f}"))
    figure.tight_layout()
    return figure


def plot_confusion_matrices(table: pd.DataFrame, columns: int = 5) -> Figure:
    """A grid of 2x2 confusion matrices (rows: actual, columns: predicted), one per class, with counts.

    Args:
        table: ``thresholds.threshold_metrics``: one row per class (the index) with ``threshold``,
            ``TP``, ``FP``, ``TN`` and ``FN``.
        columns: matrices per row of the grid.
    """
    missing = [column for column in CONFUSION_COLUMNS if column not in table]
    if missing:
        raise ValueError(f"Expected a threshold_metrics table; missing column(s) {missing}.")
    names = [str(name) for name in table.index]
    cutoffs = table["threshold"].to_numpy()
    tn, fp, fn, tp = (table[key].to_numpy() for key in ("TN", "FP", "FN", "TP"))
    columns = max(1, min(columns, len(names)))
    rows = int(np.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.7 * rows), squeeze=False)
    for axis in axes.ravel()[len(names):]:
        axis.axis("off")
    for column, (axis, name) in enumerate(zip(axes.ravel(), names)):
        matrix = np.array([[tn[column], fp[column]], [fn[column], tp[column]]])
        axis.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (row, col), value in np.ndenumerate(matrix):
            # Dark cells get white text.
            colour = "white" if value > 0.6 * matrix.max() else "black"
            axis.text(col, row, str(value), ha="center", va="center", color=colour, fontsize=11)
        axis.set_xticks([0, 1], ["neg", "pos"])
        axis.set_yticks([0, 1], ["neg", "pos"])
        axis.set_xlabel("Predicted", fontsize=8)
        axis.set_ylabel("Actual", fontsize=8)
        axis.set_title(f"{name}\n(threshold {cutoffs[column]:.2f})", fontsize=9)
    figure.tight_layout()
    return figure


def plot_reliability(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], label_names: Sequence[str], columns: int = 5
) -> Figure:
    """Reliability diagrams, one panel per finding: observed frequency against mean predicted
    probability per bin, for each curve (e.g. before and after calibration). Points on the
    diagonal are calibrated.

    Args:
        curves: ``calibration.reliability_curves``: curve name -> (C, bins) mean predicted
            probabilities and (C, bins) observed frequencies, NaN where a bin is empty.
        label_names: the C finding names.
    """
    rows = int(np.ceil(len(label_names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.8 * columns, 2.8 * rows), squeeze=False)
    for axis in axes.ravel()[len(label_names):]:
        axis.axis("off")
    for column, (axis, name) in enumerate(zip(axes.ravel(), label_names)):
        axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        for curve_name, (predicted, observed) in curves.items():
            axis.plot(predicted[column], observed[column], marker="o", markersize=3, linewidth=1.2, label=curve_name)
        axis.set(xlim=(0, 1), ylim=(0, 1), title=name)
        axis.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    figure.supxlabel("mean predicted probability")
    figure.supylabel("observed frequency")
    figure.tight_layout()
    return figure


# --- GradCAM -------------------------------------------------------------------------------------


def plot_gradcam(image: np.ndarray, explanations: Sequence[Explanation]) -> Figure:
    """The image, then one panel per explained finding: its GradCAM (jet, over the grayscale image),
    titled "Finding: p=0.xx", with the finding's boxes drawn in lime.

    Args:
        image: (H, W) grayscale image, the one explained.
        explanations: ``gradcam.explain_findings``, one per panel.
    """
    panels = len(explanations) + 1
    figure, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.6), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("Original")
    for axis, explanation in zip(axes[1:], explanations):
        axis.imshow(image, cmap="gray")
        axis.imshow(explanation.heatmap, cmap="jet", alpha=OVERLAY_ALPHA, vmin=0, vmax=1)
        title = f"{explanation.finding}: p={explanation.probability:.2f}"
        axis.set_title(title + ("\n(gradient vanished)" if explanation.vanished else ""))
        for x, y, w, h in explanation.boxes:
            # imshow puts pixel centres on integers, so pixel edges sit half a pixel before.
            axis.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="lime", linewidth=1.5))
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    return figure
