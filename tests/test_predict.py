"""predict.py with the shipped model: calibrated probabilities, flags, CSV, overlays and bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import predict
from cxr import calibration, config, images
from cxr.images import read_image
from cxr.inference import ShippedModel
from cxr.inference import predict as predict_scores

MODEL = config.SHIPPED_MODEL
# Each test runs predict.py on the shipped 224-px model: seconds to tens of seconds apiece.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def card():
    return json.loads(MODEL.with_suffix(".json").read_text())


@pytest.fixture
def folder(tmp_path, test_image):
    """A folder with two copies of a real test image, a corrupt PNG and a text file that is not an image."""
    shutil.copy(test_image, tmp_path / "a.png")
    shutil.copy(test_image, tmp_path / "b.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "notes.txt").write_text("not an image, and not a .png either")
    return tmp_path


def test_csv_has_the_image_then_each_findings_probability_then_its_flag(folder, tmp_path, card, capsys):
    output = tmp_path / "out" / "results.csv"
    status = predict.main([str(folder / "a.png"), "--output", str(output)])
    assert status == 0
    table = pd.read_csv(output)
    labels = card["labels"]
    assert list(table.columns) == ["image", *labels, *[f"{label}_flag" for label in labels]]
    assert table["image"].tolist() == [str(folder / "a.png")]
    assert "a.png" in capsys.readouterr().out


def test_probabilities_are_the_calibrated_model_outputs_and_flags_follow_the_thresholds(
    folder, tmp_path, card, test_image
):
    output = tmp_path / "results.csv"
    predict.main([str(folder / "a.png"), "--output", str(output)])
    row = pd.read_csv(output).iloc[0]
    labels = card["labels"]

    shipped = ShippedModel.load(MODEL)
    # Preprocessed as in training: resized, then blurred as the card says.
    pixels = images.read_image(test_image, card["image_size"], card.get("blur", 0.0))[np.newaxis]
    scores = predict_scores(shipped.model, pixels, shipped.statistics, verbose=0, flip=card["test_time_flip"])
    expected = calibration.calibrate(scores, card["calibration"], labels)[0]
    np.testing.assert_allclose(row[labels].to_numpy(dtype=float), expected, atol=1e-5)
    thresholds = np.array([card["thresholds"][label] for label in labels])
    assert row[[f"{label}_flag" for label in labels]].tolist() == (expected >= thresholds).astype(int).tolist()


def test_a_directory_is_its_image_files_and_bad_files_are_named_skipped_and_fail_the_exit_status(
    folder, tmp_path, capsys
):
    output = tmp_path / "results.csv"
    status = predict.main([str(folder), "--output", str(output)])
    assert status == 1
    assert pd.read_csv(output)["image"].tolist() == [str(folder / "a.png"), str(folder / "b.png")]
    errors = capsys.readouterr().err
    assert "broken.png" in errors and "notes.txt" not in errors
    assert "2 image(s) read, 1 skipped" in errors


def test_youden_thresholds_are_an_option(folder, tmp_path, card):
    flags = {}
    for rule in ("specificity", "youden"):
        output = tmp_path / f"{rule}.csv"
        predict.main([str(folder / "a.png"), "--output", str(output), "--thresholds", rule])
        row = pd.read_csv(output).iloc[0]
        chosen = card["thresholds" if rule == "specificity" else "thresholds_youden"]
        expected = [int(row[label] >= chosen[label]) for label in card["labels"]]
        flags[rule] = row[[f"{label}_flag" for label in card["labels"]]].tolist()
        assert flags[rule] == expected


def test_gradcam_writes_one_overlay_per_image(folder, tmp_path):
    overlays = tmp_path / "overlays"
    assert predict.main([str(folder / "a.png"), str(folder / "b.png"), "--gradcam", str(overlays)]) == 0
    assert sorted(p.name for p in overlays.iterdir()) == ["0001_a_gradcam.png", "0002_b_gradcam.png"]


def test_images_are_decoded_batch_by_batch_with_the_same_results(folder, tmp_path, monkeypatch):
    whole = tmp_path / "whole.csv"
    predict.main([str(folder), "--output", str(whole)])
    monkeypatch.setattr(predict, "BATCH_SIZE", 1)  # a.png, b.png, then broken.png: a batch without an image
    events, probabilities = [], ShippedModel.probabilities
    monkeypatch.setattr(images, "read_image", lambda path: events.append(path.name) or read_image(path))
    monkeypatch.setattr(ShippedModel, "probabilities",
                        lambda self, *args: events.append("model") or probabilities(self, *args))
    overlays, batched = tmp_path / "overlays", tmp_path / "batched.csv"
    assert predict.main([str(folder), "--output", str(batched), "--gradcam", str(overlays)]) == 1
    assert events == ["a.png", "model", "b.png", "model", "broken.png"]
    pd.testing.assert_frame_equal(pd.read_csv(batched), pd.read_csv(whole), atol=1e-6)
    assert sorted(p.name for p in overlays.iterdir()) == ["0001_a_gradcam.png", "0002_b_gradcam.png"]


def test_no_image_at_all_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as stopped:
        predict.main([str(tmp_path)])
    assert stopped.value.code == 2


@pytest.mark.parametrize("damage", ["missing", "not JSON"])
def test_a_model_that_cannot_be_loaded_is_named_with_status_2(folder, tmp_path, capsys, damage):
    prefix = tmp_path / "model"
    if damage == "not JSON":
        shutil.copy(MODEL.with_suffix(".weights.h5"), prefix.with_suffix(".weights.h5"))
        prefix.with_suffix(".json").write_text("{not json")
    assert predict.main([str(folder / "a.png"), "--model", str(prefix)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and str(prefix) in error  # names the file


def test_blank_and_tiny_images_are_named_and_skipped_as_the_app_refuses_them(folder, tmp_path, capsys):
    Image.new("L", (300, 300), 128).save(folder / "grey.png")  # decodes, but is no radiograph
    Image.new("L", (1, 1), 0).save(folder / "dot.png")
    output = tmp_path / "results.csv"
    assert predict.main([str(folder), "--output", str(output)]) == 1
    assert pd.read_csv(output)["image"].tolist() == [str(folder / "a.png"), str(folder / "b.png")]
    errors = capsys.readouterr().err
    assert f"skipped {folder / 'grey.png'}" in errors and "almost no contrast" in errors
    assert f"skipped {folder / 'dot.png'}" in errors and "is 1 x 1 pixels" in errors
    assert "2 image(s) read, 3 skipped" in errors


@pytest.mark.parametrize("target", ["existing CSV", "an input image", "a folder"])
def test_an_output_that_would_destroy_a_file_is_refused_before_any_image_is_read(folder, capsys, target, monkeypatch):
    monkeypatch.setattr(images, "read_image", lambda path: pytest.fail("an image was read"))
    path = {"existing CSV": folder / "old.csv", "an input image": folder / "a.png", "a folder": folder}[target]
    if target == "existing CSV":
        path.write_text("earlier results\n")
    before = None if path.is_dir() else path.read_bytes()
    assert predict.main([str(folder / "a.png"), "--output", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --output {path} ")
    assert before is None or path.read_bytes() == before  # nothing lost
    if target == "an input image":  # not even with --force
        assert predict.main([str(folder / "a.png"), "--output", str(path), "--force"]) == 2
        assert path.read_bytes() == before


def test_force_replaces_an_existing_csv(folder, tmp_path):
    output = tmp_path / "results.csv"
    output.write_text("earlier results\n")
    assert predict.main([str(folder / "a.png"), "--output", str(output), "--force"]) == 0
    assert pd.read_csv(output)["image"].tolist() == [str(folder / "a.png")]


@pytest.mark.parametrize("option", ["--gradcam", "--output"])
def test_a_file_where_an_output_folder_should_be_is_refused_before_any_image_is_read(folder, capsys, option,
                                                                                      monkeypatch):
    monkeypatch.setattr(images, "read_image", lambda path: pytest.fail("an image was read"))
    target = folder / "a.png" / "inside" / ("results.csv" if option == "--output" else "")
    assert predict.main([str(folder / "a.png"), option, str(target)]) == 2
    assert f"{folder / 'a.png'} is a file, not a folder" in capsys.readouterr().err
