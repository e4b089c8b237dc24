"""GradCAM heatmaps (Selvaraju et al., ICCV 2017) and how well they point at the NIH bounding boxes.

Coordinates: a box is ``(x, y, w, h)`` with ``x`` along columns and ``y`` along rows; pixel
``(row, col)`` belongs to a box when its centre ``(col + 0.5, row + 0.5)`` lies inside it.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from cxr.calibration import calibrate
from cxr.data import BOX_SOURCE_SIZE
from cxr.evaluation import bootstrap_mean
from cxr.inference import Standardisation, check_images, predict, standardise
from cxr.model import LAST_CONV_LAYER

Box = tuple[float, float, float, float]

# Where GradCAM may look in DenseNet121, coarse to fine: the last convolutional activation (input/32,
# 7x7 at 224 px), then the activations entering the last two transition layers (input/16 and input/8).
# Selvaraju et al. take the last layer as the best compromise between class-specific evidence and
# spatial detail; at 224 px its grid is coarse, so ``choose_layer`` compares the three on the validation
# boxes and the model's JSON records the winner.
CANDIDATE_LAYERS = (LAST_CONV_LAYER, "pool4_relu", "pool3_relu")


class NoBoxes(ValueError):
    """None of the images has a box of a finding the model predicts."""

# model -> {layer names: tf.function giving (feature maps, gradients)}; entries go with their model.
_GRADIENT_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# --- heatmaps ------------------------------------------------------------------------------------


def _gradient_function(model: keras.Model, layer_names: tuple[str, ...]):
    """The cached tf.function mapping (1, H, W, 3) images and a class index to (maps, gradients): a list of
    each, one per layer, from one forward and one backward pass."""
    per_layers = _GRADIENT_FUNCTIONS.setdefault(model, {})
    if layer_names in per_layers:
        return per_layers[layer_names]
    outputs = []
    for layer_name in layer_names:
        try:
            outputs.append(model.get_layer(layer_name).output)
        except ValueError as error:
            raise ValueError(f"The model has no layer {layer_name!r} to take GradCAM from.") from error
    gradient_model = keras.Model(model.inputs, [outputs, model.output])

    # No Python control flow inside: AutoGraph has nothing to convert, and converting this closure
    # for a second model prints a "closure mismatch" warning.
    @tf.function(reduce_retracing=True)
    @tf.autograph.experimental.do_not_convert
    def maps_and_gradients(batch: tf.Tensor, class_index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            feature_maps, predictions = gradient_model(batch, training=False)
            score = tf.gather(predictions, class_index, axis=1)
        gradients = tape.gradient(score, feature_maps, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return feature_maps, gradients

    per_layers[layer_names] = maps_and_gradients
    return maps_and_gradients


def gradcam_heatmap(
    model: keras.Model, image: np.ndarray, class_index: int, layer_name: str = LAST_CONV_LAYER
) -> tuple[np.ndarray, bool]:
    """GradCAM of one class for one image, scaled to [0, 1] at the image's size.

    The gradients of the class probability with respect to the layer's feature maps, averaged
    over positions, weight the maps; their sum, kept where positive, is the heatmap.

    Args:
        model: a Keras model with a layer ``layer_name`` and (B, C) outputs.
        image: (H, W, 3) float32 model-ready (standardised) image.
        class_index: which output to explain.
        layer_name: the convolutional layer to look at (DenseNet121: ``"relu"``).

    Returns:
        heatmap: (H, W) float32 in [0, 1]; vanished: True (and an all-zero heatmap) when the
        gradients are all zero or no position has positive evidence.
    """
    return gradcam_heatmaps(model, image, class_index, (layer_name,))[layer_name]


def gradcam_heatmaps(
    model: keras.Model, image: np.ndarray, class_index: int, layer_names: Sequence[str]
) -> dict[str, tuple[np.ndarray, bool]]:
    """``gradcam_heatmap`` at several layers from one forward and one backward pass: {layer: (heatmap, vanished)}."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be one (H, W, 3) model-ready array, got shape {image.shape}.")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values.")
    num_classes = model.output_shape[-1]
    if not 0 <= int(class_index) < num_classes:
        raise ValueError(f"class_index {class_index} is outside the model's {num_classes} outputs.")
    layer_names = tuple(layer_names)
    all_maps, all_gradients = _gradient_function(model, layer_names)(
        tf.constant(image[np.newaxis]), tf.constant(int(class_index), dtype=tf.int32)
    )
    return {
        name: _heatmap(name, maps.numpy()[0], gradients.numpy()[0], image.shape[:2])
        for name, maps, gradients in zip(layer_names, all_maps, all_gradients)
    }


