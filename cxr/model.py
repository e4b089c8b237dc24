"""DenseNet121 for multi-label chest X-ray classification, and loading weights into it.

The architecture is the course's: Keras' DenseNet121 features, global average pooling and one sigmoid
per finding. Its batch norms are computed as fused ops (``cxr.fast_layers``), which changes the speed,
not the weights or the results.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import h5py
import keras

from cxr.fast_layers import densenet_batch_norms, resolve_precision

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
GIT_LFS_POINTER = b"version https://git-lfs"
LAST_CONV_LAYER = "relu"  # DenseNet121's last convolutional activation, where the course's GradCAM looks
MINIMUM_IMAGE_SIZE = 32  # DenseNet121 halves its input five times: smaller inputs leave nothing to pool


def build_densenet121(
    num_classes: int,
    image_size: int,
    weights: str | Path | None = None,
    precision: str = "float32",
    fuse_batch_norm: bool = True,
    dropout: float = 0.0,
    synchronized_batch_norm: bool = False,
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
        synchronized_batch_norm: batch statistics over all replicas of a distribution strategy, so
            that the replicas' moving averages stay identical (training on several devices or machines).
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolve_precision(precision))
    try:
        with densenet_batch_norms(fuse_batch_norm, synchronized_batch_norm):
            base = keras.applications.DenseNet121(
                include_top=False,
                weights=None if weights is None else str(weights),
                input_tensor=keras.Input((image_size, image_size, 3), name="image"),
            )
        features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
        if dropout:
            features = keras.layers.Dropout(dropout, name="head_dropout")(features)
        outputs = keras.layers.Dense(num_classes, activation="sigmoid", name="predictions", dtype="float32")(features)
        return keras.Model(base.inputs[0], outputs, name="densenet121_cxr")
    finally:
        keras.config.set_dtype_policy(previous)


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
