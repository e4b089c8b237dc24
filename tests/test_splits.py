"""Data tests: the committed split CSVs against the real NIH data directory."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import config, data

SPLIT_COLUMNS = ["Image", *config.LABELS, "PatientId", "ViewPosition", "Resolution"]
PAIRS = list(itertools.combinations(data.SPLITS, 2))

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def splits():
    try:
        return {name: data.read_split(name) for name in data.SPLITS}
    except FileNotFoundError as error:
        pytest.skip(f"committed split CSVs not available ({error})")


@pytest.fixture(scope="module")
def metadata(nih_dir):
    return data.build_metadata(nih_dir)


@pytest.mark.parametrize("name", data.SPLITS)
def test_split_has_14_binary_labels_and_metadata_columns(splits, name):
    frame = splits[name]
    assert list(frame.columns) == SPLIT_COLUMNS
    assert len(frame) > 0
    for label in config.LABELS:
        assert set(frame[label].unique()) <= {0, 1}, f"{name}.csv: {label} is not 0/1"
    assert frame["Image"].is_unique
    assert set(frame["Resolution"].unique()) <= {64, 256, 320, 512}
    assert set(frame["ViewPosition"].unique()) <= {"PA", "AP"}
    assert not frame.isna().any().any()


@pytest.mark.parametrize("first, second", PAIRS)
def test_no_patient_is_in_two_splits(splits, first, second):
    assert data.check_for_leakage(splits[first], splits[second], "PatientId") is False
    assert data.count_shared_patients(splits[first], splits[second], "PatientId") == 0


@pytest.mark.parametrize("first, second", PAIRS)
def test_no_image_is_in_two_splits(splits, first, second):
    assert not set(splits[first]["Image"]) & set(splits[second]["Image"])


@pytest.mark.parametrize("name", ["valid", "test"])
def test_valid_and_test_hold_only_full_resolution_images(splits, name):
    assert (splits[name]["Resolution"] >= 256).all()


def test_every_full_resolution_image_is_in_exactly_one_split(nih_dir, splits):
    on_disk = set(os.listdir(nih_dir / config.FULL_RESOLUTION_DIR))
    listed = pd.concat(splits.values())
    full = listed[~data.is_low_resolution(listed)]["Image"]
    assert full.is_unique
    assert set(full) == on_disk


@pytest.mark.parametrize("name", data.SPLITS)
def test_resolution_is_each_files_real_size(nih_dir, splits, name):
    frame = splits[name].sample(n=40, random_state=0)
    for _, row in frame.iterrows():
        with Image.open(data.image_path(row, nih_dir)) as image:
            assert image.size == (row["Resolution"], row["Resolution"]), row["Image"]


@pytest.mark.parametrize("name", ["valid", "test"])
def test_valid_and_test_each_hold_about_15_percent_of_full_resolution_images(nih_dir, splits, name):
    full_resolution_files = len(os.listdir(nih_dir / config.FULL_RESOLUTION_DIR))
    assert abs(len(splits[name]) / full_resolution_files - 0.15) < 0.01


def test_every_split_row_points_to_an_existing_file(nih_dir, splits):
    missing = [
        (name, row["Image"])
        for name, frame in splits.items()
        for _, row in frame.iterrows()
        if not data.image_path(row, nih_dir).is_file()
    ]
    assert not missing, f"rows without a file: {missing[:5]}"


def test_low_resolution_images_are_only_in_train(nih_dir, splits):
    low = splits["train"][data.is_low_resolution(splits["train"])]
    assert set(low["Image"]) <= set(os.listdir(nih_dir / config.LOW_RESOLUTION_DIR))
    assert not set(low["Image"]) & set(os.listdir(nih_dir / config.FULL_RESOLUTION_DIR))
    held_out_patients = set(splits["valid"]["PatientId"]) | set(splits["test"]["PatientId"])
    low_patients = set(low["PatientId"])
    assert not low_patients & held_out_patients


@pytest.mark.parametrize("name", data.SPLITS)
def test_extending_the_committed_splits_on_the_same_data_reproduces_them(metadata, splits, name):
    """What `python split_data.py` does: the committed splits are a fixed point of extending them."""
    regenerated = data.split_by_patient(metadata, seed=config.SEED, previous=splits)
    committed = (config.SPLIT_DIR / f"{name}.csv").read_text()
    assert regenerated[name].to_csv(index=False) == committed


def test_extending_keeps_every_earlier_patient_on_its_side_and_places_new_ones(metadata, splits):
    # Forget a third of the patients, as if their images had just arrived, and extend the rest.
    rng = np.random.default_rng(0)
    forgotten = {patient for patient in metadata["PatientId"].unique() if rng.random() < 1 / 3}
    earlier = {name: frame[~frame["PatientId"].isin(forgotten)] for name, frame in splits.items()}
    extended = data.split_by_patient(metadata, seed=config.SEED, previous=earlier)
    for name in data.SPLITS:
        assert set(earlier[name]["Image"]) <= set(extended[name]["Image"]), name
    for first, second in PAIRS:
        assert data.count_shared_patients(extended[first], extended[second], "PatientId") == 0
    full = {name: (~data.is_low_resolution(frame)).sum() for name, frame in extended.items()}
    for name, fraction in zip(data.SPLITS, (0.7, 0.15, 0.15)):
        assert abs(full[name] / sum(full.values()) - fraction) < 0.03, full


def test_a_fresh_split_with_another_seed_gives_another_split_without_leakage(metadata, splits):
    other = data.split_by_patient(metadata, seed=config.SEED + 1)
    assert set(other["test"]["Image"]) != set(splits["test"]["Image"])
    assert set(other["valid"]["Image"]) != set(splits["valid"]["Image"])
    for first, second in PAIRS:
        assert data.check_for_leakage(other[first], other[second], "PatientId") is False


@pytest.mark.parametrize("name", ["valid", "test"])
@pytest.mark.parametrize("label", config.LABELS)
def test_every_label_has_a_positive_in_valid_and_test(splits, name, label):
    assert splits[name][label].sum() >= 1, f"{name}.csv has no positive {label}"


def test_split_sizes_are_near_70_15_15_of_full_resolution_patients(splits):
    patients = {name: frame.loc[~data.is_low_resolution(frame), "PatientId"].nunique()
                for name, frame in splits.items()}
    total = sum(patients.values())
    for name, fraction in zip(data.SPLITS, (0.7, 0.15, 0.15)):
        assert abs(patients[name] / total - fraction) < 0.03, patients
