"""Speed without changing results: batch normalisation as one fused op, and the training precision
the hardware computes fastest."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import keras
import tensorflow as tf
from keras.src.applications import densenet as keras_densenet

# Training precisions: "auto" picks mixed_bfloat16 where the hardware computes bfloat16 natively.
PRECISIONS = ("auto", "float32", "mixed_bfloat16")

FUSED_MINIMUM_EPSILON = 1.001e-5  # the smallest epsilon TensorFlow's fused op accepts (DenseNet121's own)


def fused_batch_norm(layer: keras.layers.BatchNormalization, inputs, training: bool):
    """``layer`` applied to ``inputs`` as TensorFlow's single FusedBatchNormV3 op, or None where it does not apply.

    In training it normalises with the batch statistics and updates the layer's moving averages exactly
    as Keras does; otherwise it uses the moving averages. None (the caller falls back to Keras) for
    input the fused op does not take: not 4-D channels-last, float16, an epsilon below its minimum,
    or a synchronised layer.
    """
    if (len(inputs.shape) != 4 or layer.axis not in (-1, 3) or inputs.dtype not in (tf.float32, tf.bfloat16)
            or layer.epsilon < FUSED_MINIMUM_EPSILON or getattr(layer, "synchronized", False)):
        return None
    channels = inputs.shape[-1]
    # Keras keeps these variables in float32 under any dtype policy, as the fused op wants them.
    scale = layer.gamma if layer.scale else tf.ones((channels,))
    offset = layer.beta if layer.center else tf.zeros((channels,))
    if not training:
        return tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=scale, offset=offset, mean=layer.moving_mean, variance=layer.moving_variance,
            epsilon=layer.epsilon, is_training=False).y
    # In training the op computes the batch statistics itself: no mean or variance goes in.
    output, mean, variance = tf.raw_ops.FusedBatchNormV3(
        x=inputs, scale=scale, offset=offset, mean=tf.constant([]), variance=tf.constant([]),
        epsilon=layer.epsilon, is_training=True)[:3]
    # The op returns the unbiased variance (n - 1 in the denominator); Keras averages the biased one.
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
    variance = variance * (count - 1.0) / count
    layer.moving_mean.assign(layer.moving_mean * layer.momentum + mean * (1.0 - layer.momentum))
    layer.moving_variance.assign(layer.moving_variance * layer.momentum + variance * (1.0 - layer.momentum))
    return output


@keras.saving.register_keras_serializable(package="cxr", name="FusedBatchNormalization")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization with the same variables and results, computed as one fused op.

    Keras 3 computes batch normalisation as separate reductions and elementwise ops, and their
    gradients as many more; DenseNet121 has 121 batch norms, most over a whole concatenated feature
    map. The fused op does each in one pass each way and takes bfloat16 input directly: a 224-px
    training step on the CPU is about 1.3 to 1.4x faster (bench/RESULTS.md).
    """

    def call(self, inputs, training=None, mask=None):
        if mask is None and isinstance(training, (bool, type(None))):
            output = fused_batch_norm(self, inputs, training=bool(training) and self.trainable)
            if output is not None:
                return output
        return super().call(inputs, training=training, mask=mask)


# Keras 3 weight files address a layer by its class name: keep Keras' own, so that weights saved from
# this model and from a plain Keras DenseNet121 (the shipped file, the course's) stay interchangeable.
FusedBatchNormalization.__name__ = "BatchNormalization"


_SWAP_LOCK = threading.Lock()


def _batch_norm_class(fused: bool, synchronized: bool) -> type[keras.layers.BatchNormalization]:
    base = FusedBatchNormalization if fused else keras.layers.BatchNormalization
    if not synchronized:
        return base

    class SynchronizedBatchNormalization(base):
        """Batch statistics all-reduced over the replicas, so that every replica's moving averages stay the same."""

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("synchronized", True)
            super().__init__(*args, **kwargs)

    SynchronizedBatchNormalization.__name__ = "BatchNormalization"  # the weight files' layer class, as above
    return SynchronizedBatchNormalization


@contextlib.contextmanager
def densenet_batch_norms(fused: bool = True, synchronized: bool = False):
    """Within this block, Keras' DenseNet121 builds its batch norms fused and/or synchronised.

    keras.applications builds DenseNet121 from ``keras.src.layers``; swapping the class there for the
    time of one construction builds the model once (same layer names, same weight files) instead
    of building a plain one and cloning it. Synchronised layers compute the batch statistics over all
    replicas of a distribution strategy (Keras' own, not fused: the fused op sees one replica's batch).
    """
    layers = keras_densenet.layers
    with _SWAP_LOCK:  # one swap at a time, so that two threads building at once restore Keras' class
        plain = layers.BatchNormalization
        layers.BatchNormalization = _batch_norm_class(fused, synchronized)
        try:
            yield
        finally:
            layers.BatchNormalization = plain


# --- precision ------------------------------------------------------------------------------------


def native_bfloat16() -> bool:
    """Whether this machine computes bfloat16 natively: a GPU of compute capability 8.0 or more,
    or (without a GPU) a CPU with AVX512_BF16 or AMX. Elsewhere bfloat16 is emulated, and slower."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
        return tuple(capability) >= (8, 0)
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: no way to tell, so do not guess
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str) -> str:
    """``"auto"`` to ``"mixed_bfloat16"`` where bfloat16 is native, else ``"float32"``; others unchanged."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "auto":
        return "mixed_bfloat16" if native_bfloat16() else "float32"
    return precision
