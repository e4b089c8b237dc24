"""The command-line scripts' own behaviour: split_data.py's all-or-nothing write, the scripts' errors
without a traceback, export_model.py's refusal of an unfinished run and its export of a tiny real one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import export_model
import split_data
import train
from cxr import config, data, gradcam, images
from cxr.inference import PER_IMAGE, load_shipped_model
from cxr.model import build_densenet121, load_pretrained_weights
from cxr.run_directory import RunDirectory

REPO_ROOT = Path(__file__).resolve().parents[1]
FINDINGS = [label for label in config.FOUR_CLASS_LABELS if label != config.NO_FINDING]


@pytest.mark.data
def test_split_data_leaves_the_earlier_splits_whole_when_a_write_fails(nih_dir, tmp_path, monkeypatch):
    for name in ("train", "valid", "test", "split_summary"):
        shutil.copy(config.SPLIT_DIR / f"{name}.csv", tmp_path / f"{name}.csv")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    written = []
    real_write_text = Path.write_text

    def fail_on_the_third_file(self, text, *args, **kwargs):
        written.append(self.name)
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fail_on_the_third_file)
    monkeypatch.setattr(sys, "argv", ["split_data.py", "--output-dir", str(tmp_path), "--fresh", "--seed", "7"])
    with pytest.raises(OSError, match="No space"):
        split_data.main()
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # no partial file left either


def test_export_names_what_an_unfinished_run_lacks(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["export_model.py", str(tmp_path)])
    with pytest.raises(SystemExit) as stopped:
        export_model.main()
    message = str(stopped.value)
    missing = "state.json, normalisation.json, best.weights.h5 missing"
    assert f"{tmp_path} is not a finished training run: {missing}" in message
    assert "train.py" in message


def test_export_refuses_a_destination_it_cannot_write_before_reading_the_run(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("a file, where the destination's folder should be")
    destination = tmp_path / "file" / "model"
    monkeypatch.setattr(sys, "argv", ["export_model.py", str(tmp_path / "no run"), "--destination", str(destination)])
    monkeypatch.setattr(export_model, "read_run", lambda run_dir: pytest.fail("the run was read"))
    with pytest.raises(SystemExit, match=rf"--destination {destination}: its folder cannot be created"):
        export_model.main()


def test_export_refuses_a_destination_folder_it_cannot_write(tmp_path, monkeypatch):
    monkeypatch.setattr(export_model.os, "access", lambda path, mode: False)  # as for a read-only folder
    destination = tmp_path / "model"
    monkeypatch.setattr(sys, "argv", ["export_model.py", str(tmp_path / "no run"), "--destination", str(destination)])
    monkeypatch.setattr(export_model, "read_run", lambda run_dir: pytest.fail("the run was read"))
    with pytest.raises(SystemExit, match=rf"its folder {tmp_path} is not writable"):
        export_model.main()


def test_export_names_a_run_file_that_is_not_json(tmp_path, monkeypatch):
    for name in ("config.json", "state.json", "normalisation.json", "best.weights.h5"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "state.json").write_text('{"epoch": ')  # damaged: the run writes it atomically
    monkeypatch.setattr(sys, "argv", ["export_model.py", str(tmp_path)])
    with pytest.raises(SystemExit, match=rf"{tmp_path / 'state.json'}: not valid JSON .*train.py"):
        export_model.main()


def test_split_data_reports_a_bad_split_file_without_a_traceback(tmp_path, monkeypatch, capsys):
    for name in data.SPLITS:
        shutil.copy(config.SPLIT_DIR / f"{name}.csv", tmp_path / f"{name}.csv")
    valid = pd.read_csv(tmp_path / "valid.csv", dtype=str)
    valid.loc[4, "Effusion"] = "yes"
    valid.to_csv(tmp_path / "valid.csv", index=False)
    monkeypatch.setattr(sys, "argv", ["split_data.py", "--output-dir", str(tmp_path)])
    assert split_data.main() == 1
    expected = f"error: {tmp_path / 'valid.csv'} line 6 (Image {valid.loc[4, 'Image']}), column 'Effusion': 'yes'"
    assert expected in capsys.readouterr().err


def test_train_names_a_damaged_run_file_without_a_traceback(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text('{"epoch": ')
    assert train.main(["--output-dir", str(run), "--epochs", "1", "--image-size", "32"]) == 1
    assert f"error: {run / 'state.json'}: not valid JSON" in capsys.readouterr().err


def test_train_reports_a_missing_data_directory_without_a_traceback(tmp_path, capsys):
    status = train.main(["--output-dir", str(tmp_path / "run"), "--data-dir", str(tmp_path / "nowhere"),
                         "--epochs", "1", "--image-size", "32"])
    assert status == 1
    assert f"error: NIH data directory {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


def tiny_splits(folder: Path, per_finding: int = 8) -> Path:
    """Subsets of the committed splits (so still patient-disjoint) with positives of every finding of the
    4-class variant and images without a finding, none of the 64-px ones."""
    folder.mkdir()
    for name in ("train", "valid", "test"):
        frame = pd.read_csv(config.SPLIT_DIR / f"{name}.csv")
        frame = frame[~data.is_low_resolution(frame)]
        chosen = [frame[frame[finding] == 1].head(per_finding) for finding in FINDINGS]
        chosen.append(frame[frame[list(config.LABELS)].sum(axis=1) == 0].head(per_finding))
        pd.concat(chosen).drop_duplicates("Image").to_csv(folder / f"{name}.csv", index=False)
    return folder


@pytest.mark.slow
@pytest.mark.data
def test_export_of_a_tiny_run_reads_back_as_the_runs_model(nih_dir, tmp_path, monkeypatch):
    splits, run = tiny_splits(tmp_path / "splits"), tmp_path / "run"
    trained = subprocess.run(
        [sys.executable, "train.py", "--output-dir", str(run), "--split-dir", str(splits), "--labels", "4",
         "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--cache-dir", str(tmp_path / "cache"),
         "--blur", "0.5", "--verbose", "2"],
        cwd=REPO_ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    # The export decodes its images into this test's folder, not the repository's shared cache.
    load_images = images.load_images
    monkeypatch.setattr(images, "load_images", lambda frame, root, size, source="split", cache_dir=None, **options:
                        load_images(frame, root, size, source, tmp_path / "cache", **options))
    destination = tmp_path / "model" / "tiny"
    destination.parent.mkdir()
    monkeypatch.setattr(sys, "argv", ["export_model.py", str(run), "--destination", str(destination)])

    export_model.main()

    assert sorted(path.name for path in destination.parent.iterdir()) == ["tiny.json", "tiny.weights.h5"]
    card = json.loads((destination.parent / "tiny.json").read_text())
    labels = list(config.FOUR_CLASS_LABELS)
    assert card["labels"] == labels and card["image_size"] == 32 and card["weights_dtype"] == "float32"
    assert card["split_dir"] == str(splits) and card["training"]["labels"] == "4"
    assert set(card["thresholds"]) == set(card["thresholds_youden"]) == set(labels)
    assert all(set(card["calibration"][name]) == set(labels) for name in ("shift", "slope", "intercept"))
    assert set(card["mean_auroc"]) == {"valid", "test"}
    assert card["blur"] == 0.5  # inference blurs as training did
    # GradCAM's layer: the candidate that pointed inside the most boxes of the validation images.
    rates = card["validation_pointing_game_by_gradcam_layer"]
    assert list(rates) == list(gradcam.CANDIDATE_LAYERS)
    assert card["gradcam_layer"] == max(gradcam.CANDIDATE_LAYERS, key=lambda layer: rates[layer])
    network, loaded_card, statistics = load_shipped_model(destination)
    assert loaded_card["labels"] == labels
    normalisation = card["normalisation"]
    per_image = card["standardisation"] == PER_IMAGE
    assert statistics == (PER_IMAGE if per_image else (normalisation["mean"], normalisation["std"]))
    best = load_pretrained_weights(build_densenet121(len(labels), 32), run / RunDirectory.BEST_WEIGHTS)
    for shipped, trained_weights in zip(network.get_weights(), best.get_weights(), strict=True):
        np.testing.assert_array_equal(shipped, trained_weights)


def test_train_reports_a_bad_cell_of_a_split_file_without_a_traceback(tmp_path, capsys):
    splits = tmp_path / "splits"
    shutil.copytree(config.SPLIT_DIR, splits, ignore=shutil.ignore_patterns("cache"))
    frame = pd.read_csv(splits / "train.csv")
    frame["Hernia"] = frame["Hernia"].astype(object)
    frame.loc[3, "Hernia"] = "maybe"
    frame.to_csv(splits / "train.csv", index=False)
    status = train.main(["--output-dir", str(tmp_path / "run"), "--split-dir", str(splits), "--epochs", "1",
                         "--image-size", "32"])
    assert status == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {splits / 'train.csv'} line 5 (Image {frame.loc[3, 'Image']}), column 'Hernia'")


def test_train_keeps_the_traceback_of_an_error_that_is_not_the_users(tmp_path, monkeypatch):
    def broken(cfg):
        raise ValueError("a shape mismatch inside Keras")  # a bug: no message for the user to act on

    monkeypatch.setattr(train, "train", broken)
    with pytest.raises(ValueError, match="shape mismatch"):
        train.main(["--output-dir", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32"])
