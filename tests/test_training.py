"""The resumable training loop: a real tiny run killed with SIGKILL and resumed, plus unit tests."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

import train as train_script
from cxr import config, images, run_directory, training
from cxr.model import build_densenet121, load_pretrained_weights, resolve_precision
from cxr.run_directory import ResumableCheckpoint, RunDirectory
from cxr.training import TrainConfig, make_optimizer, make_strategy

REPO_ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
KILL_DEADLINE_S = 400
RUN_TIMEOUT_S = 400


def _train_command(output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "--output-dir", str(output),
        "--image-size", "32",
        "--limit", "24",
        "--epochs", str(EPOCHS),
        "--batch-size", "8",
        "--verbose", "2",
        "--cache-dir", str(output / "cache"),
        *extra,
    ]  # fmt: skip


def _environment() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO_ROOT, env=_environment(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )


def _read_state(output: Path) -> dict | None:
    try:
        return json.loads((output / RunDirectory.STATE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _loadable(weights: Path) -> bool:
    """Whether ``weights`` load into the run's model and replace its classifier's initial weights (a file
    that loads but holds other or untrained values leaves them as they were)."""
    keras.utils.set_random_seed(config.SEED)
    model = build_densenet121(len(config.LABELS), 32)
    initial = model.layers[-1].get_weights()
    load_pretrained_weights(model, weights)
    return all(not np.array_equal(before, after) for before, after in zip(initial, model.layers[-1].get_weights()))


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, nih_dir) -> dict:
    """Start a tiny real run, SIGKILL it after its first committed epoch, then run it again to the end."""
    output = tmp_path_factory.mktemp("run")
    killed_log = output.parent / "killed-run.log"
    with open(killed_log, "w") as log:
        process = subprocess.Popen(
            _train_command(output), cwd=REPO_ROOT, env=_environment(), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + KILL_DEADLINE_S
            while True:
                state = _read_state(output)
                if state and state.get("epoch", 0) >= 1:
                    break
                if process.poll() is not None:
                    pytest.fail(f"train.py exited ({process.returncode}) before epoch 1:\n{killed_log.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no epoch committed within {KILL_DEADLINE_S} s:\n{killed_log.read_text()}")
                time.sleep(0.1)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    # Snapshot what the kill left behind before the resumed run overwrites it.
    snapshot = output.parent / "at-kill"
    snapshot.mkdir()
    state = _read_state(output)
    for name in (RunDirectory.STATE, RunDirectory.BEST_WEIGHTS, state["best_weights_file"]):
        shutil.copy(output / name, snapshot / name)
    resumed = _run(_train_command(output))
    return {
        "output": output,
        "kill_returncode": process.returncode,
        "snapshot": snapshot,
        "resumed": resumed,
    }


@pytest.mark.slow
def test_sigkill_leaves_committed_state_and_loadable_best_weights(killed_and_resumed):
    assert killed_and_resumed["kill_returncode"] == -signal.SIGKILL
    state = json.loads((killed_and_resumed["snapshot"] / RunDirectory.STATE).read_text())
    assert 1 <= state["epoch"] < EPOCHS, "the run should have been killed part-way"
    assert state["weights_file"] == f"epoch{state['epoch']:03d}.weights.h5"
    assert 1 <= state["best_epoch"] <= state["epoch"]
    assert state["best_weights_file"] == f"epoch{state['best_epoch']:03d}.weights.h5"
    snapshot = killed_and_resumed["snapshot"]
    assert _loadable(snapshot / RunDirectory.BEST_WEIGHTS)
    # best.weights.h5 holds the epoch state.json committed as the best, not a later uncommitted one.
    assert (snapshot / RunDirectory.BEST_WEIGHTS).read_bytes() == (snapshot / state["best_weights_file"]).read_bytes()


@pytest.mark.slow
def test_same_command_resumes_and_completes_every_epoch_once(killed_and_resumed):
    resumed, output = killed_and_resumed["resumed"], killed_and_resumed["output"]
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming" in resumed.stdout
    state = json.loads((output / RunDirectory.STATE).read_text())
    assert state["epoch"] == EPOCHS
    assert (output / state["weights_file"]).is_file()
    log = pd.read_csv(output / "log.csv")
    assert log["epoch"].tolist() == list(range(EPOCHS))
    summary = json.loads((output / "summary.json").read_text())
    assert summary["epochs_completed"] == EPOCHS
    assert summary["median_images_per_second"] > 0
    assert (log["images_per_second"] > 0).all()
    assert summary["image_size"] == 32 and summary["train_images"] == 24
    assert summary["precision"] == resolve_precision("auto")
    assert _loadable(output / RunDirectory.BEST_WEIGHTS)
    assert not list(output.glob("*.partial")) and not list(output.glob("partial-*"))
    assert sorted(p.name for p in output.glob("epoch*.weights.h5")) == sorted(
        {state["weights_file"], state["best_weights_file"]})
    assert (output / RunDirectory.BEST_WEIGHTS).read_bytes() == (output / state["best_weights_file"]).read_bytes()


@pytest.mark.slow
def test_rerunning_a_finished_run_returns_immediately(killed_and_resumed):
    output = killed_and_resumed["output"]
    log_before = (output / "log.csv").read_text()
    rerun = _run(_train_command(output))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "already finished" in rerun.stdout
    assert "Resuming" not in rerun.stdout
    assert (output / "log.csv").read_text() == log_before


@pytest.mark.slow
def test_changed_setting_in_the_same_output_dir_is_refused(killed_and_resumed):
    output = killed_and_resumed["output"]
    config_before = (output / "config.json").read_text()
    command = _train_command(output)
    command[command.index("--image-size") + 1] = "48"
    refused = _run(command)
    assert refused.returncode != 0
    assert "image_size" in refused.stderr
    assert "--output-dir" in refused.stderr
    assert (output / "config.json").read_text() == config_before


@pytest.mark.slow
def test_run_killed_before_its_summary_writes_it_without_training_more(killed_and_resumed):
    # A kill after the last epoch's state.json but before summary.json leaves exactly this.
    output = killed_and_resumed["output"]
    (output / "summary.json").unlink()
    weights_before = (output / RunDirectory.BEST_WEIGHTS).read_bytes()
    rerun = _run(_train_command(output))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    summary = json.loads((output / "summary.json").read_text())
    assert summary["epochs_completed"] == EPOCHS
    assert summary["median_images_per_second"] > 0
    assert pd.read_csv(output / "log.csv")["epoch"].tolist() == list(range(EPOCHS))
    assert json.loads((output / RunDirectory.STATE).read_text())["epoch"] == EPOCHS
    assert (output / RunDirectory.BEST_WEIGHTS).read_bytes() == weights_before


# --- ResumableCheckpoint and atomic writes ------------------------------------------------------------


def _tiny_model(optimizer: str | keras.optimizers.Optimizer = "adam") -> keras.Model:
    network = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid")])
    network.compile(
        optimizer=optimizer,
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(multi_label=True, num_labels=3, name="auc")],
    )
    return network


class _Snapshot(keras.callbacks.Callback):
    """Records the output directory after each epoch (runs after the checkpoint callback)."""

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = directory
        self.listings: list[tuple[dict, list[str]]] = []

    def on_epoch_end(self, epoch, logs=None):
        state = json.loads((self.directory / RunDirectory.STATE).read_text())
        self.listings.append((state, sorted(p.name for p in self.directory.iterdir())))


@pytest.mark.slow
def test_checkpoint_commits_state_atomically_and_keeps_one_last_epoch_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (rng.random((32, 3)) > 0.5).astype("float32")
    network = _tiny_model()
    reduce_lr = keras.callbacks.ReduceLROnPlateau("val_auc", mode="max", patience=5)
    early_stopping = keras.callbacks.EarlyStopping("val_auc", mode="max", patience=5)
    state: dict = {}
    tracked = {"reduce_lr": reduce_lr, "early_stopping": early_stopping}
    checkpoint = ResumableCheckpoint(RunDirectory(tmp_path), "val_auc", tracked, state)
    snapshot = _Snapshot(tmp_path)
    network.fit(
        x, y, validation_data=(x, y), epochs=3, batch_size=8, verbose=0,
        callbacks=[reduce_lr, early_stopping, checkpoint, snapshot],
    )  # fmt: skip
    for epoch, (saved, names) in enumerate(snapshot.listings, start=1):
        assert saved["epoch"] == epoch
        assert saved["weights_file"] in names
        kept = sorted({saved["weights_file"], saved["best_weights_file"]})
        assert [n for n in names if n.startswith("epoch")] == kept
        assert not [n for n in names if n.endswith(".partial") or n.startswith("partial-")]
        assert RunDirectory.BEST_WEIGHTS in names
    final = json.loads((tmp_path / RunDirectory.STATE).read_text())
    assert final["epoch"] == 3 and final["weights_file"] == "epoch003.weights.h5"
    assert set(final["callbacks"]) == {"reduce_lr", "early_stopping"}
    assert set(final["callbacks"]["reduce_lr"]) == {"wait", "cooldown_counter", "best"}
    assert final["learning_rate"] == pytest.approx(1e-3)
    # The saved weights really are the model's last weights.
    restored = _tiny_model()
    restored.load_weights(tmp_path / final["weights_file"])
    for got, want in zip(restored.get_weights(), network.get_weights()):
        np.testing.assert_array_equal(got, want)


def _checkpoint_after(directory: Path, monitored: list[float], state: dict | None = None):
    """A ResumableCheckpoint on a tiny model after epochs whose val_auc were ``monitored``.

    Before each epoch the model's weights are set to the epoch number, so that a file shows
    which epoch it holds (``_epoch_in``).
    """
    network = _tiny_model()
    state = {} if state is None else state
    tracked = {"reduce_lr": keras.callbacks.ReduceLROnPlateau("val_auc"),
               "early_stopping": keras.callbacks.EarlyStopping("val_auc")}  # fmt: skip
    checkpoint = ResumableCheckpoint(RunDirectory(directory), "val_auc", tracked, state)
    for callback in (*tracked.values(), checkpoint):
        callback.set_model(network)
        callback.on_train_begin()
    for value in monitored:
        epoch = state.get("epoch", 0)
        network.set_weights([np.full_like(w, epoch + 1) for w in network.get_weights()])
        checkpoint.on_epoch_end(epoch, {"val_auc": value})
    return checkpoint, state


def _epoch_in(path: Path) -> int:
    restored = _tiny_model()
    restored.load_weights(path)
    return int(restored.get_weights()[0].flat[0])


def test_best_weights_follow_the_committed_best_epoch_and_stale_files_go(tmp_path):
    _, state = _checkpoint_after(tmp_path, [0.6, 0.7, 0.65, 0.62])
    assert (state["epoch"], state["best_epoch"], state["best"]) == (4, 2, pytest.approx(0.7))
    assert sorted(p.name for p in tmp_path.glob("epoch*")) == ["epoch002.weights.h5", "epoch004.weights.h5"]
    assert _epoch_in(tmp_path / RunDirectory.BEST_WEIGHTS) == 2
    assert _epoch_in(tmp_path / state["weights_file"]) == 4
    _checkpoint_after(tmp_path, [0.8], state)
    assert sorted(p.name for p in tmp_path.glob("epoch*")) == ["epoch005.weights.h5"]
    assert _epoch_in(tmp_path / RunDirectory.BEST_WEIGHTS) == 5


def test_kill_before_the_commit_leaves_best_weights_at_the_committed_best(tmp_path, monkeypatch):
    _, state = _checkpoint_after(tmp_path, [0.6])
    committed = (tmp_path / RunDirectory.STATE).read_text()

    def killed(run, state):
        raise KeyboardInterrupt("killed before state.json is committed")

    monkeypatch.setattr(RunDirectory, "write_state", killed)
    with pytest.raises(KeyboardInterrupt):
        _checkpoint_after(tmp_path, [0.9], dict(state))  # a better epoch 2, written but never committed
    assert (tmp_path / RunDirectory.STATE).read_text() == committed
    assert _epoch_in(tmp_path / RunDirectory.BEST_WEIGHTS) == 1


def test_kill_between_the_commit_and_the_publish_is_repaired_on_resume(tmp_path, monkeypatch):
    _, state = _checkpoint_after(tmp_path, [0.6])
    with monkeypatch.context() as patch:
        patch.setattr(RunDirectory, "publish_best_weights", lambda *args: None)  # killed right after the commit
        _checkpoint_after(tmp_path, [0.9], state)
    assert state["best_weights_file"] == "epoch002.weights.h5"
    assert _epoch_in(tmp_path / RunDirectory.BEST_WEIGHTS) == 1
    RunDirectory(tmp_path).publish_best_weights(json.loads((tmp_path / RunDirectory.STATE).read_text()))
    assert _epoch_in(tmp_path / RunDirectory.BEST_WEIGHTS) == 2


def test_a_run_saved_before_best_weights_were_named_in_the_state_resumes(tmp_path):
    # Earlier runs wrote best.weights.h5 directly and named only the last epoch's file.
    _checkpoint_after(tmp_path, [0.7])
    os.replace(tmp_path / "epoch001.weights.h5", tmp_path / "last-epoch001.weights.h5")
    legacy = {"epoch": 1, "weights_file": "last-epoch001.weights.h5", "best": 0.7, "best_epoch": 1}
    RunDirectory(tmp_path).publish_best_weights(legacy)  # what a resume does: nothing to publish here
    assert _epoch_in(tmp_path / RunDirectory.BEST_WEIGHTS) == 1
    _, state = _checkpoint_after(tmp_path, [0.6], legacy)
    assert sorted(p.name for p in tmp_path.glob("*epoch*")) == ["epoch002.weights.h5"]
    assert _epoch_in(tmp_path / RunDirectory.BEST_WEIGHTS) == 1 and "best_weights_file" not in state
    _, state = _checkpoint_after(tmp_path, [0.8], state)
    assert state["best_weights_file"] == "epoch003.weights.h5"
    assert _epoch_in(tmp_path / RunDirectory.BEST_WEIGHTS) == 3


def test_publishing_the_same_best_weights_again_leaves_no_partial_file(tmp_path):
    # Every resume publishes the committed best again, usually to the link best.weights.h5 already is.
    _, state = _checkpoint_after(tmp_path, [0.6])
    RunDirectory(tmp_path).publish_best_weights(state)
    assert not list(tmp_path.glob("partial-*"))
    assert _epoch_in(tmp_path / RunDirectory.BEST_WEIGHTS) == 1


def test_best_weights_are_copied_where_hard_links_fail(tmp_path, monkeypatch):
    def no_links(*args):
        raise OSError("hard links not supported")

    monkeypatch.setattr(run_directory.os, "link", no_links)
    _, state = _checkpoint_after(tmp_path, [0.6, 0.7])
    assert _epoch_in(tmp_path / RunDirectory.BEST_WEIGHTS) == 2
    (tmp_path / state["best_weights_file"]).unlink()
    assert _epoch_in(tmp_path / RunDirectory.BEST_WEIGHTS) == 2  # a copy, not a link


def test_checkpoint_restores_callback_counters_on_resume(tmp_path):
    reduce_lr = keras.callbacks.ReduceLROnPlateau("val_auc", mode="max")
    early_stopping = keras.callbacks.EarlyStopping("val_auc", mode="max")
    state = {"callbacks": {"reduce_lr": {"wait": 2, "cooldown_counter": 1, "best": 0.7},
                           "early_stopping": {"wait": 4, "best": 0.7, "best_epoch": 3}}}  # fmt: skip
    tracked = {"reduce_lr": reduce_lr, "early_stopping": early_stopping}
    checkpoint = ResumableCheckpoint(RunDirectory(tmp_path), "val_auc", tracked, state)
    checkpoint.on_train_begin()
    assert (reduce_lr.wait, reduce_lr.cooldown_counter, reduce_lr.best) == (2, 1, 0.7)
    assert (early_stopping.wait, early_stopping.best, early_stopping.best_epoch) == (4, 0.7, 3)


# --- optimizers and strategies ----------------------------------------------------------------------


def test_adam_is_the_default_optimizer_with_learning_rate_1e_3():
    optimizer = make_optimizer(TrainConfig(), steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert float(optimizer.learning_rate) == pytest.approx(1e-3)


def test_sgd_uses_momentum_0_9_and_learning_rate_0_01_by_default():
    optimizer = make_optimizer(TrainConfig(optimizer="sgd"), steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == pytest.approx(0.9)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)


def test_adamw_uses_the_configured_weight_decay_and_learning_rate():
    settings = TrainConfig(optimizer="adamw", learning_rate=5e-4, weight_decay=0.02)
    optimizer = make_optimizer(settings, steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert float(optimizer.learning_rate) == pytest.approx(5e-4)
    assert optimizer.weight_decay == pytest.approx(0.02)


def test_cosine_schedule_warms_up_then_decays_to_a_hundredth_of_the_rate():
    cfg = TrainConfig(schedule="cosine", learning_rate=1e-3, warmup_epochs=2, epochs=10)
    rate = training.make_learning_rate(cfg, steps_per_epoch=5)
    at = {step: float(rate(step)) for step in (0, 5, 10, 45, 50)}
    assert at[0] == pytest.approx(1e-5)
    assert at[0] < at[5] < at[10] == pytest.approx(1e-3)
    assert at[10] > at[45] > at[50] == pytest.approx(1e-5)
    assert training.make_learning_rate(TrainConfig(learning_rate=1e-3), steps_per_epoch=5) == 1e-3


def test_weight_averaging_is_kept_by_the_optimizer():
    optimizer = make_optimizer(TrainConfig(ema_momentum=0.99), steps_per_epoch=10)
    assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.99)
    assert not make_optimizer(TrainConfig(), steps_per_epoch=10).use_ema


def test_unknown_optimizer_is_rejected_by_name():
    with pytest.raises(ValueError, match="rmsprop"):
        make_optimizer(TrainConfig(optimizer="rmsprop"), steps_per_epoch=10)


def test_default_strategy_is_the_current_one():
    strategy = make_strategy("default")
    assert isinstance(strategy, tf.distribute.Strategy)
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


def test_unknown_strategy_is_rejected_by_name():
    with pytest.raises(ValueError, match="tpu"):
        make_strategy("tpu")


@pytest.mark.parametrize(
    "setting, value",
    [("labels", "15"), ("optimizer", "rmsprop"), ("monitor", "val_accuracy"), ("validation_standardisation", "batch"),
     ("precision", "float16")],
)
def test_config_rejects_unknown_choices_naming_the_setting(setting, value):
    with pytest.raises(ValueError, match=setting):
        TrainConfig(**{setting: value})


@pytest.mark.parametrize(
    "flag, value, least", [("epochs", 0, 1), ("batch_size", 0, 1), ("image_size", 16, 32), ("early_image_size", 16, 32)]
)
def test_config_rejects_counts_and_sizes_that_cannot_train_naming_the_flag(flag, value, least):
    with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} must be at least {least}"):
        TrainConfig(**{flag: value})


def test_train_py_refuses_an_impossible_setting_before_loading_anything(capsys):
    with pytest.raises(SystemExit) as caught:
        train_script.parse_config(["--image-size", "16"])
    assert caught.value.code == 2
    assert "--image-size must be at least 32 (the smallest input DenseNet121 takes), got 16" in capsys.readouterr().err


@pytest.mark.parametrize(
    "settings, message",
    [({"ema_momentum": 1.0}, "ema_momentum"), ({"ema_momentum": 0.0}, "ema_momentum"),
     ({"early_epochs": 3}, "early_image_size"), ({"schedule": "step"}, "schedule"),
     ({"label_smoothing": 1.0}, "--label-smoothing"), ({"dropout": -0.1}, "--dropout"), ({"blur": -1.0}, "--blur"),
     ({"gamma": -0.2}, "--gamma")],
)
def test_config_rejects_impossible_training_recipes(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_progressive_resizing_trains_early_epochs_small_and_the_rest_at_the_image_size():
    cfg = TrainConfig(image_size=64, early_image_size=32, early_epochs=2, epochs=3, batch_size=4,
                      rotation=0, zoom=0, shift=0)  # fmt: skip
    assert [cfg.size_of_epoch(epoch) for epoch in range(3)] == [32, 32, 64]
    assert cfg.training_sizes == [32, 64]
    labels = np.zeros((10, 2), np.float32)
    arrays = {size: images.Split(None, np.zeros((10, size, size), np.uint8), labels) for size in (32, 64)}
    augmentation = training.pipeline.Augmentation(horizontal_flip=False)
    sides = [int(batch.shape[1]) for batch, _ in training.training_epochs(cfg, arrays, 0, augmentation)]
    assert sides == [32] * 3 + [32] * 3 + [64] * 3  # 3 batches (4 + 4 + 2 images) per epoch
    resumed = [int(batch.shape[1]) for batch, _ in training.training_epochs(cfg, arrays, 2, augmentation)]
    assert resumed == [64] * 3


@pytest.mark.slow
def test_with_weight_averaging_validation_and_best_weights_are_the_average(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (rng.random((32, 3)) > 0.5).astype("float32")
    network = _tiny_model(keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.9))
    tracked = {"reduce_lr": keras.callbacks.ReduceLROnPlateau("val_loss"),
               "early_stopping": keras.callbacks.EarlyStopping("val_loss")}  # fmt: skip
    state: dict = {}
    checkpoint = ResumableCheckpoint(RunDirectory(tmp_path), "val_loss", tracked, state)
    history = network.fit(
        x, y, validation_data=(x, y), epochs=2, batch_size=8, verbose=0,
        callbacks=[keras.callbacks.SwapEMAWeights(), *tracked.values(), checkpoint],
    )  # fmt: skip
    assert state["best_weights_file"] == f"epoch{state['best_epoch']:03d}-average.weights.h5"
    kept = sorted({state["weights_file"], state["best_weights_file"]})
    assert sorted(p.name for p in tmp_path.glob("epoch*")) == kept
    raw, average = _tiny_model(), _tiny_model()
    raw.load_weights(tmp_path / state["weights_file"])
    average.load_weights(tmp_path / "epoch002-average.weights.h5")
    averages = [keras.ops.convert_to_numpy(v) for v in network.optimizer._model_variables_moving_average]
    for got, want in zip(average.trainable_weights, averages):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(raw.get_weights()[0], average.get_weights()[0])
    # The validation loss logged for epoch 2 is the average's, not the raw weights'.
    assert history.history["val_loss"][-1] == pytest.approx(average.evaluate(x, y, verbose=0)[0], rel=1e-4)
    assert history.history["val_loss"][-1] != pytest.approx(raw.evaluate(x, y, verbose=0)[0], rel=1e-4)


def _changed(cfg: TrainConfig, saved: dict) -> dict:
    return run_directory.changed_settings(dataclasses.asdict(cfg), saved)


def test_location_and_epoch_changes_are_resumable_other_changes_are_named_with_the_saved_value():
    saved = dataclasses.asdict(TrainConfig(image_size=128))
    assert _changed(TrainConfig(image_size=128, epochs=3, output_dir="elsewhere", verbose=2), saved) == {}
    assert _changed(TrainConfig(image_size=224), saved) == {"image_size": 128}


@pytest.mark.parametrize("setting", ["data_dir", "split_dir"])
def test_another_data_or_split_directory_is_not_a_resumable_change(tmp_path, setting):
    saved = dataclasses.asdict(TrainConfig())
    assert _changed(TrainConfig(**{setting: str(tmp_path)}), saved) == {setting: saved[setting]}


def test_the_same_directories_given_another_way_are_no_change(tmp_path, monkeypatch):
    monkeypatch.setenv(config.DATA_DIR_VARIABLE, str(tmp_path))
    monkeypatch.chdir(config.PROJECT_ROOT)
    saved = dataclasses.asdict(TrainConfig())  # no --data-dir: $CXR_DATA_DIR
    assert _changed(TrainConfig(data_dir=f"{tmp_path}/.", split_dir="data"), saved) == {}


def test_a_run_saved_before_the_recipe_settings_existed_resumes_with_their_defaults():
    saved = dataclasses.asdict(TrainConfig())
    for name in ("schedule", "early_image_size", "early_epochs", "warmup_epochs", "ema_momentum"):
        del saved[name]
    assert _changed(TrainConfig(), saved) == {}
    assert _changed(TrainConfig(schedule="cosine"), saved) == {"schedule": "plateau"}


def test_under_a_cosine_schedule_the_epoch_count_cannot_change_on_resume():
    saved = dataclasses.asdict(TrainConfig(schedule="cosine", epochs=30))
    assert _changed(TrainConfig(schedule="cosine", epochs=30), saved) == {}
    assert _changed(TrainConfig(schedule="cosine", epochs=40), saved) == {"epochs": 30}


def test_a_run_saved_before_the_precision_setting_existed_counts_as_float32():
    saved = dataclasses.asdict(TrainConfig())
    del saved["precision"]
    assert _changed(TrainConfig(precision="float32"), saved) == {}
    assert _changed(TrainConfig(precision="mixed_bfloat16"), saved) == {"precision": "float32"}


# --- train() on a small stand-in for DenseNet121: resumes, bad run directories, a full disk --------------


def _small_densenet(num_classes: int, image_size: int | None, weights=None, precision: str = "float32",
                    dropout: float = 0.0, synchronized_batch_norm: bool = False) -> keras.Model:
    """DenseNet121's input and output, with a model small enough to train in seconds."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="sigmoid")(features))


