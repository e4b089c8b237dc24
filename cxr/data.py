"""The NIH files and the splits: the label file, the bounding boxes and the expert labels, patient-level
splits, leakage checks and class frequencies."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxr import config
from cxr.checks import BadInput
from cxr.download import BOX_FOLDER_URL

# Columns of the official NIH label file that the project reads.
LABEL_FILE_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
# Columns of a split CSV that every reader needs (the label columns are checked by label_matrix).
SPLIT_COLUMNS = ("Image", "PatientId", "Resolution")
# Side of the files in images-64/: too small to score a model on, so they are used for training only.
LOW_RESOLUTION = 64
SPLITS = ("train", "valid", "test")
# NIH boxes are given in the coordinates of the released 1024x1024 images.
BOX_SOURCE_SIZE = 1024
BOX_COLUMNS = ("Image", "Finding", "x", "y", "w", "h")
# The box file calls Infiltration "Infiltrate"; the label file does not.
BOX_FINDING_NAMES = {"Infiltrate": "Infiltration"}
# Columns and values of the Google 2019 expert label file.
EXPERT_IMAGE_COLUMN = "Image Index"
EXPERT_FINDINGS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
EXPERT_POSITIVE, EXPERT_NEGATIVE = "YES", "NO"


def read_csv(path: Path, columns: tuple[str, ...], remedy: str, **options) -> pd.DataFrame:
    """Read a CSV (``.csv`` or ``.csv.gz``) that must have ``columns``; ``options`` go to ``pd.read_csv``.

    Raises:
        ValueError: naming the file and ``remedy``, if it is not a readable CSV (corrupt, truncated,
            not gzip) or lacks one of ``columns``.
    """
    try:
        table = pd.read_csv(path, **options)
    except (OSError, EOFError, zlib.error, ValueError) as error:  # what pandas, gzip and zlib raise
        raise BadInput(f"{path}: not a readable CSV file ({type(error).__name__}: {error}). {remedy}") from error
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise BadInput(f"{path}: missing column(s) {missing}; expected the columns {list(columns)}. {remedy}")
    return table


@dataclass(frozen=True)
class NumberKind:
    """What a numeric column must hold: its name in messages, and the test of its (coerced) values."""

    meaning: str
    accepts: Callable[[pd.Series], pd.Series]


NUMBER = NumberKind("a finite number", np.isfinite)  # NaN (an empty or unreadable cell) is not finite
# Identifiers and sizes: no fraction, and small enough for a 32-bit integer rather than an overflow.
WHOLE_NUMBER = NumberKind(
    f"a whole number from 0 to {2**31 - 1:,}", lambda values: values.between(0, 2**31 - 1) & (values == values.round())
)
ZERO_OR_ONE = NumberKind("0 or 1", lambda values: values.isin((0, 1)))


def checked_numbers(
    table: pd.DataFrame, column: str, path, lines, image_column: str, kind: NumberKind = NUMBER, remedy: str = ""
) -> pd.Series:
    """``table[column]`` as numbers, or a BadInput naming the file, the line (``lines``: one per row) and
    image of the first row that is empty or not ``kind``, the column, and how many rows are wrong."""
    values = pd.to_numeric(table[column], errors="coerce")
    good = kind.accepts(values)
    if not good.all():
        row = int((~good).to_numpy().argmax())
        value = table[column].iloc[row]
        value = value.item() if isinstance(value, np.generic) else value  # 2, not np.int64(2)
        shown = "an empty cell" if pd.isna(value) else repr(value)
        where = f"{path} line {np.asarray(lines)[row]} ({image_column} {table[image_column].iloc[row]})"
        raise BadInput(f"{where}, column {column!r}: {shown} is not {kind.meaning} "
                       f"({int((~good).sum())} such row(s)). {remedy}")
    return values


def read_label_file(path: str | Path, extra_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read the NIH label file (``.csv`` or ``.csv.gz``) and check the columns and values we need:
    ``LABEL_FILE_COLUMNS`` and the caller's ``extra_columns``.

    Returns:
        the table, with ``Patient ID`` as integers, indexed by the line of each row in the file (the
        header is line 1), which error messages name.

    Raises:
        FileNotFoundError: if the file is missing, saying where to get it.
        ValueError: naming the file, if it is not a readable CSV or lacks a required column; naming the
            line and the field for a ``Patient ID`` that is empty or not a whole number from 0 to
            2**31 - 1; naming the image and both lines for an image listed twice.
    """
    path = Path(path)
    # download_data.py cannot fetch it: the box folder has no direct link to it.
    fetch = f"by hand from the NIH box folder {BOX_FOLDER_URL} (see README.md) into {path.parent} and gzip it"
    if not path.is_file():
        raise FileNotFoundError(f"Label file {path} not found. Download Data_Entry_2017_v2020.csv {fetch}.")
    table = read_csv(path, (*LABEL_FILE_COLUMNS, *extra_columns), f"Download Data_Entry_2017_v2020.csv again {fetch}.")
    table.index = line = table.index + 2
    # An empty patient would silently drop the image from every split (and make every ID a float).
    patients = checked_numbers(table, "Patient ID", path, line, "Image Index", WHOLE_NUMBER,
                               "Every row needs the patient's number: fix the row or use the official "
                               "Data_Entry_2017_v2020.csv.")
    table["Patient ID"] = patients.astype("int64")
    repeated = table["Image Index"].duplicated(keep=False).to_numpy()
    if repeated.any():
        image = table["Image Index"][repeated].iloc[0]
        lines = line[(table["Image Index"] == image).to_numpy()]
        raise BadInput(
            f"{path}: image {image} is listed on lines {', '.join(map(str, lines))}; an image needs exactly one "
            "row (a repeated row would be trained on twice). Delete the extra row(s)."
        )
    return table


