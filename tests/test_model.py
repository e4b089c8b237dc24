"""DenseNet121 construction and loading weights from every supported file format.

Models are built at 32x32 input to stay fast; every weight file is written by the tests themselves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr import config
from cxr.fast_layers import FusedBatchNormalization, native_bfloat16, resolve_precision
from cxr.inference import load_shipped_model
from cxr.model import LAST_CONV_LAYER, build_densenet121, load_pretrained_weights

SIZE = 32


def _perturb(network: keras.Model, seed: int) -> None:
    """Move every variable (batch-norm statistics included) away from its initial value.

    Freshly built models share their batch-norm statistics (mean 0, variance 1), so without this a
    loader that skipped them would go unnoticed.
    """
    rng = np.random.default_rng(seed)
    values = []
    for variable, value in zip(network.weights, network.get_weights()):
        noise = rng.normal(scale=0.05, size=value.shape).astype(value.dtype)
        if "variance" in variable.path:
            noise = np.abs(noise)
        values.append(value + noise)
    network.set_weights(values)


def _weights(network: keras.Model) -> list[np.ndarray]:
    return network.get_weights()


def _predict(network: keras.Model, images: np.ndarray) -> np.ndarray:
    """One eager forward pass (no tf.function tracing, unlike ``predict``)."""
    return keras.ops.convert_to_numpy(network(images, training=False))


def _layer_weights(layers) -> list[np.ndarray]:
    return [value for layer in layers for value in layer.get_weights()]


def _assert_all_equal(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def model14() -> keras.Model:
    """A 14-output model that tests only read."""
    return build_densenet121(len(config.LABELS), SIZE)


@pytest.fixture(scope="module")
def model4() -> keras.Model:
    return build_densenet121(len(config.FOUR_CLASS_LABELS), SIZE)


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(scope="module")
def source() -> keras.Model:
    """A 14-output model whose every weight differs from a fresh model's: the weights to load."""
    network = build_densenet121(len(config.LABELS), SIZE)
    _perturb(network, seed=1)
    return network


@pytest.fixture(scope="module")
def source_predictions(source, inputs) -> np.ndarray:
    return _predict(source, inputs)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory, source, model4) -> dict[str, Path]:
    """Every kind of file the loader is given, written once for the module."""
    folder = tmp_path_factory.mktemp("weights")
    files = {
        "keras3": folder / "model.weights.h5",
        "float16": folder / "model-float16.weights.h5",
        "legacy": folder / "model.h5",
        "notop": folder / "densenet-notop.h5",
        "keras3_notop": folder / "densenet-notop.weights.h5",
        "keras3_renamed": folder / "shipped-renamed.h5",
        "legacy_renamed": folder / "legacy-renamed.weights.h5",
        "four_class_keras3": folder / "four.weights.h5",
        "four_class_legacy": folder / "four.h5",
        "unrelated_legacy": folder / "small.h5",
    }
    source.save_weights(files["keras3"])
    _copy_as_float16(files["keras3"], files["float16"])
    source.save(files["legacy"])  # Keras 3 writes the legacy Keras 2 format for a plain ".h5"
    base = keras.Model(source.input, source.get_layer(LAST_CONV_LAYER).output)
    base.save(files["notop"])
    base.save_weights(files["keras3_notop"])
    shutil.copy(files["keras3"], files["keras3_renamed"])
    shutil.copy(files["legacy"], files["legacy_renamed"])
    model4.save_weights(files["four_class_keras3"])
    model4.save(files["four_class_legacy"])
    small = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    small.save(files["unrelated_legacy"])
    return files


def _copy_as_float16(source: Path, target: Path) -> None:
    """Copy an HDF5 file, its groups and attributes, storing every float dataset as float16."""
    with h5py.File(source, "r") as original, h5py.File(target, "w") as copy:
        copy.attrs.update(dict(original.attrs))

        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                values = item[()]
                if item.dtype.kind == "f":
                    values = values.astype(np.float16)
                dataset = copy.create_dataset(name, data=values)
                dataset.attrs.update(dict(item.attrs))
            else:
                copy.require_group(name).attrs.update(dict(item.attrs))

        original.visititems(visit)
    with h5py.File(target, "r") as written:
        dtypes = set()
        written.visititems(lambda _, item: dtypes.add(item.dtype) if isinstance(item, h5py.Dataset) else None)
    assert dtypes == {np.dtype(np.float16)}, dtypes