def _heatmap(
    layer_name: str, feature_maps: np.ndarray, gradients: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, bool]:
    """One layer's GradCAM from its (h, w, channels) maps and their gradients, at ``size``."""
    feature_maps, gradients = feature_maps.astype(np.float64), gradients.astype(np.float64)
    height, width = size
    vanished = np.zeros((height, width), np.float32), True
    if feature_maps.ndim != 3:
        raise ValueError(f"Layer {layer_name!r} gives {feature_maps.shape} outputs, not (h, w, channels) maps.")
    if not np.isfinite(gradients).all() or not gradients.any():
        return vanished
    # One weight per channel: the gradient averaged over the layer's positions.
    channel_weights = gradients.mean(axis=(0, 1))
    cam = np.maximum(feature_maps @ channel_weights, 0.0)
    peak = cam.max()
    # Float64 and a floor at float32's smallest normal value: no overflow or 0/0 when normalising.
    if not np.isfinite(peak) or peak <= np.finfo(np.float32).tiny:
        return vanished
    cam = (cam / peak).astype(np.float32)
    resized = tf.image.resize(cam[..., np.newaxis], (height, width), method="bilinear").numpy()[..., 0]
    return np.clip(resized, 0.0, 1.0), False


# --- bounding boxes ------------------------------------------------------------------------------


def scale_box(box: Sequence[float] | pd.Series, from_size: float, to_size: float) -> Box:
    """A box ``(x, y, w, h)`` (or a row with those columns) rescaled from a square image to another.

    Returns:
        (x, y, w, h) as floats in the ``to_size`` image's pixels.
    """
    if isinstance(box, pd.Series):
        box = box[["x", "y", "w", "h"]].to_numpy()
    values = np.asarray(box, dtype=np.float64)
    if values.shape != (4,):
        raise ValueError(f"A box is (x, y, w, h), got {box!r}.")
    if from_size <= 0 or to_size <= 0:
        raise ValueError(f"Image sizes must be positive, got from_size={from_size}, to_size={to_size}.")
    return tuple(float(value) for value in values * (to_size / from_size))


def _box_mask(shape: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """(H, W) bool mask of the pixels whose centres lie inside the box."""
    x, y, w, h = np.asarray(box, dtype=np.float64)
    if w < 0 or h < 0:
        raise ValueError(f"Box width and height must be non-negative, got {box!r}.")
    rows = np.arange(shape[0]) + 0.5
    cols = np.arange(shape[1]) + 0.5
    return ((rows >= y) & (rows <= y + h))[:, np.newaxis] & ((cols >= x) & (cols <= x + w))[np.newaxis, :]


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2 or not heatmap.size:
        raise ValueError(f"heatmap must be a non-empty (H, W) array, got shape {heatmap.shape}.")
    if not np.isfinite(heatmap).all():
        raise ValueError("heatmap contains NaN or infinite values.")
    return heatmap


def pointing_game_hit(heatmap: np.ndarray, box: Sequence[float]) -> bool:
    """Whether the heatmap's maximum lies inside the box (Zhang et al., the pointing game).

    Args:
        heatmap: (H, W) map. box: (x, y, w, h) in the heatmap's pixels.

    Returns:
        True for a hit; False for a miss and for a constant (e.g. vanished) map, which points nowhere.
        Ties go to the first maximum in row-major order.
    """
    heatmap = _check_heatmap(heatmap)
    if heatmap.max() == heatmap.min():
        return False
    row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    return bool(_box_mask(heatmap.shape, box)[row, col])


def box_iou(heatmap: np.ndarray, box: Sequence[float], threshold: float = 0.5) -> float:
    """Intersection over union of the region ``heatmap >= threshold`` and the box.

    Args:
        heatmap: (H, W) map in [0, 1]. box: (x, y, w, h) in the heatmap's pixels.
        threshold: level above which the heatmap counts as pointing there.

    Returns:
        IoU in [0, 1]; NaN if both the region and the box cover no pixel.
    """
    heatmap = _check_heatmap(heatmap)
    region = heatmap >= threshold
    inside = _box_mask(heatmap.shape, box)
    union = int((region | inside).sum())
    return float((region & inside).sum() / union) if union else float("nan")


# --- localisation over a split -------------------------------------------------------------------


def _check_images(images: np.ndarray, model: keras.Model) -> np.ndarray:
    images = check_images(images, model)
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"Boxes are scaled for square images, got {images.shape[1:]}.")
    return images


