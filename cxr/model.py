"""DenseNet121 for multi-label chest X-ray classification, and loading weights into it."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

import h5py
import keras
import tensorflow as tf

from cxr.pipeline import PER_IMAGE

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
GIT_LFS_POINTER = b"version https://git-lfs"
LAST_CONV_LAYER = "relu"  # DenseNet121's last convolutional activation, where GradCAM looks
TRAINING_STATISTICS = "training-statistics"  # a shipped model's "standardisation": the course's way
MINIMUM_IMAGE_SIZE = 32  # DenseNet121 halves its input five times: smaller inputs leave nothing to pool
# Training precisions: "auto" picks mixed_bfloat16 where the hardware computes bfloat16 natively.
PRECISIONS = ("auto", "float32", "mixed_bfloat16")


def build_densenet121(
    num_classes: int = 14,
    image_size: int = 320,
    weights: str | Path | None = None,
    precision: str = "float32",
    fuse_batch_norm: bool = True,
    dropout: float = 0.0,
) -> keras.Model:
    """DenseNet121 features, global average pooling and one sigmoid output per finding.

    The model is a single flat functional graph, so ``model.get_layer("relu")`` is the last
    convolutional activation.

    Args:
        num_classes: number of findings.
        image_size: side of the square RGB input.
        weights: None (random initialisation), ``"imagenet"`` (downloads, needs internet), or the
            path of a DenseNet121 "notop" weight file such as the course's ``densenet.hdf5``.
        precision: ``"float32"``, or ``"mixed_bfloat16"`` for training: bfloat16 arithmetic on
            float32 weights (the saved weights stay float32), with the sigmoid head in float32.
        fuse_batch_norm: compute batch normalisation as one fused op (``FusedBatchNormalization``);
            False gives Keras' own layers, as in the course (same weights, same results, slower).
        dropout: rate of a dropout layer between the pooled features and the head (training only;
            it holds no weights, so the weight files are the same with or without it).
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolve_precision(precision))
    try:
        base = keras.applications.DenseNet121(
            include_top=False,
            weights=None if weights is None else str(weights),
            input_tensor=keras.Input((image_size, image_size, 3), name="image"),
        )
        features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
        if dropout:
            features = keras.layers.Dropout(dropout, name="head_dropout")(features)
        outputs = keras.layers.Dense(num_classes, activation="sigmoid", name="predictions", dtype="float32")(features)
        network = keras.Model(base.inputs[0], outputs, name="densenet121_cxr")
        return fuse_batch_norms(network) if fuse_batch_norm else network
    finally:
        keras.config.set_dtype_policy(previous)


# --- batch normalisation as one fused op ---------------------------------------------------------

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
        output, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs, scale, offset, mean=layer.moving_mean, variance=layer.moving_variance,
            epsilon=layer.epsilon, is_training=False)
        return output
    output, mean, variance = tf.compat.v1.nn.fused_batch_norm(inputs, scale, offset, epsilon=layer.epsilon,
                                                              is_training=True)
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
    training step on the CPU is about 1.3x faster (bench/RESULTS.md).
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


def fuse_batch_norms(network: keras.Model) -> keras.Model:
    """A copy of a single-input functional ``network``, same weights and layer names, with each of its Keras
    BatchNormalization layers computed by a FusedBatchNormalization.

    The copy has layers of its own, so that each layer's output (GradCAM's "relu") belongs to its
    graph; its input keeps the original's name.
    """

    def copy(layer: keras.layers.Layer) -> keras.layers.Layer:
        kind = FusedBatchNormalization if type(layer) is keras.layers.BatchNormalization else layer.__class__
        return kind.from_config(layer.get_config())

    input_layer = next(layer for layer in network.layers if isinstance(layer, keras.layers.InputLayer))
    inputs = keras.Input(network.inputs[0].shape[1:], name=input_layer.name)
    fused = keras.models.clone_model(network, input_tensors=inputs, clone_function=copy)
    fused.set_weights(network.get_weights())
    return fused


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


def _weighted_layer_count(model: keras.Model) -> int:
    return sum(1 for layer in model.layers if layer.weights)


def _weight_file_layout(path: Path) -> tuple[str, int]:
    """The suffix Keras reads a weight file's format by, decided from its content, and its number of layers
    with weights.

    A Keras 2 file (weights only, or a whole model under ``model_weights``) lists its layers in a
    ``layer_names`` attribute; a Keras 3 ``.weights.h5`` keeps them as groups under ``layers``.
    """
    with h5py.File(path, "r") as file:
        legacy = file["model_weights"] if "layer_names" not in file.attrs and "model_weights" in file else file
        if "layer_names" in legacy.attrs:
            names = [name.decode() if isinstance(name, bytes) else name for name in legacy.attrs["layer_names"]]
            return ".h5", sum(1 for name in names if len(legacy[name].attrs.get("weight_names", [])) > 0)
        if isinstance(file.get("layers"), h5py.Group):
            return ".weights.h5", sum(1 for layer in file["layers"].values() if len(layer.get("vars", ())) > 0)
    raise ValueError("neither a Keras 3 weights file (a 'layers' group) nor a Keras 2 one (a 'layer_names' attribute)")


@contextlib.contextmanager
def _named(path: Path, suffix: str):
    """``path`` under a name ending in ``suffix``: Keras picks the reader of a weight file by its name alone."""
    with tempfile.TemporaryDirectory() as folder:
        link = Path(folder) / f"weights{suffix}"
        os.symlink(path.resolve(), link)
        yield link