# --- build_densenet121 ---------------------------------------------------------------------------


def test_model_has_one_output_per_finding(model14):
    assert model14.input_shape == (None, SIZE, SIZE, 3)
    assert model14.output_shape == (None, 14)


def test_outputs_are_sigmoid_probabilities(model14):
    assert model14.get_layer("predictions").activation is keras.activations.sigmoid
    rng = np.random.default_rng(1)
    extreme = rng.normal(scale=100.0, size=(3, SIZE, SIZE, 3)).astype("float32")
    probabilities = _predict(model14, extreme)
    assert probabilities.shape == (3, 14)
    assert np.all(np.isfinite(probabilities))
    assert np.all((probabilities >= 0.0) & (probabilities <= 1.0))


def test_relu_layer_is_the_last_convolutional_activation(model14):
    relu = model14.get_layer(LAST_CONV_LAYER)
    assert isinstance(relu, keras.layers.Activation)
    assert len(relu.output.shape) == 4  # (batch, height, width, channels): a feature map for GradCAM
    assert relu.output.shape[-1] == 1024
    position = model14.layers.index(relu)
    after = model14.layers[position + 1 :]
    assert [layer.name for layer in after] == ["avg_pool", "predictions"]
    assert not any(isinstance(layer, keras.layers.Conv2D) for layer in after)
    # The graph is flat: the feature map is reachable from the model's own input.
    features = keras.Model(model14.input, relu.output)
    assert features.output_shape == (None, 1, 1, 1024)


def test_four_class_variant_has_four_outputs(model4):
    assert model4.output_shape == (None, 4)
    assert model4.get_layer("relu").output.shape[-1] == 1024


