"""Shared test setup: make the repository importable however pytest is started, and shared fixtures."""

import sys
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="module")
def test_image() -> Path:
    """The first full-resolution image of the committed test split (skips if the NIH data is absent)."""
    from cxr import config, data

    try:
        data_dir = config.data_dir()
    except FileNotFoundError as error:
        pytest.skip(f"NIH data directory not available ({error})")
    frame = pd.read_csv(config.SPLIT_DIR / "test.csv")
    path = data_dir / config.FULL_RESOLUTION_DIR / frame.loc[~data.is_low_resolution(frame), "Image"].iloc[0]
    if not path.is_file():
        pytest.skip(f"test image {path} not available")
    return path
