"""Reading image files: bad files are reported with table, row and file; odd modes become 8-bit grayscale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import config
from cxr import images as cxr_images
from cxr.images import ImageReadError, load_images, read_image

SOURCE = "data/train.csv"


def write_png(path, pixels: np.ndarray, mode: str | None = None):
    """Write ``pixels`` as a PNG at ``path`` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels, mode=mode)
    image.save(path)
    return path


def make_data_dir(tmp_path, names, side=12, resolution=512):
    """A fake NIH data dir holding one constant 8-bit image per name (value 10, 20, ...).

    Returns the split table (Image, Resolution) and the expected pixel value of each row.
    """
    folder = config.FULL_RESOLUTION_DIR if resolution != 64 else config.LOW_RESOLUTION_DIR
    values = []
    for i, name in enumerate(names):
        value = 10 * (i + 1)
        write_png(tmp_path / folder / name, np.full((side, side), value, np.uint8))
        values.append(value)
    frame = pd.DataFrame({"Image": list(names), "Resolution": resolution})
    return frame, values


def corrupt_bytes(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())


def truncated_png(path):
    whole = path.with_name("whole.png")
    write_png(whole, np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8))
    content = whole.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    whole.unlink()


def empty_file(path):
    path.write_bytes(b"")


def text_file(path):
    path.write_text("this is not an image\n")


BAD_FILES = {
    "random bytes": corrupt_bytes,
    "truncated PNG": truncated_png,
    "empty file": empty_file,
    "text file": text_file,
}


# --- missing files -------------------------------------------------------------------------------


@pytest.mark.parametrize("missing_position", [0, 1, 3])
def test_missing_image_names_table_image_and_file(tmp_path, missing_position):
    names = [f"0000000{i}_000.png" for i in range(4)]
    frame, _ = make_data_dir(tmp_path, names)
    (tmp_path / config.FULL_RESOLUTION_DIR / names[missing_position]).unlink()

    with pytest.raises(FileNotFoundError) as caught:
        load_images(frame, tmp_path, size=8, source=SOURCE)

    message = str(caught.value)
    assert f"{SOURCE}, Image {names[missing_position]}: " in message
    assert str(tmp_path / config.FULL_RESOLUTION_DIR / names[missing_position]) in message  # the file


def test_missing_image_is_skipped_with_warning_when_on_error_is_skip(tmp_path):
    names = ["00000001_000.png", "00000002_000.png", "00000003_000.png"]
    frame, values = make_data_dir(tmp_path, names)
    (tmp_path / config.FULL_RESOLUTION_DIR / names[1]).unlink()

    with pytest.warns(UserWarning, match=r", Image 00000002_000\.png: .* Skipped"):
        images, rows = load_images(frame, tmp_path, size=8, source=SOURCE, on_error="skip")

    assert list(rows["Image"]) == [names[0], names[2]]
    assert images.shape == (2, 8, 8)
    # The remaining images stay paired with their rows.
    assert images[0].min() == images[0].max() == values[0]
    assert images[1].min() == images[1].max() == values[2]


def test_all_images_missing_with_skip_returns_empty_array(tmp_path):
    frame = pd.DataFrame({"Image": ["a.png", "b.png"], "Resolution": 512})
    with pytest.warns(UserWarning):
        images, rows = load_images(frame, tmp_path, size=8, on_error="skip")
    assert images.shape == (0, 8, 8) and images.dtype == np.uint8
    assert rows.empty


def test_read_image_of_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here.png"):
        read_image(tmp_path / "nothing_here.png")


def test_unknown_on_error_mode_is_rejected(tmp_path):
    frame, _ = make_data_dir(tmp_path, ["a.png"])
    with pytest.raises(ValueError, match="on_error"):
        load_images(frame, tmp_path, size=8, on_error="ignore")


def test_low_resolution_rows_are_read_from_the_64px_folder(tmp_path):
    frame, values = make_data_dir(tmp_path, ["00000009_000.png"], side=64, resolution=64)
    images, _ = load_images(frame, tmp_path, size=16)
    assert images.shape == (1, 16, 16)
    assert np.all(images == values[0])


# --- unreadable files ----------------------------------------------------------------------------


