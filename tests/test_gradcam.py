"""GradCAM heatmaps, agreement with bounding boxes, localisation scores and the GradCAM figure.

Most checks use a hand-wired 16x16 model whose answer is known: its "relu" layer has a channel
that is bright where the image is bright (class "bright") and one bright where the image is dark
(class "dark"). DenseNet121 is built once at 64 px for the real architecture.
"""

from __future__ import annotations

import keras
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cxr import config, gradcam, plots
from cxr.inference import standardise
from cxr.model import LAST_CONV_LAYER, build_densenet121

SIZE = 16
LABELS = ("bright", "dark")
STATISTICS = (127.5, 127.5)
# The bright square, rows and columns 2..5, as a box in 16-px and in the boxes' 1024-px coordinates.
BLOB_BOX = (2.0, 2.0, 4.0, 4.0)
BLOB_BOX_1024 = tuple(value * 1024 / SIZE for value in BLOB_BOX)


def wired_model(class_weight: float = 1.0, upside_down: bool = False) -> keras.Model:
    """relu channel 0 = relu(image), channel 1 = relu(-image); class i reads channel i.

    ``upside_down``: a layer "flipped" after "relu" holds its maps upside down (the classes are the same).
    """
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")(inputs)
    activations = keras.layers.Activation("relu", name="relu")(features)
    if upside_down:
        activations = keras.layers.Lambda(lambda maps: keras.ops.flip(maps, axis=1), name="flipped")(activations)
    pooled = keras.layers.GlobalAveragePooling2D()(activations)
    outputs = keras.layers.Dense(2, activation="sigmoid", name="predictions")(pooled)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[..., 0], kernel[..., 1] = 1 / 3, -1 / 3
    model.get_layer("conv").set_weights([kernel])
    model.get_layer("predictions").set_weights([np.eye(2, dtype=np.float32) * class_weight, np.zeros(2, np.float32)])
    return model


def blob_image() -> np.ndarray:
    """(16, 16) uint8: black with a white 4x4 square at rows/columns 2..5."""
    image = np.zeros((SIZE, SIZE), np.uint8)
    image[2:6, 2:6] = 255
    return image


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return wired_model()


@pytest.fixture(scope="module")
def model_input() -> np.ndarray:
    return standardise(blob_image()[np.newaxis], STATISTICS)[0]


@pytest.fixture(scope="module")
def densenet() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_densenet121(len(config.LABELS), 64)


# --- heatmaps ------------------------------------------------------------------------------------


def test_heatmap_points_at_the_evidence_of_each_class(model, model_input):
    bright, bright_vanished = gradcam.gradcam_heatmap(model, model_input, 0)
    dark, dark_vanished = gradcam.gradcam_heatmap(model, model_input, 1)
    blob = np.zeros((SIZE, SIZE), bool)
    blob[2:6, 2:6] = True
    assert not bright_vanished and not dark_vanished
    np.testing.assert_allclose(bright, blob.astype(np.float32), atol=1e-6)
    np.testing.assert_allclose(dark, (~blob).astype(np.float32), atol=1e-6)


@pytest.mark.parametrize("class_index", range(3))
def test_densenet_heatmap_shape_range_and_finiteness(densenet, class_index):
    image = np.random.default_rng(class_index).normal(size=(64, 64, 3)).astype(np.float32)
    heatmap, vanished = gradcam.gradcam_heatmap(densenet, image, class_index, LAST_CONV_LAYER)
    assert heatmap.shape == (64, 64) and heatmap.dtype == np.float32
    assert np.isfinite(heatmap).all()
    assert heatmap.min() >= 0 and heatmap.max() <= 1
    assert heatmap.max() == pytest.approx(0.0 if vanished else 1.0)


def test_densenet_classes_give_different_maps(densenet):
    image = np.random.default_rng(0).normal(size=(64, 64, 3)).astype(np.float32)
    maps = [gradcam.gradcam_heatmap(densenet, image, index)[0] for index in range(len(config.LABELS))]
    assert any(not np.allclose(maps[0], other) for other in maps[1:])


def test_gradient_model_is_built_once_per_model_and_layer(model, model_input):
    first = gradcam._gradient_function(model, ("relu",))
    gradcam.gradcam_heatmap(model, model_input, 0)
    gradcam.gradcam_heatmap(model, model_input, 1)
    assert gradcam._gradient_function(model, ("relu",)) is first
    assert gradcam._gradient_function(model, ("conv",)) is not first