def localisation_scores(
    model: keras.Model,
    frame: pd.DataFrame,
    images: np.ndarray,
    statistics: Standardisation,
    labels: Sequence[str],
    boxes: pd.DataFrame,
    layer_name: str = LAST_CONV_LAYER,
    threshold: float = 0.5,
    box_size: float = BOX_SOURCE_SIZE,
) -> pd.DataFrame:
    """GradCAM of each boxed finding on the images of a split, scored against its NIH boxes.

    Args:
        model: the classifier. frame: split table with ``Image``, one row per image.
        images: (N, S, S) uint8 images of ``frame`` at the model's input size.
        statistics: the training (mean, std) or ``PER_IMAGE``. labels: the model's class names.
        boxes: ``load_boxes`` table (``box_size`` coordinates); boxes of findings the model
            does not predict are skipped with a warning.
        threshold: heatmap level for the IoU.

    Returns:
        One row per box: ``Image``, ``Finding``, ``x``, ``y``, ``w``, ``h`` (in model-input pixels),
        ``hit`` (pointing game), ``IoU``, ``vanished``, and what a map that ignores the image would
        score on the box: ``random point hit`` and ``centre hit`` (``pointing_baselines``).
    """
    return _localisation_scores_by_layer(
        model, frame, images, statistics, labels, boxes, (layer_name,), threshold, box_size
    )[layer_name]


def _localisation_scores_by_layer(
    model: keras.Model,
    frame: pd.DataFrame,
    images: np.ndarray,
    statistics: Standardisation,
    labels: Sequence[str],
    boxes: pd.DataFrame,
    layer_names: tuple[str, ...],
    threshold: float,
    box_size: float,
) -> dict[str, pd.DataFrame]:
    """``localisation_scores`` at several layers, one GradCAM pass per (image, finding) for all of them."""
    images = _check_images(images, model)
    if len(frame) != len(images):
        raise ValueError(f"{len(frame)} split rows but {len(images)} images.")
    names = list(labels)
    position_of = {image: position for position, image in enumerate(frame["Image"])}
    selected = boxes[boxes["Image"].isin(position_of)]
    unknown = selected[~selected["Finding"].isin(names)]
    if len(unknown):
        warnings.warn(f"Skipped {len(unknown)} box(es) of findings the model does not predict: "
                      f"{sorted(unknown['Finding'].unique())}.", stacklevel=2)
    selected = selected[selected["Finding"].isin(names)]
    size = images.shape[1]
    rows = {layer_name: [] for layer_name in layer_names}
    for image_name, image_boxes in selected.groupby("Image", sort=True):
        model_input = standardise(images[position_of[image_name]][np.newaxis], statistics)
        heatmaps = {}
        for _, box in image_boxes.iterrows():
            class_index = names.index(box["Finding"])
            # One GradCAM pass per (image, finding), shared by that finding's boxes.
            if class_index not in heatmaps:
                heatmaps[class_index] = gradcam_heatmaps(model, model_input[0], class_index, layer_names)
            scaled = scale_box(box, box_size, size)
            # What does not depend on the layer, computed once per box.
            common = {"Image": image_name, "Finding": box["Finding"], **dict(zip("xywh", scaled)),
                      **pointing_baselines(scaled, size)}
            for layer_name, (heatmap, vanished) in heatmaps[class_index].items():
                rows[layer_name].append({**common, "hit": pointing_game_hit(heatmap, scaled),
                                         "IoU": box_iou(heatmap, scaled, threshold), "vanished": vanished})
    columns = ["Image", "Finding", "x", "y", "w", "h", "hit", "IoU", "vanished",
               "random point hit", "centre hit"]
    return {layer_name: pd.DataFrame(layer_rows, columns=columns) for layer_name, layer_rows in rows.items()}


