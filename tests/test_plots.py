"""Figures: each takes computed numbers, returns a Figure, and draws what it is given (legends, panels)."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr import calibration, evaluation, plots, thresholds

LABELS3 = ("A", "B", "C")


def random_case(seed: int, images: int = 60, classes: int = 3):
    """Labels with every class present and scores that tend to rank the positives first."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random((images, classes)) < 0.3).astype(np.int8)
    y_true[0], y_true[1] = 1, 0
    return y_true, np.round(rng.random((images, classes)) * 0.5 + 0.4 * y_true, 2)


def legend_texts(figure: plt.Figure) -> list[str]:
    """The legend entries of the figure's first axes; the figure is closed."""
    try:
        return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    finally:
        plt.close(figure)


@pytest.mark.parametrize(
    "plot",
    [
        lambda t, s: plots.plot_roc_curves(evaluation.roc_curves(t, s, LABELS3)),
        lambda t, s: plots.plot_precision_recall_curves(evaluation.precision_recall_curves(t, s, LABELS3)),
        lambda t, s: plots.plot_confusion_matrices(thresholds.threshold_metrics(t, s, [0.5, 0.5, 0.5], LABELS3)),
    ],
    ids=["roc", "precision-recall", "confusion"],
)
def test_figures_are_returned_even_with_a_class_lacking_positives(plot):
    y_true, y_score = random_case(0)
    y_true[:, 1] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. numpy's division by zero
        figure = plot(y_true, y_score)
    try:
        assert isinstance(figure, plt.Figure)
    finally:
        plt.close(figure)


def test_roc_legend_gives_each_auroc_and_says_which_is_not_computable():
    y_true, y_score = random_case(0)
    y_true[:, 1] = 0
    texts = legend_texts(plots.plot_roc_curves(evaluation.roc_curves(y_true, y_score, LABELS3)))
    assert f"A (AUROC {roc_auc_score(y_true[:, 0], y_score[:, 0]):.2f})" in texts
    assert "B (not computable)" in texts


def test_precision_recall_figure_mentions_prevalence():
    y_true, y_score = random_case(0)
    curves = evaluation.precision_recall_curves(y_true, y_score, LABELS3)
    texts = legend_texts(plots.plot_precision_recall_curves(curves))
    assert len(texts) == 3 and all("AP " in text and "prevalence" in text for text in texts)


def test_confusion_grid_has_one_matrix_per_class_with_its_counts():
    y_true, y_score = random_case(0, classes=7)
    table = thresholds.threshold_metrics(y_true, y_score, 0.5, tuple("ABCDEFG"))
    figure = plots.plot_confusion_matrices(table, columns=4)
    try:
        assert sum(axis.get_visible() and axis.axison for axis in figure.axes) == 7
        counts = {text.get_text() for text in figure.axes[0].texts}
        assert counts == {str(table.loc["A", key]) for key in ("TN", "FP", "FN", "TP")}
    finally:
        plt.close(figure)


def test_confusion_grid_names_the_table_it_needs():
    with pytest.raises(ValueError, match="threshold_metrics"):
        plots.plot_confusion_matrices(evaluation.auroc_table(*random_case(0), LABELS3, n_bootstrap=0))


def test_reliability_has_a_panel_per_finding_and_a_line_per_curve():
    y_true, y_score = random_case(0)
    curves = calibration.reliability_curves(y_true, {"raw": y_score, "squared": y_score**2})
    assert curves["raw"][0].shape == (3, calibration.ECE_BINS)
    figure = plots.plot_reliability(curves, LABELS3, columns=2)
    try:
        panels = [axis for axis in figure.axes if axis.axison]
        assert [axis.get_title() for axis in panels] == list(LABELS3)
        assert len(panels[0].lines) == 3  # the diagonal and the two curves
    finally:
        plt.close(figure)