def test_heatmaps_of_several_layers_in_one_pass_are_each_layers_own(model_input):
    # "flipped" holds "relu"'s maps upside down, so a map given to the wrong layer would show.
    model = wired_model(upside_down=True)
    together = gradcam.gradcam_heatmaps(model, model_input, 0, ("flipped", "relu"))
    assert not np.allclose(together["flipped"][0], together["relu"][0])
    np.testing.assert_allclose(together["flipped"][0], together["relu"][0][::-1], atol=1e-6)
    for layer in ("flipped", "relu"):
        alone, vanished = gradcam.gradcam_heatmap(model, model_input, 0, layer)
        np.testing.assert_allclose(together[layer][0], alone, atol=1e-6)
        assert together[layer][1] == vanished


def test_choose_layer_needs_a_candidate(model, model_input):
    with pytest.raises(ValueError, match="at least one candidate layer"):
        gradcam.choose_layer(model, pd.DataFrame({"Image": ["one.png"]}), blob_image()[np.newaxis], STATISTICS,
                             LABELS, pd.DataFrame(columns=["Image", "Finding", "x", "y", "w", "h"]), layers=())


def test_zero_classifier_weights_vanish_without_nan(model_input):
    heatmap, vanished = gradcam.gradcam_heatmap(wired_model(class_weight=0.0), model_input, 0)
    assert vanished
    assert heatmap.shape == (SIZE, SIZE) and not heatmap.any() and np.isfinite(heatmap).all()


def test_output_that_ignores_the_layer_vanishes(model_input):
    # The head sees the "relu" maps through stop_gradient: no gradient reaches the layer at all.
    inputs = keras.Input((SIZE, SIZE, 3))
    activations = keras.layers.Activation("relu", name="relu")(keras.layers.Conv2D(2, 1)(inputs))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.ops.stop_gradient(activations))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="sigmoid")(pooled))
    heatmap, vanished = gradcam.gradcam_heatmap(model, model_input, 1)
    assert vanished and not heatmap.any() and np.isfinite(heatmap).all()


def test_no_positive_evidence_vanishes(model):
    # A uniform image at the mean: both channels are 0 everywhere.
    flat = standardise(np.full((1, SIZE, SIZE), 127, np.uint8), (127.0, 1.0))[0]
    heatmap, vanished = gradcam.gradcam_heatmap(model, flat, 0)
    assert vanished and not heatmap.any()


@pytest.mark.parametrize(
    "image, class_index, layer, message",
    [
        (np.zeros((SIZE, SIZE)), 0, "relu", "one"),
        (np.zeros((SIZE, SIZE, 3)), 2, "relu", "outside"),
        (np.zeros((SIZE, SIZE, 3)), 0, "no_such_layer", "no layer"),
        (np.full((SIZE, SIZE, 3), np.nan), 0, "relu", "NaN"),
    ],
)
def test_heatmap_bad_input_raises(model, image, class_index, layer, message):
    with pytest.raises(ValueError, match=message):
        gradcam.gradcam_heatmap(model, image, class_index, layer)


# --- boxes ---------------------------------------------------------------------------------------


def test_scale_box_arithmetic():
    box = (100.0, 200.0, 50.0, 80.0)
    assert gradcam.scale_box(box, 1024, 512) == (50.0, 100.0, 25.0, 40.0)
    assert gradcam.scale_box(box, 1024, 128) == (12.5, 25.0, 6.25, 10.0)
    row = pd.Series({"Image": "a.png", "Finding": "Mass", "x": 100.0, "y": 200.0, "w": 50.0, "h": 80.0})
    assert gradcam.scale_box(row, 1024, 512) == (50.0, 100.0, 25.0, 40.0)
    with pytest.raises(ValueError):
        gradcam.scale_box((1, 2, 3), 1024, 512)


def hand_heatmap() -> np.ndarray:
    """8x8: 0.6 on rows 2..3, columns 2..5 (8 pixels), its peak 0.9 at row 3, column 4."""
    heatmap = np.zeros((8, 8))
    heatmap[2:4, 2:6] = 0.6
    heatmap[3, 4] = 0.9
    return heatmap


def test_pointing_game_by_hand():
    assert gradcam.pointing_game_hit(hand_heatmap(), (4, 3, 1, 1))  # the peak's pixel exactly
    assert gradcam.pointing_game_hit(hand_heatmap(), (1, 1, 6, 4))
    assert not gradcam.pointing_game_hit(hand_heatmap(), (0, 0, 4, 3))  # part of the region, not its peak
    assert not gradcam.pointing_game_hit(np.zeros((8, 8)), (0, 0, 8, 8))  # a flat map points nowhere


def test_iou_by_hand():
    # The box covers rows 1..4 and columns 1..6 (24 pixels), containing the 8-pixel region.
    assert gradcam.box_iou(hand_heatmap(), (1, 1, 6, 4)) == pytest.approx(8 / 24)
    # Exactly the region.
    assert gradcam.box_iou(hand_heatmap(), (2, 2, 4, 2)) == pytest.approx(1.0)
    # Columns 0..3 of rows 2..3: 4 pixels shared, union 8 + 8 - 4.
    assert gradcam.box_iou(hand_heatmap(), (0, 2, 4, 2)) == pytest.approx(4 / 12)
    # Only the peak is >= 0.8.
    assert gradcam.box_iou(hand_heatmap(), (4, 3, 1, 1), threshold=0.8) == pytest.approx(1.0)
    assert gradcam.box_iou(np.zeros((8, 8)), (0, 0, 2, 2)) == 0.0


