"""tf.data input pipelines: per-image standardisation and augmentation for training,
training-set statistics for validation and test."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from cxr.checks import is_number
from cxr.inference import PER_IMAGE, Standardisation, standardise

# Fixed parallelism instead of tf.data's autotuning: the images are already decoded in memory, and
# preparing a batch takes milliseconds against seconds for the model's step, so autotuning has nothing
# to win. It does cost: a `fit` or `predict` call through an autotuned pipeline often ends only when
# the autotuner's background thread wakes up, and it sleeps in doubling intervals (a 3-s predict call
# took 3.1 s or 5.2 s at random; bench/RESULTS.md).
PARALLEL_CALLS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
PREFETCH_BATCHES = 2
FIXED_OPTIONS = tf.data.Options()
FIXED_OPTIONS.autotune.enabled = False


class RandomGamma(keras.layers.Layer):
    """Raises each image (0..255) to a random power between 1 / (1 + factor) and 1 + factor (log-uniform):
    darker or brighter mid-tones, black and white kept. Per-image standardisation undoes a change of
    brightness or contrast, not this one."""

    def __init__(self, factor: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not is_number(factor, low=0):
            raise ValueError(f"factor must be 0 (no change) or more, got {factor}.")
        self.factor, self.seed = factor, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor, "seed": self.seed}

    def call(self, images, training=True):
        if not training or not self.factor:
            return images
        limit = math.log1p(self.factor)
        shape = (keras.ops.shape(images)[0], 1, 1, 1)
        gamma = keras.ops.exp(keras.random.uniform(shape, -limit, limit, seed=self.seed_generator))
        return 255.0 * keras.ops.power(keras.ops.clip(images / 255.0, 0.0, 1.0), gamma)


@dataclass(frozen=True)
class Augmentation:
    """Random transformations for training images; 0 switches one off."""

    horizontal_flip: bool = True
    rotation: float = 0.0  # fraction of a full turn, e.g. 0.03 is about 11 degrees
    zoom: float = 0.0  # fraction of the side
    shift: float = 0.0  # fraction of the side
    gamma: float = 0.0  # the exponent lies between 1 / (1 + gamma) and 1 + gamma

    def layers(self, seed: int) -> list[keras.layers.Layer]:
        layers = [RandomGamma(self.gamma, seed=seed + 4)] if self.gamma else []
        if self.horizontal_flip:
            layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
        if self.rotation:
            layers.append(keras.layers.RandomRotation(self.rotation, fill_mode="constant", seed=seed + 1))
        if self.zoom:
            layers.append(keras.layers.RandomZoom(self.zoom, fill_mode="constant", seed=seed + 2))
        if self.shift:
            layers.append(keras.layers.RandomTranslation(self.shift, self.shift, fill_mode="constant", seed=seed + 3))
        return layers


def training_statistics(images: np.ndarray, sample_size: int = 500, seed: int = 0) -> tuple[float, float]:
    """Pixel mean and standard deviation over a random sample of distinct training images.

    Args:
        images: (N, H, W) uint8 training images.
        sample_size: how many images to sample (all of them if there are fewer).

    Returns:
        (mean, std) as Python floats, in the 0..255 pixel scale.
    """
    if len(images) == 0:
        raise ValueError("training_statistics needs at least one training image.")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), size=min(sample_size, len(images)), replace=False)
    sample = images[chosen].astype(np.float64)
    return float(sample.mean()), float(sample.std())


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    training: bool,
    statistics: Standardisation | None = None,
    augmentation: Augmentation = Augmentation(),
    seed: int = 0,
) -> tf.data.Dataset:
    """A batched dataset of (B, H, W, 3) float32 images and (B, C) float32 labels.

    Training batches are reshuffled every epoch, augmented, and standardised image by image
    (each image to mean 0 and std 1). Validation/test batches keep their order and are
    standardised with the training ``statistics`` (mean, std), so that they are treated the same
    way whatever else is in the batch (or image by image, with ``statistics=PER_IMAGE``).
    """
    if not training and statistics is None:
        raise ValueError("Validation/test pipelines need the training statistics (mean, std).")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label rows.")
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, np.float32)))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    augment = keras.Sequential(augmentation.layers(seed)) if training and augmentation.layers(seed) else None
    standardisation = PER_IMAGE if training else statistics

    def prepare(batch, batch_labels):
        if augment is not None:  # Keras' image layers take (B, H, W, channels)
            batch = augment(tf.cast(batch, tf.float32)[..., tf.newaxis], training=True)[..., 0]
        return standardise(batch, standardisation), batch_labels

    # Keras' random layers draw from one seed state: augmenting maps run in parallel would take their
    # draws in whatever order their threads ran, and the same seed would give other augmentations.
    # One batch at a time (about 20 ms for 16 images at 224 px) hides behind a CPU's training step
    # (about 0.7 s); a fast accelerator could wait for it.
    calls = 1 if augment is not None else PARALLEL_CALLS
    dataset = dataset.map(prepare, num_parallel_calls=calls).prefetch(PREFETCH_BATCHES)
    return dataset.with_options(FIXED_OPTIONS)
