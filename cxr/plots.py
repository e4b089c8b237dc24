"""Figures for the notebook. Each helper returns a matplotlib Figure and neither shows nor prints."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def plot_class_frequencies(
    label_names: tuple[str, ...], positive: np.ndarray, negative: np.ndarray, title: str
) -> plt.Figure:
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
) -> plt.Figure:
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


def plot_reliability(
    truth: np.ndarray, curves: dict[str, np.ndarray], label_names: list[str], bins: int = 10, columns: int = 5
) -> plt.Figure:
    """Reliability diagrams, one panel per finding: observed frequency against mean predicted
    probability in equal-width bins, for each (N, C) array of ``curves`` (e.g. before and after
    calibration). Points on the diagonal are calibrated."""
    from cxr.calibration import reliability

    rows = int(np.ceil(len(label_names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.8 * columns, 2.8 * rows), squeeze=False)
    for axis in axes.ravel()[len(label_names):]:
        axis.axis("off")
    for column, (axis, name) in enumerate(zip(axes.ravel(), label_names)):
        axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        for curve_name, probabilities in curves.items():
            predicted, observed, _ = reliability(truth[:, column], probabilities[:, column], bins)
            axis.plot(predicted, observed, marker="o", markersize=3, linewidth=1.2, label=curve_name)
        axis.set(xlim=(0, 1), ylim=(0, 1), title=name)
        axis.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    figure.supxlabel("mean predicted probability")
    figure.supylabel("observed frequency")
    figure.tight_layout()
    return figure