@pytest.mark.slow
def test_mixed_bfloat16_computes_in_bfloat16_keeps_float32_weights_and_a_float32_head(tmp_path, model14):
    policy_before = keras.config.dtype_policy().name
    mixed = build_densenet121(len(config.LABELS), SIZE, precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == policy_before, "the global policy must be restored"
    assert mixed.get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert mixed.get_layer("predictions").compute_dtype == "float32"
    assert {variable.dtype for variable in mixed.weights} == {"float32"}
    assert build_densenet121(3, SIZE).get_layer("conv1_conv").compute_dtype == "float32"
    # Its weights are an ordinary float32 file for the float32 model used at inference.
    _perturb(mixed, seed=3)
    mixed.save_weights(tmp_path / "mixed.weights.h5")
    float32 = build_densenet121(len(config.LABELS), SIZE)
    load_pretrained_weights(float32, tmp_path / "mixed.weights.h5")
    _assert_all_equal(_weights(float32), _weights(mixed))


def test_precision_auto_is_bfloat16_exactly_where_the_hardware_computes_it_natively():
    assert resolve_precision("auto") == ("mixed_bfloat16" if native_bfloat16() else "float32")
    assert resolve_precision("float32") == "float32"
    with pytest.raises(ValueError, match="precision must be one of.*'float16'"):
        resolve_precision("float16")


# --- FusedBatchNormalization ------------------------------------------------------------------------


def _batch_norm_pair(epsilon: float = 1.001e-5, dtype: str = "float32"):
    """A Keras BatchNormalization and a FusedBatchNormalization with the same non-trivial weights."""
    plain = keras.layers.BatchNormalization(epsilon=epsilon, momentum=0.9, dtype=dtype)
    fused = FusedBatchNormalization(epsilon=epsilon, momentum=0.9, dtype=dtype)
    rng = np.random.default_rng(0)
    for layer in (plain, fused):
        layer.build((None, 6, 6, 5))
    weights = [rng.normal(1, 0.3, 5), rng.normal(0, 0.3, 5), rng.normal(0, 0.5, 5), rng.uniform(0.5, 2, 5)]
    plain.set_weights([w.astype("float32") for w in weights])
    fused.set_weights([w.astype("float32") for w in weights])
    return plain, fused


def _call_with_gradients(layer, inputs, training):
    """Output, gradients of a fixed weighting of the output w.r.t. input, gamma and beta, and moving stats."""
    inputs = tf.constant(inputs)
    weighting = tf.constant(np.random.default_rng(1).normal(size=inputs.shape), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        output = layer(inputs, training=training)
        objective = tf.reduce_sum(tf.cast(output, tf.float32) * weighting)
    gradients = tape.gradient(objective, [inputs, layer.gamma, layer.beta])
    return [np.asarray(tf.cast(t, tf.float32)) for t in [output, *gradients, layer.moving_mean, layer.moving_variance]]


@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_matches_keras_in_output_gradients_and_moving_statistics(training):
    plain, fused = _batch_norm_pair()
    inputs = np.random.default_rng(2).normal(0.5, 2.0, size=(8, 6, 6, 5)).astype("float32")
    for _ in range(2):  # the second call starts from the moving statistics the first one updated
        expected, actual = _call_with_gradients(plain, inputs, training), _call_with_gradients(fused, inputs, training)
        for name, want, got in zip(["output", "d input", "d gamma", "d beta", "moving mean", "moving variance"],
                                   expected, actual):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
    moved = not np.allclose(fused.moving_mean.numpy(), _batch_norm_pair()[1].moving_mean.numpy())
    assert moved == training, "moving statistics change in training only"


def test_fused_batch_norm_takes_bfloat16_like_keras_mixed_precision():
    plain, fused = _batch_norm_pair(dtype="mixed_bfloat16")
    inputs = np.random.default_rng(3).normal(0.5, 2.0, size=(8, 6, 6, 5)).astype("float32")
    expected, actual = _call_with_gradients(plain, inputs, True), _call_with_gradients(fused, inputs, True)
    assert fused(tf.constant(inputs), training=True).dtype == tf.bfloat16
    for want, got in zip(expected, actual):
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


def test_fused_batch_norm_falls_back_to_keras_where_the_fused_op_does_not_apply():
    plain, fused = _batch_norm_pair(epsilon=1e-6)  # below the fused op's minimum epsilon
    inputs = np.random.default_rng(4).normal(size=(8, 6, 6, 5)).astype("float32")
    np.testing.assert_array_equal(fused(inputs, training=True), plain(inputs, training=True))
    flat_plain, flat_fused = keras.layers.BatchNormalization(), FusedBatchNormalization()  # 2-D input
    flat = inputs.reshape(-1, 5)
    np.testing.assert_array_equal(flat_fused(flat, training=True), flat_plain(flat, training=True))


@pytest.mark.slow
def test_densenet_uses_fused_batch_norm_and_reads_weights_saved_from_plain_keras_layers(tmp_path, inputs):
    network = build_densenet121(len(config.LABELS), SIZE)
    kinds = {type(layer) for layer in network.layers}
    assert FusedBatchNormalization in kinds and keras.layers.BatchNormalization not in kinds
    assert sum(type(layer) is FusedBatchNormalization for layer in network.layers) == 121
    # The shipped weights were saved from plain Keras layers of the same names.
    plain = build_densenet121(len(config.LABELS), SIZE, fuse_batch_norm=False)
    assert keras.layers.BatchNormalization in {type(layer) for layer in plain.layers}
    _perturb(plain, seed=4)
    plain.save_weights(tmp_path / "plain.weights.h5")
    load_pretrained_weights(network, tmp_path / "plain.weights.h5")
    _assert_all_equal(_weights(network), _weights(plain))
    np.testing.assert_allclose(_predict(network, inputs), _predict(plain, inputs), atol=1e-5)


@pytest.mark.slow
def test_dropout_before_the_head_trains_only_and_shares_the_weight_files(tmp_path, inputs):
    dropped = build_densenet121(len(config.LABELS), SIZE, dropout=0.5)
    assert dropped.get_layer("head_dropout").rate == 0.5
    _perturb(dropped, seed=5)
    dropped.save_weights(tmp_path / "dropout.weights.h5")
    plain = load_pretrained_weights(build_densenet121(len(config.LABELS), SIZE), tmp_path / "dropout.weights.h5")
    _assert_all_equal(_weights(plain), _weights(dropped))
    np.testing.assert_allclose(_predict(plain, inputs), _predict(dropped, inputs), atol=1e-6)  # inference: no dropout
    features = keras.Model(dropped.input, dropped.get_layer("head_dropout").output)
    assert not np.allclose(features(inputs, training=True), features(inputs, training=False))


@pytest.mark.slow
def test_synchronized_batch_norms_share_the_weight_files_and_the_results(tmp_path, source, inputs):
    synchronized = build_densenet121(len(config.LABELS), SIZE, synchronized_batch_norm=True)
    norms = [layer for layer in synchronized.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 121 and all(layer.synchronized for layer in norms)
    source.save_weights(tmp_path / "source.weights.h5")
    load_pretrained_weights(synchronized, tmp_path / "source.weights.h5")
    np.testing.assert_allclose(_predict(synchronized, inputs), _predict(source, inputs), atol=1e-5)
    # Outside a distribution strategy there is one replica: a training step matches the fused layers',
    # moving averages included (on copies: a training step updates them).
    fused = load_pretrained_weights(build_densenet121(len(config.LABELS), SIZE), tmp_path / "source.weights.h5")
    batch = keras.ops.convert_to_tensor(inputs)
    np.testing.assert_allclose(synchronized(batch, training=True), fused(batch, training=True), atol=1e-4)
    for got, want in zip(_weights(synchronized), _weights(fused), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_input_size_is_configurable():
    network = build_densenet121(3, image_size=64)
    assert network.input_shape == (None, 64, 64, 3)
    assert network.output_shape == (None, 3)
    assert network.get_layer("relu").output.shape[1:3] == (2, 2)


def test_build_with_notop_file_fills_the_convolutional_base(source, weight_files):
    network = build_densenet121(14, SIZE, weights=weight_files["notop"])
    _assert_all_equal(_layer_weights(network.layers[:-2]), _layer_weights(source.layers[:-2]))


# --- load_pretrained_weights: accepted formats -----------------------------------------------------


def test_keras3_weights_file_gives_identical_predictions(source, weight_files, inputs, source_predictions):
    target = build_densenet121(14, SIZE)
    assert load_pretrained_weights(target, weight_files["keras3"]) is target
    _assert_all_equal(_weights(target), _weights(source))
    np.testing.assert_array_equal(_predict(target, inputs), source_predictions)


def test_float16_weights_file_loads_within_float16_precision(source, weight_files, inputs, source_predictions):
    target = build_densenet121(14, SIZE)
    load_pretrained_weights(target, str(weight_files["float16"]))  # a str path works too
    assert all(variable.dtype == "float32" for variable in target.weights)
    for got, want in zip(_weights(target), _weights(source)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(_predict(target, inputs), source_predictions, atol=1e-2)


def test_legacy_keras2_model_file_gives_identical_predictions(source, weight_files, inputs, source_predictions):
    with h5py.File(weight_files["legacy"], "r") as file:
        assert "model_weights" in file  # really the legacy full-model layout
    target = build_densenet121(14, SIZE)
    load_pretrained_weights(target, weight_files["legacy"])
    _assert_all_equal(_weights(target), _weights(source))
    np.testing.assert_array_equal(_predict(target, inputs), source_predictions)


@pytest.mark.parametrize("kind", ["notop", "keras3_notop"])
def test_notop_file_fills_the_base_and_leaves_the_classifier(source, weight_files, kind):
    target = build_densenet121(14, SIZE)
    classifier_before = target.get_layer("predictions").get_weights()
    load_pretrained_weights(target, weight_files[kind])
    assert [layer.name for layer in target.layers[-2:]] == ["avg_pool", "predictions"]
    _assert_all_equal(_layer_weights(target.layers[:-2]), _layer_weights(source.layers[:-2]))
    _assert_all_equal(target.get_layer("predictions").get_weights(), classifier_before)
    assert not np.array_equal(
        target.get_layer("predictions").get_weights()[0], source.get_layer("predictions").get_weights()[0]
    )


@pytest.mark.parametrize("kind", ["keras3_renamed", "legacy_renamed"])
def test_format_is_read_from_the_content_not_the_file_name(source, weight_files, inputs, source_predictions, kind):
    target = build_densenet121(14, SIZE)
    load_pretrained_weights(target, weight_files[kind])
    _assert_all_equal(_weights(target), _weights(source))
    np.testing.assert_array_equal(_predict(target, inputs), source_predictions)


# --- load_pretrained_weights: errors -----------------------------------------------------------------


def test_missing_file_raises_file_not_found_naming_it(model14, tmp_path):
    missing = tmp_path / "nowhere.weights.h5"
    with pytest.raises(FileNotFoundError, match="nowhere.weights.h5"):
        load_pretrained_weights(model14, missing)


def test_text_file_raises_not_hdf5_naming_it(model14, tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("these are not weights\n")
    with pytest.raises(ValueError, match="not an HDF5 file") as caught:
        load_pretrained_weights(model14, text)
    assert str(text) in str(caught.value)


def test_git_lfs_pointer_is_recognised(model14, tmp_path):
    pointer = tmp_path / "pretrained_model.h5"
    pointer.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 28530840\n"
    )
    with pytest.raises(ValueError, match="Git LFS") as caught:
        load_pretrained_weights(model14, pointer)
    assert str(pointer) in str(caught.value)
    assert "git lfs pull" in str(caught.value)


@pytest.mark.parametrize("kind", ["four_class_keras3", "four_class_legacy"])
def test_weights_of_other_label_set_raise_naming_file_and_expected_format(model14, weight_files, kind):
    path = weight_files[kind]
    with pytest.raises(ValueError) as caught:
        load_pretrained_weights(model14, path)
    message = str(caught.value)
    assert str(path) in message
    assert "14 outputs" in message
    assert "Expected a '.weights.h5'" in message


def test_unrelated_model_file_raises_naming_the_layer_counts(model14, weight_files):
    path = weight_files["unrelated_legacy"]
    with pytest.raises(ValueError) as caught:
        load_pretrained_weights(model14, path)
    message = str(caught.value)
    assert str(path) in message
    assert "2 layers with weights" in message


# --- load_shipped_model ----------------------------------------------------------------------------

CARD = {"labels": list(config.LABELS), "image_size": SIZE, "normalisation": {"mean": 128.0, "std": 60.0},
        "standardisation": "training-statistics"}  # fmt: skip


def _card_without(field: str) -> str:
    return json.dumps({key: value for key, value in CARD.items() if key != field})


CARD_PROBLEMS = {
    "bad JSON": (json.dumps(CARD)[:-1], "not valid JSON"),
    "no labels": (_card_without("labels"), "field 'labels' must be a non-empty list"),
    "no image_size": (_card_without("image_size"), "field 'image_size' must be a whole number of pixels"),
    "std 0": (json.dumps({**CARD, "normalisation": {"mean": 128.0, "std": 0}}),
              "field 'normalisation'.*positive 'std'"),
    "unknown standardisation": (json.dumps({**CARD, "standardisation": "per-batch"}),
                                "field 'standardisation' must be .*got 'per-batch'"),
}  # fmt: skip


def test_shipped_model_loads_its_weights_and_standardisation(tmp_path, source, weight_files):
    (tmp_path / "model.json").write_text(json.dumps(CARD))
    shutil.copy(weight_files["keras3"], tmp_path / "model.weights.h5")
    network, card, statistics = load_shipped_model(tmp_path / "model")
    assert card == CARD and statistics == (128.0, 60.0)
    _assert_all_equal(_weights(network), _weights(source))


@pytest.mark.parametrize("problem", CARD_PROBLEMS)
def test_shipped_model_card_is_checked_naming_the_file_and_the_field(tmp_path, weight_files, problem):
    text, expected = CARD_PROBLEMS[problem]
    (tmp_path / "model.json").write_text(text)
    shutil.copy(weight_files["keras3"], tmp_path / "model.weights.h5")
    with pytest.raises(ValueError, match=expected) as caught:
        load_shipped_model(tmp_path / "model")
    assert str(tmp_path / "model.json") in str(caught.value) and "export_model.py" in str(caught.value)
