"""train.py beyond one device: two MultiWorkerMirroredStrategy workers on 127.0.0.1, one of them killed
and both restarted, and MirroredStrategy over two logical CPU devices.

The workers run ``tests/distributed_train.py`` (train.py with a small stand-in for DenseNet121) on a
tiny generated dataset, so that the whole file takes about a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import free_port
from PIL import Image

from cxr import config
from cxr.run_directory import RunDirectory

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_train.py")
EPOCHS = 6
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def flags(tmp_path_factory) -> list[str]:
    """train.py flags for a run of seconds on 16 training and 4 validation images (80-px PNGs) whose
    findings are all present on a noisy image and all absent on a smooth one: a loss that can fall."""
    root = tmp_path_factory.mktemp("tiny-data")
    data_dir, split_dir = root / "nih", root / "splits"
    (data_dir / config.FULL_RESOLUTION_DIR).mkdir(parents=True)
    split_dir.mkdir()
    rng = np.random.default_rng(0)
    smooth = np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (80, 1))
    rows = []
    for patient in range(20):
        name, present = f"{patient:08d}_000.png", patient % 2
        pixels = rng.integers(0, 256, (80, 80), np.uint8) if present else np.roll(smooth, patient, axis=1)
        Image.fromarray(pixels).save(data_dir / config.FULL_RESOLUTION_DIR / name)
        rows.append({"Image": name, **dict.fromkeys(config.LABELS, present), "PatientId": patient,
                     "ViewPosition": "PA", "Resolution": 80})  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.iloc[:16].to_csv(split_dir / "train.csv", index=False)
    frame.iloc[16:].to_csv(split_dir / "valid.csv", index=False)
    return ["--data-dir", str(data_dir), "--split-dir", str(split_dir), "--cache-dir", str(root / "cache"),
            "--image-size", "32", "--batch-size", "4", "--epochs", str(EPOCHS), "--learning-rate", "0.01",
            "--reduce-lr-patience", "100", "--precision", "float32", "--verbose", "2",
            "--rotation", "0", "--zoom", "0", "--shift", "0", "--no-horizontal-flip"]  # fmt: skip


def _start(report: Path, log: Path, arguments: list[str], **environment: str) -> subprocess.Popen:
    with open(log, "w") as sink:
        return subprocess.Popen(
            [sys.executable, str(WORKER), str(report), *arguments], cwd=REPO_ROOT, stdout=sink,
            stderr=subprocess.STDOUT,
            # PYTHONPATH: the worker imports train.py, a script beside the package, not installed with it.
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **environment},
        )  # fmt: skip


def _start_workers(output: Path, flags: list[str], session: str) -> list[subprocess.Popen]:
    """Two workers of one multi-worker run on free ports of this machine; worker 0 is the chief."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    return [
        _start(output.parent / f"{session}-report{index}.npz", output.parent / f"{session}-worker{index}.log",
               ["--output-dir", str(output), "--strategy", "multi-worker", *flags],
               TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        for index in range(2)
    ]  # fmt: skip


def _finish(processes: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for process, log in zip(processes, logs):
            status = process.wait(timeout=max(1, deadline - time.monotonic()))
            assert status == 0, f"{log.name} exited with {status}:\n{log.read_text()[-3000:]}"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _read_state(output: Path) -> dict:
    try:
        return json.loads((output / RunDirectory.STATE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.fixture(scope="module")
def two_workers(flags, tmp_path_factory) -> dict:
    """A two-worker run: the chief killed (SIGKILL) once it has committed an epoch, the other worker
    stopped too, then both started again with the same command to the end."""
    output = tmp_path_factory.mktemp("multi-worker") / "run"
    first = _start_workers(output, flags, "first")
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while _read_state(output).get("epoch", 0) < 1:
            if any(process.poll() is not None for process in first) or time.monotonic() > deadline:
                log = (output.parent / "first-worker0.log").read_text()[-3000:]
                pytest.fail(f"no epoch committed (exits {[p.poll() for p in first]}):\n{log}")
            time.sleep(0.05)
        first[0].send_signal(signal.SIGKILL)
        first[0].wait()
    finally:
        for process in first:  # the other worker waits for the chief for ever: stop it too
            process.kill()
            process.wait()
    committed = _read_state(output)
    second = _start_workers(output, flags, "second")
    _finish(second, [output.parent / f"second-worker{index}.log" for index in range(2)])
    return {
        "output": output,
        "killed": first[0].returncode,
        "committed": committed,
        "logs": [(output.parent / f"second-worker{index}.log").read_text() for index in range(2)],
        "reports": [np.load(output.parent / f"second-report{index}.npz") for index in range(2)],
    }


def _weights(report) -> list[np.ndarray]:
    count = sum(name.startswith("weight") for name in report.files)
    return [report[f"weight{index}"] for index in range(count)]


@pytest.mark.slow
def test_both_workers_resume_from_the_epoch_the_chief_committed_before_the_kill(two_workers):
    output, committed = two_workers["output"], two_workers["committed"]
    assert two_workers["killed"] == -signal.SIGKILL
    assert 1 <= committed["epoch"] < EPOCHS, "the kill should have come part-way"
    for log in two_workers["logs"]:
        assert f"Resuming {output} after epoch {committed['epoch']} " in log
    assert _read_state(output)["epoch"] == EPOCHS
    # Only the chief writes the run: every epoch logged once, each worker's copies in their own folder.
    assert pd.read_csv(output / RunDirectory.LOG)["epoch"].tolist() == list(range(EPOCHS))
    assert _read_state(output / "worker-1")["epoch"] == EPOCHS
    assert not list(output.glob("partial-*")) and (output / RunDirectory.SUMMARY).is_file()


@pytest.mark.slow
def test_the_workers_end_with_identical_weights_and_a_falling_loss(two_workers):
    chief, other = two_workers["reports"]
    assert int(chief["replicas"]) == int(other["replicas"]) == 1
    assert len(_weights(chief)) == 8  # convolution 2, batch norm 4 (with its moving averages), head 2
    for got, want in zip(_weights(other), _weights(chief), strict=True):
        np.testing.assert_array_equal(got, want)
    loss = pd.read_csv(two_workers["output"] / RunDirectory.LOG)["loss"]
    assert loss.iloc[-1] < loss.iloc[0], loss.tolist()


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_keeps_the_replicas_identical_and_the_loss_falls(flags, tmp_path):
    output, report, log = tmp_path / "run", tmp_path / "report.npz", tmp_path / "mirrored.log"
    process = _start(report, log, ["--output-dir", str(output), "--strategy", "mirrored", *flags], CXR_LOGICAL_CPUS="2")
    _finish([process], [log])
    replicas = np.load(report)
    assert int(replicas["replicas"]) == 2
    assert float(replicas["spread"]) == 0.0
    loss = pd.read_csv(output / RunDirectory.LOG)["loss"]
    assert loss.iloc[-1] < loss.iloc[0], loss.tolist()
    assert json.loads((output / RunDirectory.SUMMARY).read_text())["epochs_completed"] == EPOCHS
