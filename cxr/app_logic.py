"""The web app's logic, without the web: one uploaded file in, the findings table, the GradCAM
overlays and a message out.

``load_predictor`` loads the shipped model once (``cxr.inference.ShippedModel``); ``Predictor.diagnose``
reads a file with the notebook's preprocessing (``read_image``'s decoding, after turning the image
upright as its EXIF orientation says, then ``ShippedModel.preprocess``: resizing to the model's size and
the JSON's blur; then the standardisation as the JSON says: per image, or with the training statistics
shipped there, never recomputed; GradCAM from the JSON's layer) and never raises for a bad upload: it
returns an empty table, no overlay and a message saying what is wrong. A lock serialises the model and
matplotlib, so several requests at once are safe.
"""

from __future__ import annotations

import io
import math
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from cxr import config
from cxr.gradcam import explain_findings
from cxr.images import ImageReadError, read_image
from cxr.inference import NotARadiograph, ShippedModel, Standardisation, not_a_radiograph
from cxr.plots import plot_gradcam

DEFAULT_MODEL = config.SHIPPED_MODEL
# MPO is the JPEG that cameras and phones write: a JPEG whose first frame is the picture, with
# further frames (previews, stereo views) after it. Pillow names it MPO; the first frame is used.
ACCEPTED_FORMATS = ("PNG", "JPEG", "MPO")
# A decompression bomb is a small file that decodes to a huge image. The header gives the size
# before any pixel is decoded: refuse anything above this many pixels (NIH originals: 1 Mpx;
# the largest digital chest radiographs are about 4300 x 4300 = 18.5 Mpx).
MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 50 * 1024 * 1024
TOP_K = 3
COLUMNS = ["Finding", "Probability", "Threshold", "Above threshold"]
DISCLAIMER = (
    "Teaching project, not a diagnostic device. The model was trained on about three thousand NIH "
    "ChestX-ray14 images with noisy, text-mined labels; its output must not be used to diagnose, "
    "treat or reassure anyone. Its probabilities are calibrated to the prevalences of that selected "
    "subset (Pneumonia in about 18% of images, against 1.3% in the NIH release), not to a hospital's: "
    "where a finding is rarer, a flagged image is less likely to show it."
)


class UnusableUpload(ValueError):
    """An uploaded file that cannot be analysed; the message is meant for the person who sent it."""


