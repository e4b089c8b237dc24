"""Baselines the model must beat: logistic regressions that read the label file's metadata, or a
32x32 thumbnail, instead of the radiograph.

A model that scores no better than the metadata baseline has learnt who was X-rayed how (a portable
AP film is taken of a patient too ill to stand), not what the image shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr import config, data, images
from cxr.evaluation import mean_class_auroc

METADATA_FEATURES = ("AP view", "log follow-up", "age", "male")
THUMBNAIL_SIZE = 32
# Inverse regularisation strengths tried on the validation split for the thumbnail's 1,024 features.
# On this data 0.001 won among 0.001, 0.01, 0.1 and 1 (validation mean AUROC 0.654, 0.635, 0.610,
# 0.591); weaker regularisation also takes minutes to fit, so the grid stays around the winner.
REGULARISATION_GRID = (0.0003, 0.001, 0.003)


def metadata_features(frame: pd.DataFrame, data_dir: str | Path | None = None) -> pd.DataFrame:
    """The four label-file columns of each image of a split table, as numbers.

    ``AP view`` (1 for AP, 0 for PA), ``log follow-up`` (log(1 + Follow-up #)), ``age`` (years) and
    ``male`` (1 for M).

    Raises:
        ValueError: naming the images the label file does not list, a column it lacks, or the line of
            a follow-up number that is not a whole number or an age that is not a finite number.
    """
    label_file = config.data_dir(data_dir) / config.LABEL_FILE
    remedy = "The metadata baseline needs the official Data_Entry_2017_v2020.csv."
    table = data.read_label_file(label_file, ("Follow-up #", "Patient Age", "Patient Gender"))
    table = table.assign(line=table.index).set_index("Image Index")
    missing = sorted(set(frame["Image"]) - set(table.index))
    if missing:
        raise ValueError(f"{label_file} does not list {len(missing)} image(s) of the split, e.g. {missing[:3]}.")
    rows = table.loc[frame["Image"]].reset_index()
    # A follow-up number counts the patient's earlier visits; an age can be any finite number of years.
    kinds = {"Follow-up #": data.WHOLE_NUMBER, "Patient Age": data.NUMBER}
    numbers = {column: data.checked_numbers(rows, column, label_file, rows["line"], "Image Index", kind, remedy)
               for column, kind in kinds.items()}
    return pd.DataFrame(
        {
            "AP view": (rows["View Position"] == "AP").astype(float).to_numpy(),
            "log follow-up": np.log1p(numbers["Follow-up #"]).to_numpy(),
            "age": numbers["Patient Age"].to_numpy(),
            "male": (rows["Patient Gender"] == "M").astype(float).to_numpy(),
        },
        index=frame.index,
    )


def thumbnail_features(pixels: np.ndarray) -> np.ndarray:
    """(N, 1024) features from (N, H, W) uint8 images (``load_images`` at 32 px gives them by way of the
    canonical size, as the model's input): each image at 32x32, standardised image by image."""
    small = np.stack([images.resize(image, THUMBNAIL_SIZE) for image in pixels]).astype(np.float64)
    small = small.reshape(len(small), -1)
    return (small - small.mean(axis=1, keepdims=True)) / (small.std(axis=1, keepdims=True) + 1e-7)


def logistic_regression(regularisation: float = 1.0, seed: int = config.SEED):
    """One class-balanced logistic regression per finding on standardised features."""
    classifier = LogisticRegression(C=regularisation, class_weight="balanced", max_iter=2000, random_state=seed)
    return make_pipeline(StandardScaler(), OneVsRestClassifier(classifier))


def fit_baseline(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    valid_features: np.ndarray,
    valid_labels: np.ndarray,
    grid: tuple[float, ...] = (1.0,),
):
    """Fit on the training split, choosing the regularisation with the best validation mean AUROC.

    Returns:
        the fitted classifier (``predict_proba`` gives (N, C) scores) and the chosen strength.
    """
    best = None
    for strength in grid:
        fitted = logistic_regression(strength).fit(train_features, train_labels)
        mean = mean_class_auroc(valid_labels, fitted.predict_proba(valid_features))
        if best is None or mean > best[0]:
            best = (mean, fitted, strength)
    return best[1], best[2]


def baseline_scores(
    splits: dict[str, pd.DataFrame],
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = config.SPLIT_DIR / "cache",
    labels: tuple[str, ...] = config.LABELS,
) -> dict[str, dict[str, np.ndarray]]:
    """Scores of both baselines on the validation and test splits, fitted on the training split.

    Args:
        splits: ``{"train": frame, "valid": frame, "test": frame}`` (the split CSVs).

    Returns:
        ``{"valid": {"metadata": (N, C), "thumbnail": (N, C)}, "test": {...}}``.
    """
    root = config.data_dir(data_dir)
    truth = {name: data.label_matrix(frame, labels) for name, frame in splits.items()}
    features = {
        "metadata": {name: metadata_features(frame, root).to_numpy() for name, frame in splits.items()},
        "thumbnail": {
            name: thumbnail_features(images.load_images(frame, root, THUMBNAIL_SIZE, name, cache_dir)[0])
            for name, frame in splits.items()
        },
    }
    scores = {"valid": {}, "test": {}}
    for baseline, columns in features.items():
        grid = REGULARISATION_GRID if baseline == "thumbnail" else (1.0,)
        fitted, _ = fit_baseline(columns["train"], truth["train"], columns["valid"], truth["valid"], grid)
        for split in scores:
            scores[split][baseline] = fitted.predict_proba(columns[split])
    return scores