@pytest.fixture
def small_run(tmp_path, monkeypatch) -> dict:
    """TrainConfig settings for a run of seconds in tmp_path/run: 8 training and 4 validation images (random
    80-px PNGs) and the stand-in model, 3 epochs of 2 batches."""
    monkeypatch.setattr(training.model, "build_densenet121", _small_densenet)
    # Process-wide and for good: keep it out of the rest of the test session.
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism", lambda: None)
    rng = np.random.default_rng(0)
    data_dir, split_dir = tmp_path / "nih", tmp_path / "splits"
    (data_dir / config.FULL_RESOLUTION_DIR).mkdir(parents=True)
    split_dir.mkdir()
    rows = []
    for patient in range(12):
        name = f"{patient:08d}_000.png"
        Image.fromarray(rng.integers(0, 256, (80, 80), np.uint8)).save(data_dir / config.FULL_RESOLUTION_DIR / name)
        findings = {label: int(rng.random() < 0.5) for label in config.LABELS}
        rows.append({"Image": name, **findings, "PatientId": patient, "ViewPosition": "PA", "Resolution": 80})
    frame = pd.DataFrame(rows)
    frame.iloc[:8].to_csv(split_dir / "train.csv", index=False)
    frame.iloc[8:].to_csv(split_dir / "valid.csv", index=False)
    return {"output_dir": str(tmp_path / "run"), "data_dir": str(data_dir), "split_dir": str(split_dir),
            "cache_dir": str(tmp_path / "cache"), "image_size": 32, "batch_size": 4, "epochs": 3, "verbose": 2,
            "precision": "float32"}  # fmt: skip