def markdown_escape(text: str) -> str:
    """``text`` with every ASCII punctuation character backslash-escaped, so that Markdown shows it
    literally: a file named ``**x**[y](javascript:z).png`` is neither bold nor a link."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


def quoted_name(path: Path) -> str:
    """The file's name, quoted and escaped for the page's Markdown messages."""
    return f"'{markdown_escape(path.name)}'"


@dataclass
class Predictor:
    """The shipped model behind the app, and a lock: one request at a time uses the model and matplotlib."""

    shipped: ShippedModel
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self) -> keras.Model:
        return self.shipped.model

    @property
    def labels(self) -> list[str]:
        return self.shipped.labels

    @property
    def image_size(self) -> int:
        return self.shipped.image_size

    @property
    def statistics(self) -> Standardisation:
        return self.shipped.statistics

    @property
    def thresholds(self) -> dict[str, float] | None:
        return self.shipped.thresholds

    @property
    def settings(self) -> dict:
        """The model's whole JSON."""
        return self.shipped.card

    # --- checks on the upload, before anything is decoded -------------------------------------

    @staticmethod
    def check_upload(path: str | Path | None) -> Path:
        """The path of a usable upload, or UnusableUpload saying why not (format, size, emptiness)."""
        if path is None or str(path) == "":
            raise UnusableUpload("No file was uploaded. Choose a PNG or JPEG chest X-ray.")
        path = Path(path)
        name = quoted_name(path)
        if not path.is_file():
            raise UnusableUpload("The uploaded file could not be found on the server; please upload it again.")
        size = path.stat().st_size
        if size == 0:
            raise UnusableUpload(f"{name} is empty (0 bytes). Upload a PNG or JPEG chest X-ray.")
        if size > MAX_FILE_BYTES:
            raise UnusableUpload(
                f"{name} is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB."
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:  # reads the header only
                    image_format, (width, height) = image.format, image.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise UnusableUpload(
                f"{name} declares an image too large to decode safely "
                f"(more than {MAX_PIXELS / 1e6:.0f} megapixels): {error}"
            ) from error
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise UnusableUpload(
                f"{name} is not an image this app can read. Upload a PNG or JPEG chest X-ray."
            ) from error
        if image_format not in ACCEPTED_FORMATS:
            raise UnusableUpload(
                f"{name} is a {image_format} image; upload a PNG or JPEG chest X-ray."
            )
        if width * height > MAX_PIXELS:
            raise UnusableUpload(
                f"{name} is {width} x {height} pixels ({width * height / 1e6:.0f} megapixels); "
                f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels, which protects the server from "
                "decompression bombs. Downscale the image and upload it again."
            )
        problem = not_a_radiograph(width, height)
        if problem:
            raise UnusableUpload(f"{name} {problem}")
        return path

    def read(self, path: str | Path) -> np.ndarray:
        """The upload as the notebook reads an image, (size, size) uint8 grayscale, turned upright
        as its EXIF orientation says; UnusableUpload if it cannot be decoded or is blank."""
        path = self.check_upload(path)
        try:
            original = read_image(path)  # the notebook's reader: EXIF orientation applied, an MPO's first frame
        except ImageReadError as error:
            raise UnusableUpload(
                f"{quoted_name(path)} could not be decoded: the file is truncated or corrupt. "
                "Upload the complete PNG or JPEG file."
            ) from error
        try:
            return self.shipped.preprocess(original)  # resized (and blurred) as in training
        except NotARadiograph as error:
            raise UnusableUpload(f"{quoted_name(path)} {error}") from error

    # --- inference ----------------------------------------------------------------------------

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(C,) calibrated probabilities of one (size, size) uint8 image, as the JSON says (test-time flip,
        calibration; the network's outputs where it has no calibration)."""
        with self.lock:
            return self.shipped.probabilities(pixels[np.newaxis])[0]

    def findings_table(self, probabilities: np.ndarray) -> pd.DataFrame:
        """Findings sorted by probability, descending, with threshold and whether it is reached."""
        rows, thresholds = [], self.thresholds or {}  # read from the JSON once, not once per finding
        for label, probability in zip(self.labels, probabilities):
            threshold = thresholds.get(label, float("nan"))
            above = "n/a" if math.isnan(threshold) else ("yes" if probability >= threshold else "no")
            rows.append({"Finding": label, "Probability": float(probability), "Threshold": threshold,
                         "Above threshold": above})
        table = pd.DataFrame(rows, columns=COLUMNS)
        return table.sort_values("Probability", ascending=False, kind="stable").reset_index(drop=True)

    def overlay(self, pixels: np.ndarray, findings: list[str], probabilities: np.ndarray | None = None) -> Image.Image:
        """The image and its GradCAM for each finding, as one RGB picture (the notebook's figure),
        titled with ``probabilities`` (those of the table)."""
        with self.lock:
            explanations = explain_findings(self.model, pixels, self.statistics, self.labels, findings,
                                            layer_name=self.shipped.gradcam_layer, probabilities=probabilities,
                                            calibration=self.shipped.calibration)
            figure = plot_gradcam(pixels, explanations)
            try:
                buffer = io.BytesIO()
                figure.savefig(buffer, format="png", dpi=100)
            finally:
                plt.close(figure)
        buffer.seek(0)
        with Image.open(buffer) as picture:
            return picture.convert("RGB")

    def summary(self, table: pd.DataFrame, name: str) -> str:
        """The message shown above the table: top finding, marked findings, thresholds' availability."""
        top = table.iloc[0]
        lines = [f"**Top finding: {top['Finding']}** (probability {top['Probability']:.3f}) for "
                 f"'{markdown_escape(name)}'."]
        if self.thresholds is None:
            lines.append("Validated thresholds are unavailable for this model: no finding is marked.")
        else:
            marked = table.loc[table["Above threshold"] == "yes", "Finding"].tolist()
            if marked:
                lines.append(f"Above their validated thresholds ({len(marked)} of {len(table)}): "
                             + ", ".join(marked) + ".")
            else:
                lines.append("No finding is above its validated threshold.")
        lines.append(f"GradCAM overlays show the top {min(TOP_K, len(table))} findings.")
        return "\n\n".join(lines)

    def diagnose(self, path: str | Path | None) -> tuple[pd.DataFrame, Image.Image | None, str]:
        """One upload -> (findings table sorted descending, GradCAM overlay picture, message).

        Never raises for a bad upload: the table is then empty, the overlay None and the message
        says what is wrong. The message of a good upload starts with "**Top finding:".
        """
        try:
            pixels = self.read(path)
        except UnusableUpload as error:
            return pd.DataFrame(columns=COLUMNS), None, f"**Error:** {error}"
        probabilities = self.probabilities(pixels)
        table = self.findings_table(probabilities)
        overlay = self.overlay(pixels, table["Finding"].head(TOP_K).tolist(), probabilities)
        return table, overlay, self.summary(table, Path(path).name)

    def warm_up(self) -> None:
        """One prediction and one GradCAM on a blank image, so that the first request is not slow."""
        blank = np.full((self.image_size, self.image_size), 128, np.uint8)
        self.probabilities(blank)
        self.overlay(blank, self.labels[:1])


def load_predictor(prefix: str | Path = DEFAULT_MODEL, warm_up: bool = False,
                   model: keras.Model | None = None) -> Predictor:
    """The app's predictor of a shipped model (``ShippedModel.load``).

    Args:
        prefix: ``models/densenet121_cxr14`` (with ``.json`` and ``.weights.h5`` beside it).
        warm_up: run the model once, so the first request is as fast as the next ones.
        model: an already loaded model to use with this JSON instead of loading the weights again.

    Raises:
        FileNotFoundError, ValueError: naming the file that is missing or wrong.
    """
    predictor = Predictor(ShippedModel.load(prefix, model=model))
    if warm_up:
        predictor.warm_up()
    return predictor