def check_weight_file(path: str | Path) -> Path:
    """Fail early, naming the file, if it is missing, a Git LFS pointer, or not HDF5 at all."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weight file {path} not found.")
    with open(path, "rb") as file:
        head = file.read(64)
    if head.startswith(GIT_LFS_POINTER):
        raise ValueError(
            f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` to fetch the real file."
        )
    if not head.startswith(HDF5_SIGNATURE):
        raise ValueError(
            f"{path} is not an HDF5 file; expected a Keras 3 '.weights.h5', a Keras 2 '.h5' model, "
            "or a DenseNet121 'notop' '.h5' weight file."
        )
    return path


def load_pretrained_weights(model: keras.Model, path: str | Path) -> keras.Model:
    """Load weights into a model made by ``build_densenet121``, whatever the file's format.

    Accepted: the project's Keras 3 ``.weights.h5`` (float32 or float16); a legacy Keras 2
    ``.h5``/``.hdf5`` of the same topology (the course's ``pretrained_model.h5``); a DenseNet121
    "notop" file in either format (the course's ``densenet.hdf5``), which fills the convolutional
    base and leaves the classifier as initialised. The format is read from the content, whatever
    the file's name.

    Raises:
        FileNotFoundError, ValueError: naming the file and the format expected.
    """
    path = check_weight_file(path)
    expected = _weighted_layer_count(model)
    try:
        suffix, found = _weight_file_layout(path)
        if found not in (expected, expected - 1):
            raise ValueError(
                f"it has {found} layers with weights, the model {expected} (or {expected - 1} without the classifier)"
            )
        with _named(path, suffix) as named:
            if found == expected:
                model.load_weights(named)
            else:
                # A base without the classifier: load it into a bare DenseNet121 and copy layer by layer.
                base = keras.applications.DenseNet121(
                    include_top=False, weights=str(named), input_shape=model.input_shape[1:]
                )
                for source, target in zip(base.layers, model.layers):
                    target.set_weights(source.get_weights())
    except (ValueError, KeyError, OSError) as error:
        raise ValueError(
            f"{path} does not match DenseNet121 with {model.output_shape[-1]} outputs: {error}. Expected a "
            "'.weights.h5' saved from build_densenet121 with the same labels, a Keras 2 '.h5' of the same "
            "model, or a DenseNet121 'notop' file."
        ) from error
    return model


def save_weights_float16(model: keras.Model, path: str | Path) -> None:
    """Save a model's weights as a Keras 3 ``.weights.h5`` with every float array stored as float16.

    Half the size of float32; ``load_pretrained_weights`` casts them back on loading.
    """
    path = Path(path)
    full = path.with_name("float32-" + path.name)
    model.save_weights(full)
    with h5py.File(full, "r") as source, h5py.File(path, "w") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value

        def copy(name, item):
            if isinstance(item, h5py.Group):
                group = target.require_group(name)
                for key, value in item.attrs.items():
                    group.attrs[key] = value
            elif item.dtype.kind == "f":
                target.create_dataset(name, data=item[()].astype("float16"))
            else:
                target.create_dataset(name, data=item[()])

        source.visititems(copy)
    full.unlink()


def read_model_card(path: str | Path) -> dict:
    """Read a shipped model's JSON and check the fields that inference needs.

    Raises:
        FileNotFoundError, ValueError: naming the file and the field, and what to do.
    """
    path = Path(path)
    export = "export the model again with `python export_model.py`"
    if not path.is_file():
        raise FileNotFoundError(f"Model card {path} not found: {export}.")
    try:
        card = json.loads(path.read_text())
    except ValueError as error:  # not JSON, or not text
        raise ValueError(f"{path}: not valid JSON ({error}); {export}.") from error
    if not isinstance(card, dict):
        raise ValueError(f"{path}: expected a JSON object with 'labels' and 'image_size'; {export}.")
    labels = card.get("labels")
    if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)):
        raise ValueError(f"{path}: field 'labels' must be a non-empty list of finding names, got {labels!r}; {export}.")
    size = card.get("image_size")
    if type(size) is not int or size < MINIMUM_IMAGE_SIZE:
        raise ValueError(
            f"{path}: field 'image_size' must be a whole number of pixels, at least {MINIMUM_IMAGE_SIZE}, "
            f"got {size!r}; {export}."
        )
    try:
        inference_statistics(card)
    except ValueError as error:
        raise ValueError(f"{path}: {error}; {export}.") from error
    return card


def load_shipped_model(prefix: str | Path) -> tuple[keras.Model, dict, tuple[float, float] | str]:
    """Build and load a model exported by ``export_model.py`` from ``PREFIX.weights.h5`` and ``PREFIX.json``.

    Returns:
        model; its card (labels, image_size, thresholds, ...); and the standardisation to use at
        inference: the training (mean, std) or ``cxr.pipeline.PER_IMAGE``.
    """
    prefix = Path(prefix)
    card = read_model_card(prefix.with_name(prefix.name + ".json"))
    network = build_densenet121(len(card["labels"]), card["image_size"])
    load_pretrained_weights(network, prefix.with_name(prefix.name + ".weights.h5"))
    return network, card, inference_statistics(card)


def inference_statistics(card: dict) -> tuple[float, float] | str:
    """How a shipped model's inputs are standardised: the training (mean, std), or ``"per-image"``.

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