def _flags(settings: dict) -> list[str]:
    return [item for name, value in settings.items() for item in ("--" + name.replace("_", "-"), str(value))]


@pytest.fixture
def after_one_epoch(small_run) -> Path:
    """The small run's directory after its first epoch (it is resumed with ``small_run``)."""
    training.train(TrainConfig(**{**small_run, "epochs": 1}))
    output = Path(small_run["output_dir"])
    assert _read_state(output)["epoch"] == 1
    return output


@pytest.mark.parametrize("setting", ["data_dir", "split_dir"])
def test_resuming_on_another_data_or_split_directory_is_refused_and_keeps_the_config(
    small_run, after_one_epoch, tmp_path, setting
):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(small_run[setting], elsewhere)  # the same files in another folder
    config_before = (after_one_epoch / "config.json").read_text()
    with pytest.raises(ValueError, match=f"other settings.*{setting}.*--output-dir"):
        training.train(TrainConfig(**{**small_run, setting: str(elsewhere)}))
    assert (after_one_epoch / "config.json").read_text() == config_before
    assert _read_state(after_one_epoch)["epoch"] == 1


def test_an_empty_data_directory_is_named_rather_than_a_split_row(small_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{empty} has no images: neither images/ nor images-64/"):
        training.train(TrainConfig(**{**small_run, "data_dir": str(empty)}))


@pytest.mark.parametrize("lost", ["epoch001.weights.h5", "config.json"])
def test_resuming_an_incomplete_run_directory_names_what_is_missing(small_run, after_one_epoch, lost):
    (after_one_epoch / lost).unlink()
    with pytest.raises(FileNotFoundError) as caught:
        training.train(TrainConfig(**small_run))
    message = str(caught.value)
    assert lost in message and str(after_one_epoch) in message and "epoch 1" in message
    assert "put" in message and "--output-dir" in message


def test_resuming_removes_the_weights_and_partial_files_left_by_a_kill(small_run, after_one_epoch):
    leftovers = ["epoch007.weights.h5", "epoch007-average.weights.h5", "partial-epoch007.weights.h5",
                 "partial-best.weights.h5", "partial-state.json", "state.json.partial",
                 "config.json.partial"]  # fmt: skip
    for name in leftovers:
        (after_one_epoch / name).write_bytes(b"left by a kill")
    training.train(TrainConfig(**small_run))
    state = _read_state(after_one_epoch)
    assert state["epoch"] == 3
    assert sorted(p.name for p in after_one_epoch.glob("*epoch*")) == sorted(
        {state["weights_file"], state["best_weights_file"]})
    assert not list(after_one_epoch.glob("*.partial")) and not list(after_one_epoch.glob("partial-*"))


def test_a_full_disk_during_a_checkpoint_exits_with_status_1_keeping_the_committed_epoch(
    small_run, after_one_epoch, monkeypatch, capsys
):
    def disk_full(network, path, *args, **kwargs):  # part of the file written, then no space left
        Path(path).write_bytes(b"\x89HDF\r\n\x1a\n and then nothing")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save_weights", disk_full)
        assert train_script.main(_flags(small_run)) == 1
    error = capsys.readouterr().err
    assert f"Could not save epoch 2 in {after_one_epoch}" in error and "No space left on device" in error
    assert "committed state is intact (state.json: epoch 1)" in error and "run the same command" in error
    assert _read_state(after_one_epoch)["epoch"] == 1
    assert sorted(p.name for p in after_one_epoch.glob("*epoch*")) == ["epoch001.weights.h5"]
    assert not list(after_one_epoch.glob("partial-*")) and not list(after_one_epoch.glob("*.partial"))
    # With space again, the same command carries on from epoch 1.
    assert train_script.main(_flags(small_run)) == 0
    assert _read_state(after_one_epoch)["epoch"] == 3
    assert pd.read_csv(after_one_epoch / "log.csv")["epoch"].tolist() == [0, 1, 2]
