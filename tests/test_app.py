"""The web app's prediction function (cxr/app_logic.py), without the web.

The shipped model is loaded once (from a copy of its JSON without thresholds, so the "thresholds
unavailable" case is covered); other JSONs reuse the loaded model. Uploads are real NIH test
images, converted to 16-bit PNG and RGB JPEG, and bad files made here.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt
from PIL import Image, ImageOps

from cxr import app_logic
from cxr.app_logic import COLUMNS, TOP_K, load_predictor
from cxr.calibration import calibrate
from cxr.images import read_image
from cxr.inference import PER_IMAGE, card_standardisation, model_files, read_card
from cxr.pipeline import make_dataset

SHIPPED = app_logic.DEFAULT_MODEL



@pytest.fixture(scope="module")
def settings_without_thresholds(tmp_path_factory) -> Path:
    """A model prefix whose JSON is the shipped one less its thresholds, the weights linked."""
    settings_path, weights_path = model_files(SHIPPED)
    folder = tmp_path_factory.mktemp("model")
    settings = json.loads(settings_path.read_text())
    settings.pop("thresholds", None)
    (folder / "cxr.json").write_text(json.dumps(settings))
    try:
        (folder / "cxr.weights.h5").symlink_to(weights_path.resolve())
    except OSError:
        shutil.copy(weights_path, folder / "cxr.weights.h5")
    return folder / "cxr"


@pytest.fixture(scope="module")
def predictor(settings_without_thresholds):
    return load_predictor(settings_without_thresholds)


@pytest.fixture(scope="module")
def real_result(predictor, test_image):
    """diagnose() of the real test image, computed once."""
    return predictor.diagnose(test_image)


def probabilities_of(table: pd.DataFrame, labels) -> np.ndarray:
    return table.set_index("Finding").loc[list(labels), "Probability"].to_numpy()


def with_thresholds(predictor, tmp_path: Path, thresholds: dict) -> app_logic.Predictor:
    """The same loaded model with a temporary JSON holding these thresholds."""
    settings = dict(predictor.settings, thresholds=thresholds)
    (tmp_path / "thresholded.json").write_text(json.dumps(settings))
    return load_predictor(tmp_path / "thresholded", model=predictor.model)


def shown(markdown: str) -> str:
    """The text a Markdown message shows: rendered as CommonMark, tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", MarkdownIt("commonmark").render(markdown)))


def assert_good_result(result, labels) -> pd.DataFrame:
    table, overlay, message = result
    assert list(table.columns) == COLUMNS
    assert sorted(table["Finding"]) == sorted(labels)
    probabilities = table["Probability"].to_numpy()
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert np.all(np.diff(probabilities) <= 0), "not sorted by probability, descending"
    assert isinstance(overlay, Image.Image) and overlay.mode == "RGB"
    assert overlay.width > 3 * overlay.height, "expected the image and one panel per top finding"
    assert message.startswith(f"**Top finding: {table['Finding'][0]}**")
    assert f"top {TOP_K} findings" in message
    return table


def assert_error(result, *fragments: str) -> str:
    table, overlay, message = result
    assert table.empty and list(table.columns) == COLUMNS
    assert overlay is None
    assert message.startswith("**Error:**")
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in shown(message)
    return message


# --- good uploads ----------------------------------------------------------------------------------


def test_real_test_image_gives_sorted_probabilities_and_overlays(predictor, test_image, real_result):
    table = assert_good_result(real_result, predictor.labels)
    assert len(table) == 14
    assert f"'{test_image.name}'" in shown(real_result[2])


def test_preprocessing_and_calibration_are_the_notebooks(predictor, test_image, real_result):
    """read_image at the model's size with the JSON's blur, the validation pipeline's standardisation, the
    JSON's test-time flip (the mean of the image's and its mirror image's outputs), then the JSON's calibration."""
    settings = predictor.settings
    pixels = read_image(test_image, predictor.image_size, settings.get("blur", 0.0))[np.newaxis]
    views = [pixels, pixels[:, :, ::-1]] if settings.get("test_time_flip") else [pixels]
    outputs = []
    for view in views:
        dataset = make_dataset(view, np.zeros((1, 0), np.float32), batch_size=1, training=False,
                               statistics=predictor.statistics)
        outputs.append(keras.ops.convert_to_numpy(predictor.model(next(iter(dataset))[0], training=False))[0])
    scores = np.mean(outputs, axis=0)[np.newaxis]
    expected = calibrate(scores, settings.get("calibration"), predictor.labels)[0]
    np.testing.assert_allclose(probabilities_of(real_result[0], predictor.labels), expected, atol=1e-5)
    if settings.get("calibration"):
        assert not np.allclose(expected, scores[0], atol=1e-3), "the calibration changed nothing"