def choose_layer(
    model: keras.Model,
    frame: pd.DataFrame,
    images: np.ndarray,
    statistics: Standardisation,
    labels: Sequence[str],
    boxes: pd.DataFrame,
    layers: Sequence[str] = CANDIDATE_LAYERS,
) -> tuple[str, dict[str, float]]:
    """The layer whose GradCAM wins the pointing game on the boxes of ``frame``'s images, and the hit
    rate of every layer. Choose on validation images, so that the test images still score the choice.

    Arguments as ``localisation_scores``; ties go to the layer listed first.

    Raises:
        ValueError: if ``layers`` is empty.
        NoBoxes: if none of the images has a box of a finding the model predicts.
    """
    if not layers:
        raise ValueError("choose_layer needs at least one candidate layer.")
    by_layer = _localisation_scores_by_layer(
        model, frame, images, statistics, labels, boxes, tuple(layers), threshold=0.5, box_size=BOX_SOURCE_SIZE
    )
    if next(iter(by_layer.values())).empty:  # the same boxes for every layer
        raise NoBoxes("None of the images has a box of a finding the model predicts: no layer to choose.")
    rates = {layer: float(scores["hit"].mean()) for layer, scores in by_layer.items()}
    return max(layers, key=rates.get), rates  # max keeps the first of equal rates