def load_boxes(data_dir: str | Path | None = None) -> pd.DataFrame:
    """The NIH bounding boxes, one row per box, in the 1024-px coordinates of the release.

    The file's header (``Image Index,Finding Label,Bbox [x,y,w,h],,,``) is not a usable one,
    so the first six fields are read by position. ``Infiltrate`` is renamed ``Infiltration``.

    Returns:
        DataFrame with ``Image``, ``Finding``, ``x``, ``y``, ``w``, ``h`` (float pixels).
    """
    path = config.data_dir(data_dir) / config.BBOX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"Bounding box file {path} not found: it ships with the NIH data folder.")
    remedy = "Replace it with the NIH's BBox_List_2017.csv (README.md, section 'The data')."
    boxes = read_csv(path, BOX_COLUMNS, remedy, header=None, skiprows=1, usecols=range(len(BOX_COLUMNS)),
                     names=list(BOX_COLUMNS))
    coordinates = list(BOX_COLUMNS[2:])
    boxes[coordinates] = boxes[coordinates].apply(pd.to_numeric, errors="coerce")
    bad = boxes[boxes[coordinates].isna().any(axis=1) | (boxes[["w", "h"]] < 0).any(axis=1)]
    if len(bad):
        raise BadInput(
            f"{path}: {len(bad)} box(es) without four valid numbers, first on line {bad.index[0] + 2}. {remedy}"
        )
    boxes["Finding"] = boxes["Finding"].replace(BOX_FINDING_NAMES)
    return boxes


def read_expert_labels(data_dir: str | Path | None = None) -> pd.DataFrame:
    """The Google 2019 expert labels (Majkowska et al., Radiology 2019) as 0/1 columns.

    Returns:
        DataFrame with ``Image`` and one 0/1 column per expert finding (``Fracture``,
        ``Pneumothorax``, ``Airspace opacity``, ``Nodule or mass``).
    """
    path = config.data_dir(data_dir) / config.EXPERT_LABEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"Expert label file {path} not found: it ships with the NIH data folder.")
    remedy = "Replace it with Google's published expert label file (README.md, section 'The data')."
    table = read_csv(path, (EXPERT_IMAGE_COLUMN, *EXPERT_FINDINGS), remedy)
    values = table[list(EXPERT_FINDINGS)]
    unknown = sorted(set(values.to_numpy().ravel()) - {EXPERT_POSITIVE, EXPERT_NEGATIVE}, key=str)
    if unknown:
        raise BadInput(f"{path}: expected only {EXPERT_POSITIVE}/{EXPERT_NEGATIVE} labels, found {unknown}. {remedy}")
    expert = (values == EXPERT_POSITIVE).astype(np.int8)
    expert.insert(0, "Image", table[EXPERT_IMAGE_COLUMN])
    return expert.drop_duplicates("Image").reset_index(drop=True)