def test_image_size_comes_from_the_json(predictor, settings_without_thresholds):
    settings = json.loads(model_files(settings_without_thresholds)[0].read_text())
    assert predictor.image_size == settings["image_size"] == predictor.model.input_shape[1]


@pytest.mark.parametrize(
    "standardisation, expected",
    [("per-image", "per-image"), ("training-statistics", (100.0, 50.0)), (None, (100.0, 50.0))],
)
def test_json_standardisation_selects_per_image_or_training_statistics(tmp_path, standardisation, expected):
    card = {"labels": ["A"], "image_size": 32, "normalisation": {"mean": 100.0, "std": 50.0}}
    if standardisation:
        card["standardisation"] = standardisation
    (tmp_path / "card.json").write_text(json.dumps(card))
    assert card_standardisation(read_card(tmp_path / "card.json")) == expected


def test_16_bit_png_gives_the_same_result_as_8_bit(predictor, test_image, real_result, tmp_path):
    pixels = np.asarray(Image.open(test_image).convert("L"), dtype=np.uint16) * 257  # 0..255 -> 0..65535
    path = tmp_path / "sixteen.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I;16") or Image.open(path).mode == "I"
    sixteen = assert_good_result(predictor.diagnose(path), predictor.labels)
    np.testing.assert_allclose(sixteen["Probability"], real_result[0]["Probability"], atol=1e-6)


def test_rgb_jpeg_of_another_size(predictor, test_image, tmp_path):
    gray = Image.open(test_image).convert("L").resize((700, 600))
    path = tmp_path / "colour.jpg"
    Image.merge("RGB", (gray, gray, gray)).save(path, quality=90)
    assert Image.open(path).mode == "RGB"
    assert_good_result(predictor.diagnose(path), predictor.labels)


def test_rgba_png(predictor, test_image, tmp_path):
    path = tmp_path / "alpha.png"
    Image.open(test_image).convert("RGBA").save(path)
    assert_good_result(predictor.diagnose(path), predictor.labels)


def test_mpo_jpeg_is_read_as_its_first_frame(predictor, test_image, tmp_path):
    """A camera's JPEG with a second frame (Pillow calls it MPO): the first frame is the picture."""
    first = Image.open(test_image).convert("RGB")
    second = ImageOps.invert(first)
    path = tmp_path / "camera.jpg"
    first.save(path, format="MPO", save_all=True, append_images=[second])
    with Image.open(path) as image:
        assert (image.format, image.n_frames) == ("MPO", 2)
    first.save(tmp_path / "first.jpg", format="JPEG")
    second.save(tmp_path / "second.jpg", format="JPEG")
    pixels = predictor.read(path)
    np.testing.assert_array_equal(pixels, predictor.read(tmp_path / "first.jpg"))
    assert not np.array_equal(pixels, predictor.read(tmp_path / "second.jpg"))
    assert_good_result(predictor.diagnose(path), predictor.labels)


def test_exif_orientation_is_applied(predictor, test_image, tmp_path):
    """A portrait radiograph photographed sideways: the camera stores it turned a quarter
    counter-clockwise with EXIF orientation 6 (rotate 90 degrees clockwise to display)."""
    upright = Image.open(test_image).convert("L").resize((400, 600))
    upright.save(tmp_path / "upright.png")
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    path = tmp_path / "sideways.jpg"
    stored.save(path, quality=95, exif=exif)
    stored.save(tmp_path / "sideways-without-exif.jpg", quality=95)
    expected = predictor.read(tmp_path / "upright.png").astype(float)
    pixels = predictor.read(path).astype(float)
    assert np.abs(pixels - expected).mean() < 2.0  # JPEG's loss only
    assert np.abs(predictor.read(tmp_path / "sideways-without-exif.jpg") - expected).mean() > 20.0
    assert_good_result(predictor.diagnose(path), predictor.labels)


