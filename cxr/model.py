"""DenseNet121 for multi-label chest X-ray classification, and loading weights into it."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import keras

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
GIT_LFS_POINTER = b"version https://git-lfs"
LAST_CONV_LAYER = "relu"  # DenseNet121's last convolutional activation, where GradCAM looks
TRAINING_STATISTICS = "training-statistics"  # a shipped model's "standardisation": the course's way


def build_densenet121(
    num_classes: int = 14, image_size: int = 320, weights: str | Path | None = None
) -> keras.Model:
    """DenseNet121 features, global average pooling and one sigmoid output per finding.

    The model is a single flat functional graph, so ``model.get_layer("relu")`` is the last
    convolutional activation.

    Args:
        num_classes: number of findings.
        image_size: side of the square RGB input.
        weights: None (random initialisation), ``"imagenet"`` (downloads, needs internet), or the
            path of a DenseNet121 "notop" weight file such as the course's ``densenet.hdf5``.
    """
    base = keras.applications.DenseNet121(
        include_top=False,
        weights=None if weights is None else str(weights),
        input_shape=(image_size, image_size, 3),
    )
    features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
    outputs = keras.layers.Dense(num_classes, activation="sigmoid", name="predictions")(features)
    return keras.Model(base.input, outputs, name="densenet121_cxr")


def _weighted_layer_count(model: keras.Model) -> int:
    return sum(1 for layer in model.layers if layer.weights)


def _legacy_weighted_layer_count(path: Path) -> int:
    with h5py.File(path, "r") as file:
        group = file["model_weights"] if "layer_names" not in file.attrs and "model_weights" in file else file
        if "layer_names" not in group.attrs:
            raise ValueError("no 'layer_names' attribute")
        names = [name.decode() if isinstance(name, bytes) else name for name in group.attrs["layer_names"]]
        return sum(1 for name in names if len(group[name].attrs.get("weight_names", [])) > 0)


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
    "notop" file (the course's ``densenet.hdf5``), which fills the convolutional base and leaves
    the classifier as initialised.

    Raises:
        FileNotFoundError, ValueError: naming the file and the format expected.
    """
    path = check_weight_file(path)
    expected = _weighted_layer_count(model)
    try:
        if path.name.endswith(".weights.h5"):
            model.load_weights(path)
            return model
        found = _legacy_weighted_layer_count(path)
        if found == expected:
            model.load_weights(path)
        elif found == expected - 1:
            # A base without the classifier: load it into a bare DenseNet121 and copy layer by layer.
            base = keras.applications.DenseNet121(include_top=False, weights=str(path), input_shape=model.input_shape[1:])
            for source, target in zip(base.layers, model.layers):
                target.set_weights(source.get_weights())
        else:
            raise ValueError(f"it has {found} layers with weights, the model {expected} (or {expected - 1} without the classifier)")
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


def load_shipped_model(prefix: str | Path) -> tuple[keras.Model, dict, tuple[float, float] | str]:
    """Build and load a model exported by ``export_model.py`` from ``PREFIX.weights.h5`` and ``PREFIX.json``.

    Returns:
        model; its card (labels, image_size, thresholds, ...); and the standardisation to use at
        inference: the training (mean, std) or ``cxr.pipeline.PER_IMAGE``.
    """
    prefix = Path(prefix)
    card_path = prefix.with_name(prefix.name + ".json")
    if not card_path.is_file():
        raise FileNotFoundError(f"Model card {card_path} not found: export a run with `python export_model.py`.")
    card = json.loads(card_path.read_text())
    network = build_densenet121(len(card["labels"]), card["image_size"])
    load_pretrained_weights(network, prefix.with_name(prefix.name + ".weights.h5"))
    return network, card, inference_statistics(card)


def inference_statistics(card: dict) -> tuple[float, float] | str:
    """How a shipped model's inputs are standardised: the training (mean, std), or ``"per-image"``."""
    if card.get("standardisation", TRAINING_STATISTICS) == TRAINING_STATISTICS:
        return (float(card["normalisation"]["mean"]), float(card["normalisation"]["std"]))
    return card["standardisation"]