def findings_to_columns(
    findings: pd.Series, labels: tuple[str, ...] = config.LABELS, source: str = "label file"
) -> pd.DataFrame:
    """Turn ``Finding Labels`` strings ("Effusion|Mass", "No Finding") into one 0/1 column per label.

    ``No Finding`` means all zeros unless it is itself one of ``labels`` (the 4-class variant).
    ``findings`` is indexed by the line of each row in ``source``, which errors name.

    Raises:
        ValueError: for a name that is neither a finding nor "No Finding", naming the line and the name.
    """
    known = set(config.LABELS) | {config.NO_FINDING}
    columns = {label: np.zeros(len(findings), dtype=np.int8) for label in labels}
    for position, (row, text) in enumerate(findings.items()):
        if not isinstance(text, str) or not text.strip():
            raise BadInput(f"{source} line {row}: empty 'Finding Labels'; use 'No Finding' for a normal image.")
        for name in text.split("|"):
            name = name.strip()
            if name not in known:
                raise BadInput(
                    f"{source} line {row}: unknown finding {name!r} in 'Finding Labels'; "
                    f"expected one of {sorted(known)}."
                )
            if name in columns:
                columns[name][position] = 1
    return pd.DataFrame(columns, index=findings.index)


def build_metadata(data_dir: str | Path | None = None, labels: tuple[str, ...] = config.LABELS) -> pd.DataFrame:
    """One row per image file present in the data directory, with course-compatible columns.

    Returns:
        DataFrame with ``Image``, one 0/1 column per label, ``PatientId``, ``ViewPosition`` and
        ``Resolution`` (the file's side in pixels, read from the file). An image present in both
        ``images/`` and ``images-64/`` is listed once, from ``images/``.
    """
    root = config.data_dir(data_dir)
    label_file = root / config.LABEL_FILE
    table = read_label_file(label_file)
    folders = image_folders(root)
    file_of_image = {}
    for folder in reversed(folders):  # images/ last, so that it wins over images-64/
        if folder.is_dir():
            file_of_image.update({path.name: path for path in folder.iterdir()})
    present = table[table["Image Index"].isin(file_of_image)].copy()
    present["Resolution"] = [image_side(file_of_image[name]) for name in present["Image Index"]]
    findings = findings_to_columns(present["Finding Labels"], labels, source=str(label_file))
    metadata = pd.concat(
        [
            present[["Image Index"]].rename(columns={"Image Index": "Image"}),
            findings,
            present[["Patient ID", "View Position", "Resolution"]].rename(
                columns={"Patient ID": "PatientId", "View Position": "ViewPosition"}
            ),
        ],
        axis=1,
    )
    return metadata.sort_values("Image").reset_index(drop=True)


def image_folders(root: Path) -> list[Path]:
    """``images/`` and ``images-64/`` of a data directory.

    Raises:
        FileNotFoundError: naming the directory and what to do, if neither holds a file.
    """
    folders = [root / config.FULL_RESOLUTION_DIR, root / config.LOW_RESOLUTION_DIR]
    if not any(folder.is_dir() and any(folder.iterdir()) for folder in folders):
        raise FileNotFoundError(
            f"{root} has no images: neither {config.FULL_RESOLUTION_DIR}/ nor {config.LOW_RESOLUTION_DIR}/ holds "
            f"a file. Point --data-dir (or ${config.DATA_DIR_VARIABLE}) at the NIH data directory, or fetch the "
            "images into it with `python download_data.py`."
        )
    return folders