def test_box_on_a_bad_heatmap_raises():
    with pytest.raises(ValueError, match="heatmap"):
        gradcam.box_iou(np.zeros(8), (0, 0, 1, 1))
    with pytest.raises(ValueError, match="non-negative"):
        gradcam.pointing_game_hit(hand_heatmap(), (0, 0, -1, 1))


# --- localisation --------------------------------------------------------------------------------


def test_localisation_scores_and_summary(model):
    images = np.stack([blob_image(), blob_image(), np.zeros((SIZE, SIZE), np.uint8)])
    frame = pd.DataFrame({"Image": ["one.png", "two.png", "three.png"]})
    boxes = pd.DataFrame(
        [
            ("one.png", "bright", *BLOB_BOX_1024),
            ("two.png", "bright", 640.0, 640.0, 256.0, 256.0),  # far from the blob
            ("two.png", "dark", 640.0, 640.0, 256.0, 256.0),
            ("elsewhere.png", "bright", 0.0, 0.0, 10.0, 10.0),  # not in the split
        ],
        columns=["Image", "Finding", "x", "y", "w", "h"],
    )
    scores = gradcam.localisation_scores(model, frame, images, STATISTICS, LABELS, boxes)
    assert len(scores) == 3
    one = scores[scores["Image"] == "one.png"].iloc[0]
    assert one["hit"] and one["IoU"] == pytest.approx(1.0) and not one["vanished"]
    assert (one["x"], one["y"], one["w"], one["h"]) == BLOB_BOX
    two_bright = scores[(scores["Image"] == "two.png") & (scores["Finding"] == "bright")].iloc[0]
    assert not two_bright["hit"] and two_bright["IoU"] == 0.0
    two_dark = scores[(scores["Image"] == "two.png") & (scores["Finding"] == "dark")].iloc[0]
    # The "dark" map is everything but the blob (240 pixels); the box is 4x4 inside it.
    assert two_dark["IoU"] == pytest.approx(16 / 240)
    assert scores["random point hit"].tolist() == pytest.approx([16 / 256] * 3)  # a 4x4 box on 16x16

    summary = gradcam.summarise_localisation(scores)
    assert list(summary.index) == ["bright", "dark", "All"]
    assert summary.loc["bright", "boxes"] == 2 and summary.loc["bright", "hit rate"] == 0.5
    assert summary.loc["All", "boxes"] == 3 and summary.loc["All", "images"] == 2
    assert summary.loc["All", "mean IoU"] == pytest.approx((1 + 0 + 16 / 240) / 3)


def test_pointing_baselines_are_the_boxs_share_of_the_image_and_whether_it_holds_the_centre():
    assert gradcam.pointing_baselines((0, 0, 4, 4), 8) == {"random point hit": 0.25, "centre hit": 0.0}
    assert gradcam.pointing_baselines((2, 2, 4, 4), 8) == {"random point hit": 0.25, "centre hit": 1.0}


def test_localisation_summary_puts_the_baselines_beside_the_hit_rate(model):
    images = np.stack([blob_image(), blob_image()])
    frame = pd.DataFrame({"Image": ["one.png", "two.png"]})
    boxes = pd.DataFrame([("one.png", "bright", *BLOB_BOX_1024), ("two.png", "bright", 0.0, 0.0, 512.0, 512.0)],
                         columns=["Image", "Finding", "x", "y", "w", "h"])  # fmt: skip
    scores = gradcam.localisation_scores(model, frame, images, STATISTICS, LABELS, boxes)
    expected = [gradcam.pointing_baselines(row[["x", "y", "w", "h"]], SIZE) for _, row in scores.iterrows()]
    summary = gradcam.summarise_localisation(scores).loc["All"]
    assert summary["random point hit rate"] == pytest.approx(np.mean([e["random point hit"] for e in expected]))
    assert summary["centre hit rate"] == pytest.approx(np.mean([e["centre hit"] for e in expected]))
    assert 0 < summary["random point hit rate"] < 1


def test_localisation_warns_about_findings_the_model_lacks(model):
    boxes = pd.DataFrame([("one.png", "Mass", 0.0, 0.0, 64.0, 64.0)], columns=["Image", "Finding", "x", "y", "w", "h"])
    with pytest.warns(UserWarning, match="Mass"):
        scores = gradcam.localisation_scores(
            model, pd.DataFrame({"Image": ["one.png"]}), blob_image()[np.newaxis], STATISTICS, LABELS, boxes
        )
    assert scores.empty
    assert gradcam.summarise_localisation(scores).loc["All", "boxes"] == 0