def pointing_baselines(box: Sequence[float], size: int) -> dict[str, float]:
    """What a map that does not look at the image scores on one box of a (size, size) image.

    ``random point hit``: the chance that a uniformly random pixel falls inside the box (its share of
    the image). ``centre hit``: 1 if the image's central pixel does, else 0.
    """
    mask = _box_mask((size, size), box)
    return {"random point hit": float(mask.mean()), "centre hit": float(mask[size // 2, size // 2])}


def summarise_localisation(scores: pd.DataFrame) -> pd.DataFrame:
    """Per finding and overall (``All``): boxes, images, pointing-game hit rate, mean IoU, and the hit
    rates of a random point and of the image centre on the same boxes.

    Args:
        scores: the table of ``localisation_scores``.
    """
    missing = [column for column in ("Image", "Finding", "hit", "IoU", "vanished") if column not in scores]
    if missing:
        raise ValueError(f"Expected a localisation_scores table; missing column(s) {missing}.")

    def summary(part: pd.DataFrame) -> dict:
        return {
            "boxes": len(part),
            "images": part["Image"].nunique(),
            "hit rate": part["hit"].astype(float).mean() if len(part) else np.nan,
            "mean IoU": part["IoU"].mean() if len(part) else np.nan,
            "vanished": int(part["vanished"].sum()),
            "random point hit rate": part["random point hit"].mean() if len(part) else np.nan,
            "centre hit rate": part["centre hit"].mean() if len(part) else np.nan,
        }

    rows = {finding: summary(part) for finding, part in scores.groupby("Finding", sort=True)}
    rows["All"] = summary(scores)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("finding")


def pointing_margin(
    scores: pd.DataFrame, patients: Sequence, baseline: str = "centre hit", seed: int = 0
) -> tuple[float, float, float]:
    """How much more often GradCAM points inside the boxes than ``baseline`` (``"centre hit"`` or
    ``"random point hit"``) on the same boxes: the mean difference, with a 95% interval over resamples
    of ``patients`` (one per row of ``scores``, a ``localisation_scores`` table)."""
    if baseline not in ("centre hit", "random point hit"):
        raise ValueError(f"baseline must be 'centre hit' or 'random point hit', got {baseline!r}.")
    return bootstrap_mean(scores["hit"].astype(float) - scores[baseline], np.asarray(patients), seed=seed)


def randomisation_check(
    model: keras.Model,
    randomised: keras.Model,
    images: np.ndarray,
    statistics: Standardisation,
    class_indices: Sequence[int],
    layer_name: str = LAST_CONV_LAYER,
) -> pd.DataFrame:
    """The model-randomisation sanity check of Adebayo et al. (NeurIPS 2018) for GradCAM.

    If the heatmaps of a network with random weights resemble the trained network's, the maps show
    the image's edges or the architecture, not what the model learnt. The similarity is the Spearman
    rank correlation of the two heatmaps of each image (computed on the layer's own grid, where the
    maps carry their information; the bilinear upsampling would only add ties and smoothness).

    Args:
        model: the trained classifier. randomised: the same architecture with re-initialised weights.
        images: (N, S, S) uint8 images. class_indices: (N,) the finding to explain on each image.

    Returns:
        One row per image: ``class``, ``spearman`` (NaN where either map vanished).
    """
    from scipy.stats import spearmanr

    rows = []
    for image, class_index in zip(_check_images(images, model), class_indices):
        model_input = standardise(image[np.newaxis], statistics)[0]
        grid = model.get_layer(layer_name).output.shape[1]
        maps = [gradcam_heatmap(network, model_input, int(class_index), layer_name) for network in (model, randomised)]
        small = [tf.image.resize(heatmap[..., np.newaxis], (grid, grid), method="area").numpy().ravel()
                 for heatmap, _ in maps]  # fmt: skip
        vanished = any(flag for _, flag in maps) or min(np.ptp(values) for values in small) == 0
        rows.append({"class": int(class_index), "spearman": np.nan if vanished else float(spearmanr(*small).statistic)})
    return pd.DataFrame(rows)


# --- explaining findings -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Explanation:
    """GradCAM of one finding on one image, with what its panel of ``plots.plot_gradcam`` shows."""

    finding: str
    probability: float
    heatmap: np.ndarray  # (H, W) in [0, 1], all zero where the gradient vanished
    vanished: bool
    boxes: tuple[Box, ...] = ()  # the finding's NIH boxes, in the image's pixels


def explain_findings(
    model: keras.Model,
    image_uint8: np.ndarray,
    statistics: Standardisation,
    labels: Sequence[str],
    selected_labels: Sequence[str],
    boxes: pd.DataFrame | None = None,
    layer_name: str = LAST_CONV_LAYER,
    box_size: float = BOX_SOURCE_SIZE,
    calibration: dict | None = None,
    probabilities: np.ndarray | None = None,
) -> list[Explanation]:
    """The GradCAM of each selected finding on one image, for ``plots.plot_gradcam``.

    Args:
        model: the classifier. image_uint8: (S, S) uint8 image at the model's input size.
        statistics: the training (mean, std) or ``PER_IMAGE``. labels: the model's class names.
        selected_labels: findings to explain, one explanation each.
        boxes: optional boxes of this image (``Finding``, ``x``, ``y``, ``w``, ``h`` in ``box_size``
            coordinates), kept with their finding's explanation in the image's pixels.
        calibration: the model card's calibration, so that the probabilities are calibrated
            (None: the network's outputs).
        probabilities: (C,) the probabilities to report, when the caller has them already (e.g.
            with test-time flip); ``calibration`` is then not used.
    """
    image = _check_images(np.asarray(image_uint8)[np.newaxis], model)[0]
    names = list(labels)
    unknown = [name for name in selected_labels if name not in names]
    if unknown or not len(selected_labels):
        raise ValueError(f"selected_labels must be non-empty and among the model's labels; unknown: {unknown}.")
    model_input = standardise(image[np.newaxis], statistics)
    if probabilities is None:
        probabilities = calibrate(predict(model, image[np.newaxis], statistics, verbose=0), calibration, names)[0]
    explanations = []
    for name in selected_labels:
        heatmap, vanished = gradcam_heatmap(model, model_input[0], names.index(name), layer_name)
        finding_boxes = () if boxes is None else tuple(
            scale_box(box, box_size, image.shape[0]) for _, box in boxes[boxes["Finding"] == name].iterrows())
        probability = float(probabilities[names.index(name)])
        explanations.append(Explanation(name, probability, heatmap, vanished, finding_boxes))
    return explanations
