"""Reading chest X-ray files into validated 8-bit grayscale arrays, decoded once and cached; a split as arrays."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from cxr import checks, config, data
from cxr.files import atomic_write

# Every image passes through this side before the model's size. The files come at 512, 320 and 256 px,
# and their size goes with the subset they were taken from (512 px: mostly the No Finding and
# Pneumonia picks), so resampling each straight to the model's size would leave size-specific traces
# that a model could learn as a shortcut. 256 is the smallest full-resolution side: nothing is upsampled.
CANONICAL_SIZE = 256


class ImageReadError(checks.BadInput):
    """An image file that cannot be used, with the file (and row) named in the message."""


def to_grayscale_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any common mode to an 8-bit grayscale array.

    16-bit images are scaled to 0..255 (not clipped) from the bit depth their maximum needs, so a
    12-bit radiograph stored in a 16-bit PNG uses the full range; colour and alpha images are
    converted to luminance, the alpha channel being dropped.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 2.0 ** max(8, int(np.ceil(np.log2(pixels.max() + 1)))) - 1
        return np.clip(np.round(pixels / top * 255.0), 0, 255).astype(np.uint8)
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        span = pixels.max() - pixels.min()
        return np.round((pixels - pixels.min()) / (span or 1.0) * 255.0).astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 grayscale array to (size, size), antialiased (PIL's bilinear filter widens with the scale)."""
    if pixels.shape == (size, size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))


def to_model_size(pixels: np.ndarray, size: int, blur: float = 0.0) -> np.ndarray:
    """Bring a decoded image to (size, size) by way of CANONICAL_SIZE, whatever size it came in.

    ``blur``: the standard deviation, in pixels of the result, of a Gaussian blur applied last. Without
    it a faint trace of the file's size stays in the band just below the new size's limit: a file that
    arrived smaller has been filtered once more on its way to 256 px. A blur of 1 px takes that band away
    (models/README.md measures it).
    """
    if not checks.is_number(blur, low=0):
        raise ValueError(f"blur must be a standard deviation of 0 or more pixels, got {blur}.")
    resized = resize(resize(pixels, CANONICAL_SIZE), size)
    if not blur:
        return resized
    return np.asarray(Image.fromarray(resized).filter(ImageFilter.GaussianBlur(blur)))


def read_image(path: str | Path, size: int | None = None, blur: float = 0.0) -> np.ndarray:
    """Read one image file as a (size, size) uint8 grayscale array (original size if ``size`` is None).

    Resizing goes through ``CANONICAL_SIZE`` first, then ``blur`` (see ``to_model_size``).

    Raises:
        FileNotFoundError: if the file is missing.
        ImageReadError: if the file is not a readable image (corrupt, truncated, too large).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file {path} not found.")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            # A camera's JPEG stores the sensor's rows and, in EXIF, the turn that puts them upright.
            pixels = to_grayscale_array(ImageOps.exif_transpose(image))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{path}: not a readable image ({error}).") from error
    return pixels if size is None else to_model_size(pixels, size, blur)


def cache_key(frame: pd.DataFrame, data_dir: Path, size: int, blur: float = 0.0) -> str:
    """A digest of the preprocessing and of each file's name, size and modification time, so that a
    replaced, emptied or removed file is decoded again instead of keeping its old pixels."""
    preprocessing = f"{size} px via {CANONICAL_SIZE} px" + (f", blur {float(blur)} px" if blur else "")
    lines = [preprocessing, str(data_dir.resolve())]
    for _, row in frame.iterrows():
        try:
            stat = data.image_path(row, data_dir).stat()
            lines.append(f"{row['Image']} {stat.st_size} {stat.st_mtime_ns}")
        except OSError:
            lines.append(f"{row['Image']} missing")
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]


def load_images(
    frame: pd.DataFrame,
    data_dir: str | Path,
    size: int,
    source: str = "split",
    cache_dir: str | Path | None = None,
    on_error: str = "raise",
    blur: float = 0.0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Decode every image of a split table once, resized to ``size``, optionally cached on disk.

    Args:
        frame: table with ``Image`` and ``Resolution`` columns (a split CSV).
        data_dir: NIH data directory.
        size: output side in pixels.
        source: name of the table for error messages (e.g. ``data/train.csv``).
        cache_dir: where to keep a ``.npy`` of the decoded images; None for no disk cache.
        on_error: ``"raise"`` stops at the first bad row; ``"skip"`` warns and leaves the row out.
        blur: Gaussian blur after resizing, in pixels (see ``to_model_size``).

    Returns:
        images: (N, size, size) uint8 array; rows: the rows of ``frame`` that were loaded.

    Raises:
        FileNotFoundError / ImageReadError naming the table, the image and the file.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    data_dir = Path(data_dir)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"images-{size}px-{cache_key(frame, data_dir, size, blur)}.npy"
        if cache_file.is_file():
            return np.load(cache_file), frame

    images, kept = [], []
    for position, (_, row) in enumerate(frame.iterrows()):
        path = data.image_path(row, data_dir)
        try:
            images.append(read_image(path, size, blur))
            kept.append(position)
        except (FileNotFoundError, ImageReadError) as error:
            message = f"{source}, Image {row['Image']}: {error}"
            if on_error == "raise":
                raise type(error)(message + " Re-download the file or remove its row.") from error
            warnings.warn(message + " Skipped.", stacklevel=2)
    stacked = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    rows = frame.iloc[kept]
    if cache_file is not None and len(kept) == len(frame):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_file, lambda partial: np.save(partial, stacked))  # a killed run leaves no half-written cache
    return stacked, rows


@dataclass
class Split:
    """One split as arrays: its rows, their decoded images (None if not asked for) and 0/1 labels."""

    rows: pd.DataFrame
    pixels: np.ndarray | None
    labels: np.ndarray

    @property
    def patients(self) -> np.ndarray:
        return self.rows["PatientId"].to_numpy()


def load_split(
    name: str,
    size: int | None = None,
    *,
    split_dir: str | Path = config.SPLIT_DIR,
    data_dir: str | Path | None = None,
    labels: tuple[str, ...] = config.LABELS,
    limit: int | None = None,
    low_resolution: bool = True,
    cache_dir: str | Path | None = None,
    blur: float = 0.0,
) -> Split:
    """Load one split (``train``, ``valid`` or ``test``) of ``split_dir`` as arrays.

    Args:
        name: the split.
        size: side of the decoded images; None reads the rows and labels only.
        split_dir: the folder of the split CSVs.
        data_dir: the NIH data directory (default: ``config.data_dir()``).
        labels: the label columns, in order.
        limit: keep only the first ``limit`` rows (smoke tests, benchmarks).
        low_resolution: keep the 64-px images (upsampled); False leaves them out.
        cache_dir: where to keep the decoded images (see ``load_images``); None for no disk cache.
        blur: Gaussian blur after resizing, in pixels (see ``to_model_size``); a shipped model's JSON
            says which (``ShippedModel.blur``).
    """
    rows = data.read_split(name, split_dir)
    if not low_resolution:
        rows = rows[~data.is_low_resolution(rows)]
    if limit:
        rows = rows.head(limit)
    rows = rows.reset_index(drop=True)
    pixels = None
    if size:
        pixels, rows = load_images(rows, config.data_dir(data_dir), size, f"{split_dir}/{name}.csv", cache_dir,
                                   blur=blur)
    return Split(rows, pixels, data.label_matrix(rows, labels))
