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
