"""Inference, in one place: how images are standardised, the batched forward pass, and the shipped
model (weights and the JSON that says how to use them).

A shipped model is two files with one prefix: ``PREFIX.weights.h5`` and ``PREFIX.json``.
``ShippedModel.save`` writes them (``export_model.py``), ``ShippedModel.load`` reads and checks them
(the app, ``predict.py``, the notebook); the JSON's fields that inference uses are:

- ``labels``: the finding names, in the order of the network's outputs;
- ``image_size``: the side of the square input, in pixels;
- ``blur``: the Gaussian blur, in pixels, applied after resizing (``cxr.images.to_model_size``); 0 or
  absent for none;
- ``standardisation``: ``"training-statistics"`` (the course's way: ``normalisation`` holds the
  training pixels' ``mean`` and ``std``) or ``"per-image"`` (each image to mean 0 and std 1);
- ``test_time_flip``: average each image's probabilities with its mirror image's;
- ``gradcam_layer``: the layer GradCAM takes its maps from (``cxr.gradcam.choose_layer``); absent: the
  last convolutional layer;
- ``calibration``: ``cxr.calibration``'s parameters, from network scores to probabilities;
- ``thresholds`` (and ``thresholds_youden``): the validated operating threshold of each finding.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cxr.calibration import calibrate
from cxr.checks import BadInput, is_number
from cxr.files import atomic_write_all
from cxr.images import to_model_size
from cxr.model import (
    LAST_CONV_LAYER,
    MINIMUM_IMAGE_SIZE,
    build_densenet121,
    load_pretrained_weights,
    save_weights_float16,
)

# --- standardisation -----------------------------------------------------------------------------

# A standardisation is either the training pixels' (mean, std), in the 0..255 scale, or PER_IMAGE:
# each image to its own mean 0 and std 1, as training does. The course standardises validation and
# test with the training statistics; which of the two a shipped model uses is chosen on the
# validation split and recorded in its JSON under these names.
PER_IMAGE = "per-image"
TRAINING_STATISTICS = "training-statistics"
Standardisation = tuple[float, float] | str
EPSILON = 1e-7


def check_standardisation(statistics: Standardisation) -> Standardisation:
    """``statistics`` if usable: ``PER_IMAGE``, or (mean, std) with a finite mean and a positive std."""
    if isinstance(statistics, str) and statistics == PER_IMAGE:
        return statistics
    try:
        mean, std = (float(value) for value in statistics) if not isinstance(statistics, str) else (None, None)
        usable = math.isfinite(mean) and math.isfinite(std) and std > 0
    except (TypeError, ValueError):  # not a pair of numbers
        usable = False
    if not usable:
        raise ValueError(f"statistics must be (mean, std) with a finite mean and std > 0, or {PER_IMAGE!r}; "
                         f"got {statistics!r}.")
    return statistics


def standardise(pixels, statistics: Standardisation):
    """(N, H, W) grayscale pixels in the 0..255 scale -> (N, H, W, 3) float32 model input.

    One formula for NumPy arrays (NumPy out) and TensorFlow tensors (a tensor out, in tf.data
    pipelines and compiled graphs, where ``statistics`` may hold tensors).
    """
    if tf.is_tensor(pixels):
        pixels, mean_of, std_of, repeat = tf.cast(pixels, tf.float32), tf.reduce_mean, tf.math.reduce_std, tf.repeat
    else:
        pixels, mean_of, std_of, repeat = np.asarray(pixels).astype(np.float32), np.mean, np.std, np.repeat
    if isinstance(statistics, str):
        check_standardisation(statistics)
        mean = mean_of(pixels, axis=(1, 2), keepdims=True)
        std = std_of(pixels, axis=(1, 2), keepdims=True)
    else:
        mean, std = statistics
    scaled = (pixels - mean) / (std + EPSILON)
    return repeat(scaled[..., None], 3, axis=-1)


# --- the batched forward pass --------------------------------------------------------------------


def check_images(images: np.ndarray, model: keras.Model) -> np.ndarray:
    """``images`` as an (N, H, W) array at ``model``'s input size, or ValueError saying what is wrong."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be an (N, H, W) array of grayscale pixels, got shape {images.shape}.")
    expected = tuple(model.input_shape[1:3])
    if None not in expected and images.shape[1:] != expected:
        raise ValueError(f"images are {images.shape[1:]} but the model expects {expected}: resize them first.")
    return images