def image_side(path: Path) -> int:
    """The longer side of an image file in pixels, read from its header (the pixels are not decoded).

    Raises:
        ValueError: naming the file, if it is not a readable image.
    """
    try:
        with Image.open(path) as image:
            return max(image.size)
    except (OSError, SyntaxError) as error:
        raise BadInput(f"{path}: not a readable image ({error}); re-download it or delete it.") from error


def is_low_resolution(frame: pd.DataFrame | pd.Series) -> pd.Series | bool:
    """True for the rows of a metadata/split table (or the one row) whose file lies in ``images-64/``."""
    return frame["Resolution"] <= LOW_RESOLUTION


def image_path(row: pd.Series, data_dir: Path) -> Path:
    """Where the file of a metadata/split row lives."""
    folder = config.LOW_RESOLUTION_DIR if is_low_resolution(row) else config.FULL_RESOLUTION_DIR
    return data_dir / folder / row["Image"]


def iterative_stratification(
    label_matrix: np.ndarray,
    fractions: tuple[float, ...],
    rng: np.random.Generator,
    placed: np.ndarray | None = None,
) -> np.ndarray:
    """Assign each row of a multi-label matrix to a fold (Sechidis et al., ECML PKDD 2011).

    The rarest label still unassigned is dealt out first, each row going to the fold that most
    lacks that label, so rare findings are spread as evenly as their counts allow.

    Args:
        placed: optional fold index per row, -1 for rows still to place. Placed rows keep their
            fold and count towards its share, so new rows fill what the folds lack.

    Returns:
        int array of fold indices, one per row.
    """
    n_rows = len(label_matrix)
    fractions = np.asarray(fractions, dtype=float)
    folds = np.full(n_rows, -1) if placed is None else np.asarray(placed, dtype=int).copy()
    wanted_per_label = np.outer(fractions, label_matrix.sum(axis=0))
    wanted_rows = fractions * n_rows
    for fold in range(len(fractions)):
        wanted_per_label[fold] -= label_matrix[folds == fold].sum(axis=0)
        wanted_rows[fold] -= (folds == fold).sum()
    while (folds < 0).any():
        remaining = folds < 0
        counts = label_matrix[remaining].sum(axis=0)
        if counts.sum() == 0:
            rows = np.flatnonzero(remaining)
            label = None
        else:
            label = np.argmin(np.where(counts > 0, counts, np.inf))
            rows = np.flatnonzero(remaining & (label_matrix[:, label] > 0))
        for row in rng.permutation(rows):
            need = wanted_per_label[:, label] if label is not None else wanted_rows
            # Ties broken by the fold with most room left, then at random.
            score = np.lexsort((rng.random(len(fractions)), wanted_rows, need))
            fold = score[-1]
            folds[row] = fold
            wanted_per_label[fold] -= label_matrix[row]
            wanted_rows[fold] -= 1
    return folds


def split_by_patient(
    metadata: pd.DataFrame,
    labels: tuple[str, ...] = config.LABELS,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = config.SEED,
    previous: dict[str, pd.DataFrame] | None = None,
) -> dict[str, pd.DataFrame]:
    """Split full-resolution images into train/valid/test by patient, stratified over the labels.

    Low-resolution (64 px) images only ever go to training, and those whose patient is in
    valid or test are dropped so that no patient crosses splits.

    Args:
        previous: earlier splits to extend (``{"train": frame, ...}``, e.g. the committed CSVs).
            Each of their patients stays in its split, so a model trained on the earlier training
            split is never scored on its own patients; only new patients are placed, filling what
            each split lacks towards ``fractions``.
    """
    full = metadata[~is_low_resolution(metadata)]
    low = metadata[is_low_resolution(metadata)]
    # Stratify patients on "has ever shown this finding", plus an all-normal flag.
    per_patient = full.groupby("PatientId")[list(labels)].max()
    per_patient["normal"] = (per_patient.sum(axis=1) == 0).astype(int)
    earlier = {
        patient: fold
        for fold, name in enumerate(SPLITS)
        for patient in (previous or {}).get(name, {}).get("PatientId", [])
    }
    placed = per_patient.index.map(lambda patient: earlier.get(patient, -1)).to_numpy()
    folds = iterative_stratification(per_patient.to_numpy(), fractions, np.random.default_rng(seed), placed)
    fold_of_patient = {**earlier, **dict(zip(per_patient.index, folds))}
    splits = {name: full[full["PatientId"].map(fold_of_patient) == i] for i, name in enumerate(SPLITS)}
    low = low[low["PatientId"].map(fold_of_patient).fillna(0) == 0]
    splits["train"] = pd.concat([splits["train"], low])
    return {name: frame.sort_values("Image").reset_index(drop=True) for name, frame in splits.items()}