def test_the_file_name_is_shown_literally(predictor, test_image, tmp_path):
    """Markdown in a file name is escaped, in the result's message and in an error's."""
    name = "**x**[y](javascript:z).png"
    path = tmp_path / name
    shutil.copy(test_image, path)
    message = predictor.diagnose(path)[2]
    rendered = MarkdownIt("commonmark").render(message)
    assert "<a" not in rendered and "<strong>x</strong>" not in rendered
    assert f"for '{name}'." in shown(message)
    path.write_text("not an image")
    message = assert_error(predictor.diagnose(path), f"'{name}' is not an image")
    assert "<a" not in MarkdownIt("commonmark").render(message)


# --- thresholds ------------------------------------------------------------------------------------


def test_without_thresholds_nothing_is_marked_and_the_message_says_so(predictor, real_result):
    assert predictor.thresholds is None
    table, _, message = real_result
    assert (table["Above threshold"] == "n/a").all()
    assert table["Threshold"].isna().all()
    assert "thresholds are unavailable" in message


def test_findings_at_or_above_their_thresholds_are_marked(predictor, test_image, tmp_path):
    labels = predictor.labels
    # Two findings always above (0.0), one left without a threshold, the rest never reached (1.0).
    thresholds = {label: 1.0 for label in labels[3:]} | {labels[0]: 0.0, labels[1]: 0.0}
    marked = with_thresholds(predictor, tmp_path, thresholds)
    table, _, message = marked.diagnose(test_image)
    above = table.set_index("Finding")["Above threshold"]
    assert above[labels[0]] == above[labels[1]] == "yes"
    assert above[labels[2]] == "n/a"
    assert (above[list(labels[3:])] == "no").all()
    assert f"Above their validated thresholds (2 of {len(labels)})" in message
    assert labels[0] in message and labels[1] in message


def test_marking_follows_the_probabilities(predictor, real_result, tmp_path):
    """A finding is marked when its probability is >= its threshold, not otherwise."""
    probabilities = probabilities_of(real_result[0], predictor.labels)
    thresholds = dict(zip(predictor.labels, probabilities.tolist()))  # p >= p: all marked
    table = with_thresholds(predictor, tmp_path, thresholds).findings_table(probabilities)
    assert (table["Above threshold"] == "yes").all()
    thresholds = {label: min(1.0, p + 1e-3) for label, p in zip(predictor.labels, probabilities.tolist())}
    marked = with_thresholds(predictor, tmp_path, thresholds)
    table = marked.findings_table(probabilities)
    assert (table["Above threshold"] == "no").all()
    assert "No finding is above its validated threshold" in marked.summary(table, "x.png")


def test_unusable_thresholds_are_named(predictor, tmp_path):
    first, second = predictor.labels[:2]
    with pytest.raises(ValueError, match=rf"field 'thresholds' must hold numbers from 0 to 1, got "
                                         rf"{{'{first}': 'high', '{second}': 1.5}}"):
        with_thresholds(predictor, tmp_path, {first: "high", second: 1.5, predictor.labels[2]: 0.5})


# --- bad uploads -----------------------------------------------------------------------------------