def test_localisation_rejects_images_of_the_wrong_size(model):
    with pytest.raises(ValueError, match="model expects"):
        gradcam.localisation_scores(model, pd.DataFrame({"Image": ["a"]}), np.zeros((1, 8, 8), np.uint8),
                                    STATISTICS, LABELS, pd.DataFrame(columns=["Image", "Finding", "x", "y", "w", "h"]))


def test_choose_layer_picks_the_layer_that_points_inside_the_boxes(model):
    frame = pd.DataFrame({"Image": ["one.png"]})
    boxes = pd.DataFrame([("one.png", "bright", *BLOB_BOX_1024)], columns=["Image", "Finding", "x", "y", "w", "h"])
    arguments = (frame, blob_image()[np.newaxis], STATISTICS, LABELS, boxes)

    # GradCAM on the upside-down maps misses the blob; on the maps before the flip it hits.
    best, rates = gradcam.choose_layer(wired_model(upside_down=True), *arguments, layers=("flipped", "relu"))
    assert (best, rates) == ("relu", {"flipped": 0.0, "relu": 1.0})
    # Ties go to the layer listed first.
    assert gradcam.choose_layer(model, *arguments, layers=("relu", "conv"))[0] == "relu"
    assert gradcam.choose_layer(model, *arguments, layers=("conv", "relu"))[0] == "conv"
    with pytest.raises(gradcam.NoBoxes, match="no layer to choose"):
        gradcam.choose_layer(model, frame, blob_image()[np.newaxis], STATISTICS, LABELS, boxes.iloc[:0])


def test_pointing_margin_is_the_paired_difference_from_a_baseline_with_an_interval_over_patients():
    scores = pd.DataFrame({"hit": [True, True, False, False, True, False],
                           "centre hit": [0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                           "random point hit": [0.1, 0.1, 0.2, 0.2, 0.1, 0.1]})  # fmt: skip
    margin, low, high = gradcam.pointing_margin(scores, ["a", "a", "b", "b", "c", "c"])
    assert margin == pytest.approx((3 - 2) / 6) and low <= margin <= high
    assert gradcam.pointing_margin(scores, list("abcdef"), "random point hit")[0] == pytest.approx(0.5 - 0.8 / 6)
    with pytest.raises(ValueError, match="baseline must be"):
        gradcam.pointing_margin(scores, list("abcdef"), "hit")


def test_every_candidate_layer_exists_in_densenet121(densenet):
    grids = [densenet.get_layer(layer).output.shape[1] for layer in gradcam.CANDIDATE_LAYERS]
    assert grids == [2, 4, 8]  # at 64 px: input/32, /16, /8


# --- figure --------------------------------------------------------------------------------------


def test_explain_findings_keeps_each_findings_boxes_in_image_pixels(model):
    boxes = pd.DataFrame([("one.png", "bright", *BLOB_BOX_1024)], columns=["Image", "Finding", "x", "y", "w", "h"])
    explanations = gradcam.explain_findings(model, blob_image(), STATISTICS, LABELS, ["bright", "dark"], boxes=boxes)
    assert [explanation.finding for explanation in explanations] == ["bright", "dark"]
    assert explanations[0].boxes == (BLOB_BOX,) and explanations[1].boxes == ()
    assert explanations[0].heatmap.shape == (SIZE, SIZE) and 0 <= explanations[0].probability <= 1


def test_explain_findings_reports_the_probabilities_it_is_given(model):
    explanations = gradcam.explain_findings(model, blob_image(), STATISTICS, LABELS, ["dark"],
                                            probabilities=np.array([0.1, 0.7]))
    assert explanations[0].probability == pytest.approx(0.7)


def test_plot_gradcam_returns_a_figure_with_a_panel_per_finding(model):
    boxes = pd.DataFrame([("one.png", "bright", *BLOB_BOX_1024)], columns=["Image", "Finding", "x", "y", "w", "h"])
    explanations = gradcam.explain_findings(model, blob_image(), STATISTICS, LABELS, ["bright", "dark"], boxes=boxes)
    figure = plots.plot_gradcam(blob_image(), explanations)
    try:
        assert isinstance(figure, plt.Figure)
        assert len(figure.axes) == 3
        assert figure.axes[1].get_title().startswith("bright: p=0.")
        assert len(figure.axes[1].patches) == 1 and len(figure.axes[2].patches) == 0
    finally:
        plt.close(figure)


def test_explain_findings_rejects_unknown_findings(model):
    with pytest.raises(ValueError, match="unknown"):
        gradcam.explain_findings(model, blob_image(), STATISTICS, LABELS, ["Mass"])
