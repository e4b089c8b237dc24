"""Label sets, defaults, and where the data lives."""

from __future__ import annotations

import os
from pathlib import Path

# The 14 findings of ChestX-ray14, in the course's (alphabetical) order.
LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"

# The 4-class variant of the course's sister projects: three common findings and "No Finding".
FOUR_CLASS_LABELS = ("Effusion", "Atelectasis", "Infiltration", NO_FINDING)
LABEL_SETS = {"14": LABELS, "4": FOUR_CLASS_LABELS}

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPLIT_DIR = PROJECT_ROOT / "data"
MODEL_DIR = PROJECT_ROOT / "models"
SHIPPED_MODEL = MODEL_DIR / "densenet121_cxr14"  # the prefix of its .weights.h5 and .json

# Where the NIH files are read from: the environment variable wins, then the repository's neighbour.
DATA_DIR_VARIABLE = "CXR_DATA_DIR"
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "nih"

LABEL_FILE = "Data_Entry_2017_v2020.csv.gz"
BBOX_FILE = "BBox_List_2017.csv.gz"
EXPERT_LABEL_FILE = "google2019_nih-chest-xray-labels.csv.gz"
FULL_RESOLUTION_DIR = "images"
LOW_RESOLUTION_DIR = "images-64"

SEED = 42


def chosen_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The NIH data directory ``data_dir`` returns, whether or not it exists."""
    return Path(path or os.environ.get(DATA_DIR_VARIABLE) or DEFAULT_DATA_DIR).expanduser()


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """Return the NIH data directory: ``path`` if given, else ``$CXR_DATA_DIR``, else the default.

    Raises:
        FileNotFoundError: if the directory does not exist, with what to do about it.
    """
    chosen = chosen_data_dir(path)
    if not chosen.is_dir():
        raise FileNotFoundError(
            f"NIH data directory {chosen} does not exist. Set ${DATA_DIR_VARIABLE} (or pass data_dir) "
            "to the folder holding the label file and images/, or fetch the release with "
            "`python download_data.py`."
        )
    return chosen