def test_non_image_file(predictor, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an x-ray\n" * 10)
    assert_error(predictor.diagnose(path), "'notes.txt'", "not an image")


def test_non_image_with_an_image_name(predictor, tmp_path):
    path = tmp_path / "fake.png"
    path.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    assert_error(predictor.diagnose(path), "not an image")


def test_empty_file(predictor, tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert_error(predictor.diagnose(path), "empty")


def test_no_file(predictor, tmp_path):
    assert_error(predictor.diagnose(None), "No file")
    assert_error(predictor.diagnose(tmp_path / "gone.png"), "could not be found")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image(predictor, test_image, tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    Image.open(test_image).convert("L").save(whole)
    data = whole.read_bytes()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: len(data) // 2])
    assert_error(predictor.diagnose(path), "truncated or corrupt")


def test_decompression_bomb_is_refused_before_decoding(predictor, tmp_path):
    """A 9000 x 9000 1-bit PNG: a small file, 81 megapixels once decoded."""
    path = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(path, optimize=True)
    assert path.stat().st_size < 100_000
    assert_error(predictor.diagnose(path), "9000 x 9000", "megapixels")


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (its data is a single row)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
            + chunk(b"IEND", b""))


def test_a_header_declaring_a_gigantic_image_is_refused(predictor, tmp_path):
    path = tmp_path / "giant.png"
    path.write_bytes(png_with_size(100_000, 100_000))  # beyond Pillow's own bomb limit
    assert_error(predictor.diagnose(path), "too large")
    path.write_bytes(png_with_size(8_000, 8_000))  # below Pillow's limit, above the app's
    assert_error(predictor.diagnose(path), "megapixels")


def test_other_formats_are_refused(predictor, test_image, tmp_path):
    path = tmp_path / "scan.gif"
    Image.open(test_image).convert("L").save(path)
    assert_error(predictor.diagnose(path), "GIF", "PNG or JPEG")


def test_oversized_file(predictor, tmp_path, monkeypatch):
    monkeypatch.setattr(app_logic, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "large.png"
    path.write_bytes(b"\x00" * 2000)
    assert_error(predictor.diagnose(path), "limit")


@pytest.mark.parametrize("width, height", [(1, 1), (1, 4000), (4000, 1), (63, 500)])
def test_images_too_small_are_refused(predictor, tmp_path, width, height):
    path = tmp_path / "tiny.png"
    noise = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    assert_error(predictor.diagnose(path), f"{width} x {height} pixels", "at least 64 pixels")


@pytest.mark.parametrize("value", [0, 128, 255])
def test_images_without_contrast_are_refused(predictor, tmp_path, value):
    """A blank frame, all black, grey or white, as PNG and as JPEG."""
    for suffix in (".png", ".jpg"):
        path = tmp_path / f"blank{suffix}"
        Image.new("L", (800, 600), value).save(path)
        assert_error(predictor.diagnose(path), "no contrast")


def test_it_keeps_working_after_bad_uploads(predictor, test_image, tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"garbage")
    assert_error(predictor.diagnose(path))
    assert_good_result(predictor.diagnose(test_image), predictor.labels)


# --- concurrency and loading -----------------------------------------------------------------------


def test_several_requests_at_once_give_the_same_answer(predictor, test_image, real_result, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("text")
    paths = [test_image, bad, test_image]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(predictor.diagnose, paths))
    assert_error(results[1])
    for table, _, _ in (results[0], results[2]):
        pd.testing.assert_frame_equal(table, real_result[0])


def test_missing_or_incomplete_settings_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_predictor(tmp_path / "nothing")
    (tmp_path / "broken.json").write_text(json.dumps({"labels": ["A"]}))
    with pytest.raises(ValueError, match="normalisation"):
        load_predictor(tmp_path / "broken")


def test_the_shipped_json_reads(predictor):
    card = json.loads(model_files(SHIPPED)[0].read_text())
    assert read_card(model_files(SHIPPED)[0]) == card
    assert card["labels"] == predictor.labels and card["image_size"] == predictor.image_size
    # The standardisation the JSON chose: per image, or the training split's (mean, std).
    normalisation = card["normalisation"]
    per_image = card["standardisation"] == PER_IMAGE
    assert predictor.statistics == (PER_IMAGE if per_image else (normalisation["mean"], normalisation["std"]))


# --- the page's side of it (app.py, without a server) ---------------------------------------------


def test_the_page_table_is_formatted_and_marks_findings(predictor, real_result, tmp_path):
    import app

    probabilities = probabilities_of(real_result[0], predictor.labels)
    thresholds = {label: 0.0 for label in predictor.labels[:2]}
    table = with_thresholds(predictor, tmp_path, thresholds).findings_table(probabilities)
    styled = app.display_table(table)
    shown = styled.data
    assert list(shown.columns) == COLUMNS
    assert all(len(value.split(".")[1]) == 3 for value in shown["Probability"])
    assert (shown["Threshold"] == "n/a").sum() == len(predictor.labels) - 2
    html = styled.to_html()
    assert html.count(app.MARKED_STYLE.split(";")[0]) >= 1
    assert app.display_table(pd.DataFrame(columns=COLUMNS)).empty


def test_the_page_builds_with_and_without_thresholds(predictor, tmp_path):
    import app

    assert "thresholds are unavailable" in app.model_description(predictor)
    marked = with_thresholds(predictor, tmp_path, {predictor.labels[0]: 0.5})
    assert "marked when its probability reaches its threshold" in app.model_description(marked)
    blocks = app.build_app(marked)
    assert blocks.title == app.TITLE
