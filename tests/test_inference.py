"""Inference: standardisation in NumPy and TensorFlow, the batched forward pass, and the shipped
model's save, load and checks of its JSON. Models are tiny, or DenseNet121 at 32 px."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr.calibration import calibrate
from cxr.images import to_model_size
from cxr.inference import (
    PER_IMAGE,
    TRAINING_STATISTICS,
    NotARadiograph,
    ShippedModel,
    check_standardisation,
    model_files,
    predict,
    read_card,
    standardise,
)
from cxr.model import build_densenet121

LABELS3 = ["A", "B", "C"]
SIZE = 32
CARD = {"labels": LABELS3, "image_size": SIZE, "normalisation": {"mean": 120.0, "std": 50.0},
        "standardisation": TRAINING_STATISTICS, "test_time_flip": True,
        "calibration": {"shift": {"A": 1.0, "B": 0.5, "C": -0.5}, "slope": {"A": 1.0, "B": 2.0, "C": 1.0},
                        "intercept": {"A": 0.0, "B": 0.1, "C": -0.1}},
        "thresholds": {"A": 0.3, "B": 1.0, "D": 0.1}, "thresholds_youden": {"A": 0.2, "B": 0.2, "C": 0.2},
        "auroc": {"test": {"A": 0.8}}}  # fmt: skip


# --- standardisation -----------------------------------------------------------------------------


@pytest.mark.parametrize("statistics", [(120.0, 50.0), PER_IMAGE], ids=["training-statistics", "per-image"])
def test_standardisation_gives_the_same_numbers_in_numpy_and_tensorflow(statistics):
    images = np.random.default_rng(0).integers(0, 256, (4, 9, 7), dtype=np.uint8)
    in_numpy = standardise(images, statistics)
    in_tensorflow = standardise(tf.constant(images), statistics)
    assert isinstance(in_numpy, np.ndarray) and tf.is_tensor(in_tensorflow)
    assert in_numpy.shape == (4, 9, 7, 3) and in_numpy.dtype == np.float32
    np.testing.assert_allclose(in_tensorflow.numpy(), in_numpy, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(in_numpy[..., 0], in_numpy[..., 2])
    if statistics == PER_IMAGE:
        np.testing.assert_allclose(in_numpy.mean(axis=(1, 2, 3)), 0, atol=1e-5)
        np.testing.assert_allclose(in_numpy.std(axis=(1, 2, 3)), 1, atol=1e-4)
    else:
        np.testing.assert_allclose(in_numpy[..., 0], (images - 120.0) / 50.0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("statistics", ["per-batch", (1.0, 0.0), (1.0, float("nan")), (1.0,), None])
def test_unusable_standardisation_is_refused(statistics):
    with pytest.raises(ValueError, match="statistics must be"):
        check_standardisation(statistics)
    if isinstance(statistics, str):
        with pytest.raises(ValueError, match="statistics must be"):
            standardise(np.zeros((1, 4, 4), np.uint8), statistics)


# --- the batched forward pass --------------------------------------------------------------------


def test_predict_standardises_like_validation():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="sigmoid"),
    ])
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    statistics = (120.0, 50.0)
    probabilities = predict(model, images, statistics, batch_size=2, verbose=0)
    assert probabilities.shape == (5, 3) and probabilities.dtype == np.float32
    expected = keras.ops.convert_to_numpy(model(standardise(images, statistics)))
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="model expects"):
        predict(model, images[:, :4, :4], statistics, verbose=0)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        predict(model, images[0], statistics, verbose=0)
    with pytest.raises(ValueError, match="non-empty"):
        predict(model, images[:0], statistics, verbose=0)


@pytest.mark.parametrize("statistics", [(120.0, 50.0), PER_IMAGE], ids=["training-statistics", "per-image"])
def test_predict_matches_plain_predict_of_densenet121(statistics):
    # The project's inference path against plain model.predict on the same standardised batch, for the
    # real architecture (batch norm, concatenations) at a small size, the last batch partial.
    keras.utils.set_random_seed(1)
    model = build_densenet121(num_classes=4, image_size=32)
    images = np.random.default_rng(1).integers(0, 256, (7, 32, 32), dtype=np.uint8)
    expected = model.predict(standardise(images, statistics), batch_size=3, verbose=0)
    probabilities = predict(model, images, statistics, batch_size=3, verbose=0)
    assert probabilities.shape == (7, 4) and probabilities.dtype == np.float32
    assert np.max(np.abs(probabilities - expected)) <= 1e-3


def test_predict_uses_weights_loaded_after_its_first_call():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="sigmoid")])
    images = np.random.default_rng(2).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    first = predict(model, images, PER_IMAGE, verbose=0)
    model.set_weights([weight + 0.5 for weight in model.get_weights()])
    again = predict(model, images, PER_IMAGE, verbose=0)
    expected = keras.ops.convert_to_numpy(model(standardise(images, PER_IMAGE)))
    assert not np.allclose(first, again)
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-6)
    # Pixels of another dtype (here float32 in the 0..255 scale) are taken as the uint8 ones were.
    as_float = predict(model, images.astype(np.float32), PER_IMAGE, verbose=0)
    np.testing.assert_allclose(as_float, again, rtol=1e-6, atol=1e-7)


# --- the shipped model's JSON ---------------------------------------------------------------------


def _without(field: str) -> dict:
    return {key: value for key, value in CARD.items() if key != field}


CARD_PROBLEMS = {
    "bad JSON": (json.dumps(CARD)[:-1], "not valid JSON"),
    "not an object": (json.dumps([CARD]), "expected a JSON object"),
    "missing labels": (json.dumps(_without("labels")), "field 'labels' must be a non-empty list"),
    "image too small": (json.dumps({**CARD, "image_size": 16}), "field 'image_size' must be .* at least 32"),
    "std 0": (json.dumps({**CARD, "normalisation": {"mean": 120.0, "std": 0}}),
              "field 'normalisation'.*positive 'std'"),
    "unknown standardisation": (json.dumps({**CARD, "standardisation": "per-batch"}),
                                "field 'standardisation' must be .*got 'per-batch'"),
    "GradCAM layer not a name": (json.dumps({**CARD, "gradcam_layer": 7}), "field 'gradcam_layer' must name a layer"),
    "negative blur": (json.dumps({**CARD, "blur": -1}), "field 'blur' must be .* 0 or more pixels, got -1"),
    "blur as text": (json.dumps({**CARD, "blur": "1px"}), "field 'blur' must be"),
    "test-time flip as text": (json.dumps({**CARD, "test_time_flip": "false"}),
                               "field 'test_time_flip' must be true or false, got 'false'"),
    "threshold above 1": (json.dumps({**CARD, "thresholds": {"A": 1.5}}),
                          r"field 'thresholds' must hold numbers from 0 to 1, got \{'A': 1.5\}"),
    "Youden thresholds not a table": (json.dumps({**CARD, "thresholds_youden": [0.5]}),
                                      "field 'thresholds_youden' must map findings to thresholds"),
    "calibration of too few labels": (json.dumps({**CARD, "calibration": {"shift": {"A": 0.0}}}),
                                      "field 'calibration' must hold"),
}  # fmt: skip


@pytest.mark.parametrize("problem", CARD_PROBLEMS)
def test_a_bad_card_is_refused_naming_the_file_the_field_and_what_to_do(tmp_path, problem):
    text, expected = CARD_PROBLEMS[problem]
    path = tmp_path / "model.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=expected) as caught:
        read_card(path)
    assert str(path) in str(caught.value) and "export_model.py" in str(caught.value)


def test_every_wrong_field_is_named_at_once_and_a_missing_card_is_named(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"labels": ["A"]}))
    with pytest.raises(ValueError, match="'image_size'.*'normalisation'"):
        read_card(tmp_path / "model.json")
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        ShippedModel.load(tmp_path / "nothing")


def test_model_files_accepts_a_prefix_or_either_file():
    for given in ("models/m", "models/m.json", "models/m.weights.h5"):
        assert model_files(given) == (Path("models/m.json"), Path("models/m.weights.h5"))


# --- the shipped model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def network() -> keras.Model:
    keras.utils.set_random_seed(3)
    return build_densenet121(len(LABELS3), SIZE)


def test_shipped_model_reads_its_fields_from_the_card(network):
    shipped = ShippedModel(network, CARD)
    fields = (shipped.labels, shipped.image_size, shipped.statistics, shipped.flip)
    assert fields == (LABELS3, SIZE, (120.0, 50.0), True)
    assert shipped.thresholds == {"A": 0.3, "B": 1.0}  # C has none (never flagged), D is no label of the model
    assert shipped.thresholds_for("youden") == CARD["thresholds_youden"]
    assert ShippedModel(network, _without("thresholds")).thresholds is None
    assert shipped.blur == 0.0  # a card from before the blur: none
    assert shipped.gradcam_layer == "relu"  # nor a chosen GradCAM layer: the last convolutional one
    assert ShippedModel(network, {**CARD, "gradcam_layer": "pool4_relu"}).gradcam_layer == "pool4_relu"
    with pytest.raises(ValueError, match="'gradcam_layer' names 'block9'"):
        ShippedModel(network, {**CARD, "gradcam_layer": "block9"})


@pytest.mark.parametrize(("pixels", "reason"), [(np.full((300, 300), 128, np.uint8), "has almost no contrast"),
                                                 (np.zeros((1, 400), np.uint8), "is 400 x 1 pixels")],
                         ids=["blank", "a line"])
def test_shipped_model_refuses_to_preprocess_what_cannot_be_a_radiograph(network, pixels, reason):
    with pytest.raises(NotARadiograph, match=reason):
        ShippedModel(network, CARD).preprocess(pixels)


def test_shipped_model_preprocesses_as_its_card_says_resized_then_blurred(network):
    large = np.random.default_rng(5).integers(0, 256, (300, 200), dtype=np.uint8)
    plain, blurred = ShippedModel(network, CARD), ShippedModel(network, {**CARD, "blur": 1.0})
    assert blurred.blur == 1.0
    np.testing.assert_array_equal(plain.preprocess(large), to_model_size(large, SIZE))
    np.testing.assert_array_equal(blurred.preprocess(large), to_model_size(large, SIZE, blur=1.0))
    assert not np.array_equal(plain.preprocess(large), blurred.preprocess(large))
    with pytest.raises(ValueError, match="2 findings at 32 px, the model 3"):
        ShippedModel(network, {**CARD, "labels": ["A", "B"], "calibration": None})


@pytest.mark.parametrize("float16", [False, True], ids=["float32", "float16"])
def test_save_then_load_gives_the_same_model_card_and_probabilities(tmp_path, network, float16):
    images = np.random.default_rng(4).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)
    saved = ShippedModel(network, CARD)
    card_path, weights_path = saved.save(tmp_path / "model", float16=float16)
    assert (card_path, weights_path) == model_files(tmp_path / "model")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.json", "model.weights.h5"]  # no partial file
    loaded = ShippedModel.load(tmp_path / "model.json")
    assert loaded.card == CARD
    tolerance = 2e-3 if float16 else 0
    for before, after in zip(network.get_weights(), loaded.model.get_weights()):
        np.testing.assert_allclose(after, before, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(loaded.probabilities(images), saved.probabilities(images),
                               atol=5e-3 if float16 else 1e-6)
    # The probabilities are the calibrated mean of each image's and its mirror image's outputs.
    scores = predict(network, images, (120.0, 50.0), verbose=0, flip=True)
    np.testing.assert_allclose(saved.probabilities(images), calibrate(scores, CARD["calibration"], LABELS3), atol=1e-6)


def test_load_reuses_a_given_model_and_refuses_one_the_card_does_not_describe(tmp_path, network):
    (tmp_path / "other.json").write_text(json.dumps({**CARD, "image_size": 64}))
    with pytest.raises(ValueError, match="other.json does not describe the given model"):
        ShippedModel.load(tmp_path / "other", model=network)
    (tmp_path / "same.json").write_text(json.dumps(CARD))
    assert ShippedModel.load(tmp_path / "same", model=network).model is network