def predict(
    model: keras.Model,
    images: np.ndarray,
    statistics: Standardisation,
    batch_size: int = 32,
    verbose: int | str = 1,
    flip: bool = False,
) -> np.ndarray:
    """Probabilities of every finding for a stack of images, standardised like validation data.

    Args:
        model: a model taking (B, H, W, 3) float32 standardised images.
        images: (N, H, W) uint8 grayscale images at the model's input size.
        statistics: the training (mean, std) in the 0..255 scale, or ``PER_IMAGE``.
        batch_size: images per forward pass.
        verbose: Keras progress display (1: progress bar, 0: silent).
        flip: test-time augmentation: average the probabilities of each image and its mirror image.

    Returns:
        (N, C) float32 network outputs (uncalibrated).
    """
    images = check_images(images, model)
    if len(images) == 0:
        raise ValueError("images must be a non-empty (N, H, W) array, got none.")
    check_standardisation(statistics)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    # One compiled graph per model does the validation pipeline's standardisation and the forward
    # pass; called batch by batch it beats model.predict on the CPU with the same probabilities
    # (bench/RESULTS.md).
    forward = _forward_pass(model, isinstance(statistics, str), tf.as_dtype(images.dtype), flip)
    mean, std = (0.0, 1.0) if isinstance(statistics, str) else statistics
    mean, std = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
    steps = -(-len(images) // batch_size)
    progress = keras.utils.Progbar(steps, verbose=1 if verbose == "auto" else verbose) if verbose else None
    outputs = []
    for step in range(steps):
        batch = tf.constant(images[step * batch_size:(step + 1) * batch_size])
        outputs.append(forward(batch, mean, std).numpy())
        if progress is not None:
            progress.update(step + 1)
    return np.concatenate(outputs).astype(np.float32, copy=False)


# model -> {(per_image, dtype, flip): compiled forward pass}; weak, so that a model nobody holds frees its graphs.
_FORWARD_PASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forward_pass(model: keras.Model, per_image: bool, dtype: tf.DType = tf.uint8, flip: bool = False) -> Callable:
    """A tf.function: (B, H, W) batch of ``dtype`` pixels, mean, std -> (B, C) float32 probabilities
    (with ``flip``, the mean of the batch's and its mirror image's).

    Traced once per model and standardisation for any batch size; it reads the model's variables
    when called, so weights loaded later are used. It holds the model only weakly.
    """
    passes = _FORWARD_PASSES.setdefault(model, {})
    key = (per_image, dtype, flip)
    if key not in passes:
        network = weakref.ref(model)
        height, width = model.input_shape[1:3]
        signature = [tf.TensorSpec((None, height, width), dtype), tf.TensorSpec((), tf.float32),
                     tf.TensorSpec((), tf.float32)]

        @tf.function(input_signature=signature)
        def forward(batch, mean, std):
            standardised = standardise(batch, PER_IMAGE if per_image else (mean, std))
            probabilities = tf.cast(network()(standardised, training=False), tf.float32)
            if flip:
                mirrored = tf.cast(network()(standardised[:, :, ::-1], training=False), tf.float32)
                probabilities = (probabilities + mirrored) / 2
            return probabilities

        passes[key] = forward
    return passes[key]


# --- the shipped model ---------------------------------------------------------------------------

EXPORT_AGAIN = "export the model again with `python export_model.py`"
THRESHOLD_FIELDS = {"specificity": "thresholds", "youden": "thresholds_youden"}
# Degenerate images (a 1 x 1 pixel, a 1 x 4000 line, an all-black frame) are no radiographs, yet the
# model gives them findings with high probabilities: refuse a side under MIN_SIDE pixels (the
# smallest NIH images used in training are 64 px) and an image whose grey levels (0..255, at the
# model's size) have a standard deviation under MIN_CONTRAST (NIH test images: 29 to 78).
MIN_SIDE = 64
MIN_CONTRAST = 2.0


class NotARadiograph(BadInput):
    """A decoded image too small or too blank to be a chest radiograph; the message continues the
    file's name ("x.png is 1 x 1 pixels; ...")."""


def not_a_radiograph(width: int, height: int, pixels: np.ndarray | None = None) -> str | None:
    """Why an image of ``width`` x ``height`` pixels cannot be a chest radiograph, or None if it can.

    The reason continues the file's name ("x.png is 1 x 1 pixels; ..."). ``pixels``, the image as
    preprocessed for the model, is checked for contrast too; without it only the size is (the app
    checks the size from the file's header, before decoding).
    """
    if min(width, height) < MIN_SIDE:
        return f"is {width} x {height} pixels; a chest X-ray needs at least {MIN_SIDE} pixels on each side."
    if pixels is not None and pixels.std() < MIN_CONTRAST:
        return (f"has almost no contrast (standard deviation of its grey levels {pixels.std():.1f} of 255): "
                "it is blank, not a chest X-ray.")
    return None


def model_files(prefix: str | Path) -> tuple[Path, Path]:
    """(JSON, weights) of a model given as ``models/NAME``, ``NAME.json`` or ``NAME.weights.h5``."""
    prefix = str(prefix)
    for suffix in (".weights.h5", ".json"):
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    return Path(prefix + ".json"), Path(prefix + ".weights.h5")


def read_card(path: str | Path) -> dict:
    """A shipped model's JSON, checked (``check_card``).

    Raises:
        FileNotFoundError, ValueError: naming the file and the field, and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model card {path} not found: {EXPORT_AGAIN}.")
    try:
        card = json.loads(path.read_text())
    except ValueError as error:  # not JSON, or not text
        raise ValueError(f"{path}: not valid JSON ({error}); {EXPORT_AGAIN}.") from error
    return check_card(card, path)


def check_card(card: dict, path: str | Path) -> dict:
    """``card`` if it holds what inference needs; else ValueError naming ``path`` and every wrong field."""
    if not isinstance(card, dict):
        raise ValueError(f"{path}: expected a JSON object with 'labels' and 'image_size'; {EXPORT_AGAIN}.")
    problems = []
    labels = card.get("labels")
    if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)):
        problems.append(f"field 'labels' must be a non-empty list of finding names, got {labels!r}")
        labels = []
    size = card.get("image_size")
    if type(size) is not int or size < MINIMUM_IMAGE_SIZE:
        problems.append(f"field 'image_size' must be a whole number of pixels, at least {MINIMUM_IMAGE_SIZE}, "
                        f"got {size!r}")
    blur = card.get("blur", 0.0)
    if not is_number(blur, low=0):
        problems.append(f"field 'blur' must be a standard deviation of 0 or more pixels, got {blur!r}")
    layer = card.get("gradcam_layer", LAST_CONV_LAYER)
    if not (isinstance(layer, str) and layer):
        problems.append(f"field 'gradcam_layer' must name a layer of the network, got {layer!r}")
    flip = card.get("test_time_flip", False)
    if not isinstance(flip, bool):  # the string "false" would otherwise switch it on
        problems.append(f"field 'test_time_flip' must be true or false, got {flip!r}")
    try:
        card_standardisation(card)
    except ValueError as error:
        problems.append(str(error))
    for name in THRESHOLD_FIELDS.values():
        thresholds = card.get(name)
        if thresholds is None:
            continue
        if not isinstance(thresholds, dict):
            problems.append(f"field {name!r} must map findings to thresholds, got {thresholds!r}")
            continue
        wrong = {label: value for label, value in thresholds.items() if not is_number(value, 0.0, 1.0)}
        if wrong:  # a threshold of 1.5 would silently never flag its finding
            problems.append(f"field {name!r} must hold numbers from 0 to 1, got {wrong}")
    calibration = card.get("calibration")
    if calibration is not None and labels:
        try:
            calibrate(np.full((1, len(labels)), 0.5), calibration, labels)
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            problems.append(f"field 'calibration' must hold 'shift', 'slope' and 'intercept' of every label ({error})")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems) + f"; {EXPORT_AGAIN}.")
    return card


def card_standardisation(card: dict) -> Standardisation:
    """How a shipped model's inputs are standardised: the training (mean, std), or ``PER_IMAGE``.

    Raises:
        ValueError: naming the field, for an unknown ``standardisation`` or an unusable ``normalisation``.
    """
    standardisation = card.get("standardisation", TRAINING_STATISTICS)
    if standardisation == PER_IMAGE:
        return PER_IMAGE
    if standardisation != TRAINING_STATISTICS:
        raise ValueError(
            f"field 'standardisation' must be {TRAINING_STATISTICS!r} or {PER_IMAGE!r}, got {standardisation!r}"
        )
    normalisation = card.get("normalisation")
    try:
        mean, std = float(normalisation["mean"]), float(normalisation["std"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"field 'normalisation' must hold numbers 'mean' and 'std', got {normalisation!r}") from error
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"field 'normalisation' needs a finite 'mean' and a positive 'std', got {normalisation!r}")
    return (mean, std)


def card_thresholds(card: dict, rule: str = "specificity") -> dict[str, float] | None:
    """The operating thresholds of a checked card (``check_card``) for ``rule``, per label, or None if it
    has none."""
    raw = card.get(THRESHOLD_FIELDS[rule]) or {}
    return {label: float(raw[label]) for label in card["labels"] if label in raw} or None


@dataclass
class ShippedModel:
    """The network with what its JSON says about using it: labels, size, blur, standardisation, test-time
    flip, calibration and thresholds. ``card`` is the whole JSON (the evaluation figures too)."""

    model: keras.Model
    card: dict = field(repr=False)

    def __post_init__(self):
        check_card(self.card, "the model card")
        square = (self.image_size, self.image_size)
        if self.model.output_shape[-1] != len(self.labels) or tuple(self.model.input_shape[1:3]) != square:
            raise ValueError(f"The card describes {len(self.labels)} findings at {self.image_size} px, the model "
                             f"{self.model.output_shape[-1]} at {self.model.input_shape[1]} px.")
        if self.gradcam_layer not in {layer.name for layer in self.model.layers}:
            raise ValueError(f"The card's field 'gradcam_layer' names {self.gradcam_layer!r}, which the model lacks.")

    @property
    def labels(self) -> list[str]:
        return self.card["labels"]

    @property
    def image_size(self) -> int:
        return self.card["image_size"]

    @property
    def blur(self) -> float:
        """The Gaussian blur (pixels) that preprocessing applies after resizing, as in training."""
        return float(self.card.get("blur", 0.0))

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """A decoded (H, W) uint8 image brought to the model's input as training saw it: resized, then
        blurred; NotARadiograph (``not_a_radiograph``) for an image too small or too blank."""
        model_input = to_model_size(pixels, self.image_size, self.blur)
        problem = not_a_radiograph(pixels.shape[1], pixels.shape[0], model_input)
        if problem:
            raise NotARadiograph(problem)
        return model_input

    @property
    def statistics(self) -> Standardisation:
        return card_standardisation(self.card)

    @property
    def flip(self) -> bool:
        return self.card.get("test_time_flip", False)

    @property
    def gradcam_layer(self) -> str:
        """The layer GradCAM looks at, chosen on the validation boxes (if the JSON is silent: the last one)."""
        return self.card.get("gradcam_layer", LAST_CONV_LAYER)

    @property
    def calibration(self) -> dict | None:
        return self.card.get("calibration")

    @property
    def thresholds(self) -> dict[str, float] | None:
        """The validated (90% specificity) thresholds, or None if the JSON has none."""
        return card_thresholds(self.card)

    @classmethod
    def load(cls, prefix: str | Path, model: keras.Model | None = None) -> ShippedModel:
        """Build DenseNet121 and load ``PREFIX.weights.h5`` as ``PREFIX.json`` describes it.

        Args:
            prefix: ``models/NAME`` (or either file's name).
            model: an already loaded network to use with this JSON instead of loading the weights again.

        Raises:
            FileNotFoundError, ValueError: naming the file (and the field) that is missing or wrong.
        """
        card_path, weights_path = model_files(prefix)
        card = read_card(card_path)
        if model is None:
            model = load_pretrained_weights(build_densenet121(len(card["labels"]), card["image_size"]), weights_path)
        try:
            return cls(model, card)
        except ValueError as error:
            raise ValueError(f"{card_path} does not describe the given model: {error}") from error

    def save(self, prefix: str | Path, float16: bool = False) -> tuple[Path, Path]:
        """Write ``PREFIX.weights.h5`` (half precision with ``float16``) and ``PREFIX.json``.

        Both are written under other names and renamed at the end (``cxr.files``): a reader never sees
        half an export.
        """
        card_path, weights_path = model_files(prefix)
        save_weights = (lambda path: save_weights_float16(self.model, path)) if float16 else self.model.save_weights
        atomic_write_all({card_path: json.dumps(self.card, indent=2) + "\n", weights_path: save_weights})
        return card_path, weights_path

    def scores(self, images: np.ndarray, batch_size: int = 32, verbose: int | str = 0) -> np.ndarray:
        """(N, C) network outputs of (N, size, size) uint8 images, with the JSON's standardisation and flip."""
        return predict(self.model, images, self.statistics, batch_size, verbose, flip=self.flip)

    def probabilities(self, images: np.ndarray, batch_size: int = 32, verbose: int | str = 0) -> np.ndarray:
        """(N, C) calibrated probabilities (the network's outputs where the JSON has no calibration)."""
        return calibrate(self.scores(images, batch_size, verbose), self.calibration, self.labels)

    def thresholds_for(self, rule: str) -> dict[str, float] | None:
        """The thresholds of ``rule`` (``"specificity"`` or ``"youden"``), or None if the JSON has none."""
        return card_thresholds(self.card, rule)


def load_shipped_model(prefix: str | Path) -> tuple[keras.Model, dict, Standardisation]:
    """(network, JSON, standardisation) of ``ShippedModel.load(prefix)``, as the notebook unpacks them."""
    shipped = ShippedModel.load(prefix)
    return shipped.model, shipped.card, shipped.statistics