def split_summary(splits: dict[str, pd.DataFrame], labels: tuple[str, ...] = config.LABELS) -> pd.DataFrame:
    """Images, patients and positives per label for each split (one column per split)."""
    rows = {}
    for name, frame in splits.items():
        rows[name] = {
            "images": len(frame),
            "images at 64 px": int(is_low_resolution(frame).sum()),
            "patients": frame["PatientId"].nunique(),
            **{label: int(frame[label].sum()) for label in labels},
        }
    return pd.DataFrame(rows)


def read_split(name: str, split_dir: str | Path = config.SPLIT_DIR) -> pd.DataFrame:
    """Read one of the committed split CSVs (``train``, ``valid`` or ``test``).

    Raises:
        FileNotFoundError, ValueError: naming the file, if it is missing, unreadable or lacks a column;
            naming the line and the column of a label that is not 0 or 1, or of a patient ID or a
            resolution that is not a whole number.
    """
    path = Path(split_dir) / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"Split file {path} not found: create it with `python split_data.py`.")
    remedy = "Write the splits again with `python split_data.py`."
    table = read_csv(path, SPLIT_COLUMNS, remedy)
    # An empty cell or a "yes" would otherwise become NaN, or a bare conversion error far from here.
    expected = {"PatientId": WHOLE_NUMBER, "Resolution": WHOLE_NUMBER}
    expected |= {label: ZERO_OR_ONE for label in (*config.LABELS, config.NO_FINDING) if label in table}
    for column, kind in expected.items():
        checked_numbers(table, column, path, table.index + 2, "Image", kind, remedy)
    return table.astype({column: int for column in expected})


def check_for_leakage(df1: pd.DataFrame, df2: pd.DataFrame, patient_col: str) -> bool:
    """Return True if any patient appears in both data frames."""
    return bool(set(df1[patient_col]) & set(df2[patient_col]))


def count_shared_patients(df1: pd.DataFrame, df2: pd.DataFrame, patient_col: str) -> int:
    """How many patients appear in both data frames."""
    return len(set(df1[patient_col]) & set(df2[patient_col]))


def compute_class_freqs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of positive and of negative examples per class.

    Args:
        labels: (N, num_classes) array of 0/1 labels.

    Returns:
        positive_frequencies, negative_frequencies: (num_classes,) arrays.
    """
    positive_frequencies = np.mean(labels, axis=0)
    return positive_frequencies, 1 - positive_frequencies


def label_matrix(frame: pd.DataFrame, labels: tuple[str, ...] = config.LABELS) -> np.ndarray:
    """(N, len(labels)) float32 0/1 matrix; ``No Finding`` is derived (no finding positive) if asked for."""
    columns = []
    for label in labels:
        if label == config.NO_FINDING and label not in frame:
            columns.append((frame[list(config.LABELS)].sum(axis=1) == 0).to_numpy())
        elif label not in frame:
            raise BadInput(f"Split table has no column {label!r}; regenerate it with `python split_data.py`.")
        else:
            columns.append(frame[label].to_numpy())
    return np.stack(columns, axis=1).astype(np.float32)
