"""The command-line scripts' own behaviour: split_data.py's all-or-nothing write, export_model.py's
refusal of an unfinished run."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import export_model
import split_data
from cxr import config


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
    assert f"{tmp_path} is not a finished training run: state.json, normalisation.json, best.weights.h5 missing" in message
    assert "train.py" in message