@pytest.mark.parametrize("make_bad_file", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_unreadable_file_raises_image_read_error_naming_the_file(tmp_path, make_bad_file):
    path = tmp_path / "00000005_000.png"
    make_bad_file(path)

    with pytest.raises(ImageReadError, match=r"00000005_000\.png"):
        read_image(path)


@pytest.mark.parametrize("make_bad_file", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_unreadable_file_in_table_names_table_image_and_file(tmp_path, make_bad_file):
    names = ["00000001_000.png", "00000002_000.png", "00000003_000.png"]
    frame, _ = make_data_dir(tmp_path, names)
    make_bad_file(tmp_path / config.FULL_RESOLUTION_DIR / names[2])

    with pytest.raises(ImageReadError) as caught:
        load_images(frame, tmp_path, size=8, source=SOURCE)

    message = str(caught.value)
    assert f"{SOURCE}, Image {names[2]}: " in message
    # ImageReadError is a ValueError, so callers catching ValueError also see it.
    assert isinstance(caught.value, ValueError)


def test_corrupt_file_is_skipped_with_warning_when_on_error_is_skip(tmp_path):
    names = ["00000001_000.png", "00000002_000.png"]
    frame, values = make_data_dir(tmp_path, names)
    truncated_png(tmp_path / config.FULL_RESOLUTION_DIR / names[0])

    with pytest.warns(UserWarning, match=r", Image 00000001_000\.png: .* Skipped"):
        images, rows = load_images(frame, tmp_path, size=8, on_error="skip")

    assert list(rows["Image"]) == [names[1]]
    assert np.all(images[0] == values[1])


# --- pixel formats -------------------------------------------------------------------------------


def test_rgba_png_is_read_as_grayscale_with_alpha_dropped(tmp_path):
    height, width = 6, 10
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = 100  # gray 100 ...
    rgba[:, : width // 2, 3] = 0  # ... fully transparent on the left half
    rgba[:, width // 2 :, 3] = 255
    path = write_png(tmp_path / "rgba.png", rgba, mode="RGBA")

    pixels = read_image(path)

    assert pixels.dtype == np.uint8
    assert pixels.shape == (height, width)
    # Alpha neither darkens nor is mistaken for a colour channel.
    assert np.all(pixels == 100)


def _with_channels(gray: np.ndarray, mode: str) -> np.ndarray:
    """``gray`` as an opaque image of ``mode`` (equal R, G and B; alpha 255)."""
    opaque = np.full_like(gray, 255)
    return {
        "L": gray,
        "LA": np.stack([gray, opaque], axis=-1),
        "RGB": np.stack([gray, gray, gray], axis=-1),
        "RGBA": np.stack([gray, gray, gray, opaque], axis=-1),
    }[mode]


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_colour_modes_become_luminance(tmp_path, mode):
    gray = np.random.default_rng(2).integers(0, 256, (5, 7), dtype=np.uint8)
    path = write_png(tmp_path / f"{mode}.png", _with_channels(gray, mode), mode=mode)
    assert Image.open(path).mode == mode

    result = read_image(path)

    assert result.dtype == np.uint8 and result.shape == gray.shape
    # Equal R, G and B give back the same gray level.
    np.testing.assert_array_equal(result, gray)


def test_16_bit_png_is_scaled_to_8_bit_not_clipped(tmp_path):
    row = np.array([0, 32896, 65535, 1000, 16448], dtype=np.uint16)
    path = write_png(tmp_path / "deep.png", np.tile(row, (4, 1)))
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file

    pixels = read_image(path)

    assert pixels.dtype == np.uint8 and pixels.shape == (4, 5)
    np.testing.assert_array_equal(pixels[0, :3], [0, 128, 255])
    assert abs(int(pixels[0, 3]) - round(1000 / 65535 * 255)) <= 1
    assert abs(int(pixels[0, 4]) - 64) <= 1
    assert not np.all(pixels[:, 1:] == 255), "16-bit values were clipped instead of scaled"


def test_12_bit_values_in_a_16_bit_png_use_the_full_8_bit_range(tmp_path):
    row = np.array([0, 2048, 4095], dtype=np.uint16)  # a 12-bit detector stored in 16 bits
    path = write_png(tmp_path / "twelve.png", np.tile(row, (2, 1)))

    pixels = read_image(path)

    np.testing.assert_array_equal(pixels[0], [0, 128, 255])


# --- resizing and the disk cache -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 40), (30, 50), (8, 8)])
@pytest.mark.parametrize("size", [16, 32])
def test_read_image_resizes_to_square_size(tmp_path, shape, size):
    path = write_png(tmp_path / "img.png", np.full(shape, 77, np.uint8))
    pixels = read_image(path, size=size)
    assert pixels.shape == (size, size)
    assert pixels.dtype == np.uint8
    assert np.all(pixels == 77), "resizing must not change intensities of a flat image"


def test_read_image_without_size_keeps_original_shape(tmp_path):
    original = np.random.default_rng(3).integers(0, 256, (9, 13), dtype=np.uint8)
    path = write_png(tmp_path / "img.png", original)
    np.testing.assert_array_equal(read_image(path), original)


def test_load_images_stacks_resized_uint8_images_in_table_order(tmp_path):
    names = ["c.png", "a.png", "b.png"]
    frame, values = make_data_dir(tmp_path, names, side=20)
    images, rows = load_images(frame, tmp_path, size=10)
    assert images.shape == (3, 10, 10) and images.dtype == np.uint8
    assert list(rows["Image"]) == names
    assert [int(image[0, 0]) for image in images] == values


def test_disk_cache_is_written_once_and_reread_while_the_files_are_unchanged(tmp_path, monkeypatch):
    names = ["00000001_000.png", "00000002_000.png"]
    frame, _ = make_data_dir(tmp_path / "nih", names, side=20)
    cache_dir = tmp_path / "cache"

    first, first_rows = load_images(frame, tmp_path / "nih", size=10, cache_dir=cache_dir)
    cached = list(cache_dir.glob("*.npy"))
    assert len(cached) == 1
    written_at = cached[0].stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached image was decoded again")

    monkeypatch.setattr(cxr_images, "read_image", no_decoding)
    second, second_rows = load_images(frame, tmp_path / "nih", size=10, cache_dir=cache_dir)

    np.testing.assert_array_equal(second, first)
    pd.testing.assert_frame_equal(second_rows, first_rows)
    assert list(cache_dir.glob("*.npy")) == cached
    assert cached[0].stat().st_mtime_ns == written_at, "the cache was rewritten instead of re-read"
    assert not list(cache_dir.glob("*partial*")), "a temporary file was left behind"


def test_a_replaced_file_is_decoded_again_not_served_from_the_cache(tmp_path):
    frame, values = make_data_dir(tmp_path / "nih", ["a.png", "b.png"], side=20)
    cache_dir = tmp_path / "cache"
    load_images(frame, tmp_path / "nih", size=10, cache_dir=cache_dir)
    path = tmp_path / "nih" / config.FULL_RESOLUTION_DIR / "b.png"
    write_png(path, np.full((24, 24), 200, np.uint8))  # same name, new content

    reloaded, _ = load_images(frame, tmp_path / "nih", size=10, cache_dir=cache_dir)

    assert reloaded[0].min() == reloaded[0].max() == values[0]
    assert reloaded[1].min() == reloaded[1].max() == 200


def test_an_emptied_file_is_reported_not_served_from_the_cache(tmp_path):
    frame, _ = make_data_dir(tmp_path / "nih", ["a.png"], side=20)
    cache_dir = tmp_path / "cache"
    load_images(frame, tmp_path / "nih", size=10, cache_dir=cache_dir)
    (tmp_path / "nih" / config.FULL_RESOLUTION_DIR / "a.png").write_bytes(b"")

    with pytest.raises(ImageReadError, match="a.png"):
        load_images(frame, tmp_path / "nih", size=10, cache_dir=cache_dir)


def test_every_size_is_reached_by_way_of_the_canonical_size(tmp_path):
    pattern = np.random.default_rng(4).integers(0, 256, (512, 512), dtype=np.uint8)
    path = write_png(tmp_path / "img.png", pattern)
    via_canonical = cxr_images.resize(cxr_images.resize(pattern, cxr_images.CANONICAL_SIZE), 64)
    np.testing.assert_array_equal(read_image(path, size=64), via_canonical)
    assert not np.array_equal(via_canonical, cxr_images.resize(pattern, 64))


def test_blur_takes_away_the_finest_detail_and_zero_blur_changes_nothing(tmp_path):
    pattern = np.random.default_rng(5).integers(0, 256, (512, 512), dtype=np.uint8)
    path = write_png(tmp_path / "img.png", pattern)
    plain = cxr_images.to_model_size(pattern, 64)
    np.testing.assert_array_equal(cxr_images.to_model_size(pattern, 64, blur=0.0), plain)
    blurred = read_image(path, size=64, blur=1.0)
    assert blurred.shape == (64, 64) and blurred.dtype == np.uint8
    # Neighbouring pixels differ far less once the band near the size's limit is gone.
    def roughness(pixels):
        return np.abs(np.diff(pixels.astype(float), axis=1)).mean()

    assert roughness(blurred) < 0.5 * roughness(plain)
    assert abs(blurred.mean() - plain.mean()) < 2  # a blur moves detail, not brightness


@pytest.mark.parametrize("blur", [-1.0, float("nan")])
def test_a_negative_or_missing_blur_is_refused(blur):
    with pytest.raises(ValueError, match="blur"):
        cxr_images.to_model_size(np.zeros((32, 32), np.uint8), 16, blur=blur)


@pytest.mark.parametrize("preprocessing", [{"size": 12}, {"size": 10, "blur": 1.0}], ids=["size", "blur"])
def test_disk_cache_is_keyed_by_size_and_blur(tmp_path, preprocessing):
    frame, _ = make_data_dir(tmp_path / "nih", ["a.png"], side=20)
    cache_dir = tmp_path / "cache"
    load_images(frame, tmp_path / "nih", size=10, cache_dir=cache_dir)
    (tmp_path / "nih" / config.FULL_RESOLUTION_DIR / "a.png").unlink()

    # Other preprocessing is not served from the 10-px, unblurred cache: it goes back to the (now missing) file.
    with pytest.raises(FileNotFoundError):
        load_images(frame, tmp_path / "nih", cache_dir=cache_dir, **preprocessing)


def test_incomplete_load_is_not_cached(tmp_path):
    frame, _ = make_data_dir(tmp_path / "nih", ["a.png", "b.png"])
    (tmp_path / "nih" / config.FULL_RESOLUTION_DIR / "b.png").unlink()
    cache_dir = tmp_path / "cache"

    with pytest.warns(UserWarning):
        load_images(frame, tmp_path / "nih", size=8, cache_dir=cache_dir, on_error="skip")

    assert not cache_dir.exists() or not list(cache_dir.glob("*.npy"))
