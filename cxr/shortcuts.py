"""Shortcut checks: can the image's origin or view be read off where the findings should be?

Resampling traces: the data's files come at 512, 320 and 256 px, and the size goes with the subset an
image was taken from. If preprocessing left a trace of the original size, a network could learn
"512 px, so probably No Finding" instead of reading the lungs. ``controlled_origin_auroc`` trains a
small classifier (a logistic regression on the image's radial power spectrum, where resampling leaves
its marks) to tell the two origins apart after preprocessing: an AUROC near 0.5 means it cannot.

View: ``view_auroc`` asks whether the model's scores separate AP from PA films.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr.evaluation import auroc
from cxr.images import resize

SPECTRUM_BINS = 64


def spectrum_features(images: np.ndarray, bins: int = SPECTRUM_BINS) -> np.ndarray:
    """(N, min(bins, S // 2)) log radial power spectra of (N, S, S) images, each standardised first.

    Resizing filters leave their marks at high spatial frequencies (blur, aliasing), which the
    radial average of the power spectrum shows whatever the image's content.
    """
    bins = min(bins, images.shape[1] // 2)  # no ring narrower than a pixel, so none is empty
    pixels = images.astype(np.float64)
    pixels = (pixels - pixels.mean(axis=(1, 2), keepdims=True)) / (pixels.std(axis=(1, 2), keepdims=True) + 1e-7)
    power = np.abs(np.fft.fftshift(np.fft.fft2(pixels), axes=(1, 2))) ** 2
    side = images.shape[1]
    rows, columns = np.indices((side, side))
    radius = np.hypot(rows - side / 2, columns - side / 2)
    ring = np.minimum((radius / (side / 2) * bins).astype(int), bins)  # the corners beyond side/2: ring `bins`, dropped
    counts = np.bincount(ring.ravel(), minlength=bins + 1)[:bins]
    spectra = np.stack([np.bincount(ring.ravel(), p.ravel(), minlength=bins + 1)[:bins] for p in power])
    return np.log(spectra / counts + 1e-12)


def origin_auroc(first: np.ndarray, second: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated AUROC of a logistic regression on ``spectrum_features`` telling ``first`` from ``second``.

    Near 0.5: the two groups of images cannot be told apart by their spectra.
    """
    features = spectrum_features(np.concatenate([first, second]))
    truth = np.r_[np.zeros(len(first)), np.ones(len(second))]
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(classifier, features, truth, cv=splitter, method="predict_proba")[:, 1]
    return auroc(truth, scores)


def view_auroc(scores: np.ndarray, is_ap: np.ndarray, patients: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """How well a model's (N, C) scores tell AP from PA images: cross-validated AUROC of a logistic
    regression on them. A portable AP film goes with sicker patients, so a model may have learnt the
    view instead of the disease; 0.5 would mean its scores carry no trace of the view.

    The folds keep each patient's images together (``patients``: one id per image): a patient's films
    often share their view, so a film of the same patient in the training folds would give it away.
    """
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    truth = np.asarray(is_ap, dtype=int)
    predicted = cross_val_predict(classifier, np.asarray(scores), truth, groups=np.asarray(patients), cv=splitter,
                                  method="predict_proba")[:, 1]  # fmt: skip
    return auroc(truth, predicted)


def controlled_origin_auroc(
    originals: list[np.ndarray], preprocess: Callable[[np.ndarray], np.ndarray], smaller_side: int, seed: int = 0
) -> float:
    """``origin_auroc`` on the same kind of images arriving at two sizes, content held equal.

    Half of ``originals`` (large files, e.g. 512 px) go through ``preprocess`` as they are; the other
    half are first downscaled to ``smaller_side``, as the smaller files of the data were. Whatever the
    classifier finds can only be a trace of the size the image arrived at.
    """
    order = np.random.default_rng(seed).permutation(len(originals))
    half = len(order) // 2
    as_large = np.stack([preprocess(originals[i]) for i in order[:half]])
    as_small = np.stack([preprocess(resize(originals[i], smaller_side)) for i in order[half:]])
    return origin_auroc(as_large, as_small, seed=seed)
