"""The resumable training loop behind ``train.py``.

A run lives in one output directory. After every epoch it atomically writes the full training
state (weights, optimizer, callback counters); the same command started again after a crash or
a kill resumes from the last completed epoch. ``best.weights.h5``, the best weights by the
monitored validation metric, only ever holds an epoch that ``state.json`` has committed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from cxr import config, data, images, losses, model, pipeline

STATE_FILE = "state.json"
BEST_WEIGHTS = "best.weights.h5"
NORMALISATION_FILE = "normalisation.json"  # training-set mean/std that inference needs
# Settings that say where files are or how much to print, not how to train, plus the epoch budget:
# a run may resume with other values of these.
LOCATION_SETTINGS = ("output_dir", "data_dir", "split_dir", "cache_dir", "verbose")
RESUMABLE_CHANGES = LOCATION_SETTINGS + ("epochs",)
# Settings added after runs were saved without them: the value those runs used.
EARLIER_DEFAULTS = {"precision": "float32"}
# Counters of Keras' callbacks that must survive a restart.
CALLBACK_STATE = {
    "reduce_lr": ("wait", "cooldown_counter", "best"),
    "early_stopping": ("wait", "best", "best_epoch"),
}


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` in the output directory."""

    output_dir: str = "runs/densenet121"
    data_dir: str | None = None  # default: $CXR_DATA_DIR or ../shared/data/nih
    split_dir: str = str(config.SPLIT_DIR)
    cache_dir: str | None = str(config.SPLIT_DIR / "cache")
    labels: str = "14"  # "14" findings or the "4"-class variant (Effusion, Atelectasis, Infiltration, No Finding)
    image_size: int = 224
    batch_size: int = 16
    epochs: int = 30
    optimizer: str = "adam"  # adam | sgd (momentum 0.9) | adamw
    learning_rate: float | None = None  # default: 1e-3 for adam/adamw, 1e-2 for sgd
    weight_decay: float = 1e-4  # adamw only
    monitor: str = "val_auc"  # val_auc (higher is better) or val_loss
    reduce_lr_patience: int = 3
    early_stopping_patience: int = 8
    use_low_resolution: bool = True  # add the 64-px images (upsampled) to training
    horizontal_flip: bool = True
    rotation: float = 0.02
    zoom: float = 0.1
    shift: float = 0.05
    limit: int | None = None  # keep only the first N rows of each split (smoke tests)
    seed: int = config.SEED
    strategy: str = "default"  # default | mirrored | multi-worker
    # None (random), "imagenet" (online only), or any file load_pretrained_weights reads: a DenseNet121
    # notop file, or the weights of an earlier run to start from (warm start)
    initial_weights: str | None = None
    # How validation images are standardised: "per-image" as in training, or "training-statistics"
    # (the course's way; measured worse on validation for a model trained from scratch, see models/README.md)
    validation_standardisation: str = pipeline.PER_IMAGE
    # auto: mixed_bfloat16 where the hardware computes bfloat16 natively (about 1.6x faster per 224-px
    # step than float32 on this project's AVX512_BF16 CPU, bench/RESULTS.md), float32 elsewhere; the
    # weights are float32 either way
    precision: str = "auto"
    verbose: int = 1  # 1: a progress bar per epoch, 2: one line per epoch
    statistics_sample: int = 500  # training images sampled for the valid/test normalisation

    def __post_init__(self):
        choices = {
            "labels": tuple(config.LABEL_SETS),
            "optimizer": ("adam", "sgd", "adamw"),
            "monitor": ("val_auc", "val_loss"),
            "strategy": ("default", "mirrored", "multi-worker"),
            "validation_standardisation": (pipeline.PER_IMAGE, model.TRAINING_STATISTICS),
            "precision": model.PRECISIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")

    @property
    def label_names(self) -> tuple[str, ...]:
        return config.LABEL_SETS[self.labels]


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy: one device (default), all local GPUs, or several machines (TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}: use default, mirrored or multi-worker.")


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(cfg.learning_rate or 1e-3)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(cfg.learning_rate or 1e-2, momentum=0.9)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(cfg.learning_rate or 1e-3, weight_decay=cfg.weight_decay)
    raise ValueError(f"Unknown optimizer {cfg.optimizer!r}: use adam, sgd or adamw.")


def atomic_write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def atomic_save_weights(network: keras.Model, path: Path) -> None:
    partial = path.with_name("partial-" + path.name)  # keeps the .weights.h5 suffix Keras asks for
    network.save_weights(partial)
    os.replace(partial, path)


def atomic_publish(source: Path, path: Path) -> None:
    """Make ``path`` hold the bytes of ``source`` in one rename: a hard link, or a copy where links fail."""
    partial = path.with_name("partial-" + path.name)
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, partial)
    os.replace(partial, path)


def publish_best_weights(directory: Path, state: dict) -> None:
    """Point ``best.weights.h5`` at the best epoch's weights that ``state`` committed (if it names them)."""
    committed = state.get("best_weights_file")
    if committed and (directory / committed).is_file():
        atomic_publish(directory / committed, directory / BEST_WEIGHTS)


class Throughput(keras.callbacks.Callback):
    """Adds ``images_per_second`` (training part of the epoch) and ``epoch_seconds`` to the logs."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        self.train_seconds = None

    def on_test_begin(self, logs=None):
        if self.train_seconds is None:
            self.train_seconds = time.perf_counter() - self.started

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self.started
        logs["images_per_second"] = self.images_per_epoch / (self.train_seconds or elapsed)
        logs["epoch_seconds"] = elapsed


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves the weights and the complete training state after each epoch, atomically.

    Each epoch's weights go to a file of their own, then ``state.json``, which names the last
    epoch's file and the best epoch's, is written: it is the commit point, so a run killed at
    any moment resumes from the last state it can fully trust. Only then does ``best.weights.h5``
    move to the committed best epoch, and files no longer named are removed.
    """

    def __init__(self, directory: Path, monitor: str, tracked: dict[str, keras.callbacks.Callback], state: dict):
        super().__init__()
        self.directory = directory
        self.monitor = monitor
        self.higher_is_better = "auc" in monitor
        self.tracked = tracked
        self.state = state

    def on_train_begin(self, logs=None):
        # Runs after the tracked callbacks have reset themselves: put their counters back.
        for name, values in self.state.get("callbacks", {}).items():
            for attribute, value in values.items():
                setattr(self.tracked[name], attribute, value)

    def on_epoch_end(self, epoch, logs=None):
        value = float(logs[self.monitor])
        weights_file = f"epoch{epoch + 1:03d}.weights.h5"
        atomic_save_weights(self.model, self.directory / weights_file)
        previous = {self.state.get("weights_file"), self.state.get("best_weights_file")}
        best = self.state.get("best")
        improved = best is None or (value > best if self.higher_is_better else value < best)
        if improved:
            self.state.update(best=value, best_epoch=epoch + 1, best_weights_file=weights_file)
        self.state.update(
            epoch=epoch + 1,
            weights_file=weights_file,
            learning_rate=float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            callbacks={
                name: {attribute: _plain(getattr(self.tracked[name], attribute)) for attribute in attributes}
                for name, attributes in CALLBACK_STATE.items()
            },
        )
        atomic_write_text(self.directory / STATE_FILE, json.dumps(self.state, indent=2))
        if improved:
            publish_best_weights(self.directory, self.state)
        for name in previous - {None, weights_file, self.state.get("best_weights_file")}:
            (self.directory / name).unlink(missing_ok=True)


def _plain(value):
    """numpy scalars to Python numbers for JSON."""
    return value.item() if hasattr(value, "item") else value


def load_split_arrays(cfg: TrainConfig, split: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Images (N, S, S) uint8, labels (N, C) and rows of one split, honouring ``limit`` and the 64-px switch."""
    frame = data.read_split(split, cfg.split_dir)
    if split == "train" and not cfg.use_low_resolution:
        frame = frame[frame["Resolution"] != 64]
    if cfg.limit:
        frame = frame.head(cfg.limit)
    frame = frame.reset_index(drop=True)
    root = config.data_dir(cfg.data_dir)
    pixels, frame = images.load_images(
        frame, root, cfg.image_size, source=f"{cfg.split_dir}/{split}.csv", cache_dir=cfg.cache_dir
    )
    return pixels, data.label_matrix(frame, cfg.label_names), frame


def changed_settings(cfg: TrainConfig, saved: dict) -> dict:
    """The settings, with the values the saved run used, in which ``cfg`` differs from a saved ``config.json``
    in ways a resumed run cannot follow."""
    changed = {}
    for name, value in dataclasses.asdict(cfg).items():
        earlier = saved.get(name, EARLIER_DEFAULTS.get(name))
        if earlier != value and name not in RESUMABLE_CHANGES:
            changed[name] = earlier
    return changed


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) DenseNet121 as configured; returns the run summary (also in ``summary.json``)."""
    output = Path(cfg.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    state_path = output / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    config_path = output / "config.json"
    if state and config_path.is_file():
        changed = changed_settings(cfg, json.loads(config_path.read_text()))
        if changed:
            raise ValueError(
                f"{output} holds a run with other settings ({changed}): resume it with those values "
                "or use a new --output-dir."
            )
    atomic_write_text(config_path, json.dumps(dataclasses.asdict(cfg), indent=2))
    finished = bool(state.get("stopped_early") or state.get("epoch", 0) >= cfg.epochs)
    if finished and (output / "summary.json").is_file():
        print(f"Run in {output} already finished at epoch {state['epoch']}.")
        return json.loads((output / "summary.json").read_text())

    publish_best_weights(output, state)  # in case a kill came between a commit and its publish

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()

    train_images, train_labels, train_rows = load_split_arrays(cfg, "train")
    valid_images, valid_labels, _ = load_split_arrays(cfg, "valid")
    full_resolution = train_images[(train_rows["Resolution"] != 64).to_numpy()]
    statistics = pipeline.training_statistics(full_resolution, cfg.statistics_sample, cfg.seed)
    atomic_write_text(output / NORMALISATION_FILE, json.dumps({"mean": statistics[0], "std": statistics[1]}))
    positive_frequencies, negative_frequencies = data.compute_class_freqs(train_labels)
    augmentation = pipeline.Augmentation(cfg.horizontal_flip, cfg.rotation, cfg.zoom, cfg.shift)
    train_data = pipeline.make_dataset(
        train_images, train_labels, cfg.batch_size, training=True, augmentation=augmentation, seed=cfg.seed
    )
    valid_statistics = statistics if cfg.validation_standardisation == model.TRAINING_STATISTICS else pipeline.PER_IMAGE
    valid_data = pipeline.make_dataset(
        valid_images, valid_labels, cfg.batch_size, training=False, statistics=valid_statistics
    )

    precision = model.resolve_precision(cfg.precision)
    print(f"Training in {precision}.")
    with make_strategy(cfg.strategy).scope():
        network = model.build_densenet121(
            len(cfg.label_names),
            cfg.image_size,
            "imagenet" if cfg.initial_weights == "imagenet" else None,
            precision=precision,
        )
        if cfg.initial_weights not in (None, "imagenet") and not state:
            model.load_pretrained_weights(network, cfg.initial_weights)
        network.compile(
            optimizer=make_optimizer(cfg),
            loss=losses.get_weighted_loss(negative_frequencies, positive_frequencies),
            metrics=[keras.metrics.AUC(multi_label=True, num_labels=len(cfg.label_names), name="auc")],
        )
        if state:
            network.optimizer.build(network.trainable_variables)
            network.load_weights(output / state["weights_file"])
            network.optimizer.learning_rate.assign(state["learning_rate"])
            print(f"Resuming {output} after epoch {state['epoch']} (best {cfg.monitor} {state['best']:.4f}).")

    mode = "max" if "auc" in cfg.monitor else "min"
    reduce_lr = keras.callbacks.ReduceLROnPlateau(cfg.monitor, factor=0.1, patience=cfg.reduce_lr_patience, mode=mode, verbose=1)
    early_stopping = keras.callbacks.EarlyStopping(cfg.monitor, patience=cfg.early_stopping_patience, mode=mode, verbose=1)
    csv_path = output / "log.csv"
    if not state:
        csv_path.unlink(missing_ok=True)
    elif csv_path.is_file() and csv_path.stat().st_size:  # drop an epoch logged but not committed before a kill
        log = pd.read_csv(csv_path)
        log[log["epoch"] < state["epoch"]].to_csv(csv_path, index=False)
    callbacks = [
        Throughput(len(train_images)),
        reduce_lr,
        early_stopping,
        keras.callbacks.TensorBoard(str(output / "tensorboard")),
        keras.callbacks.CSVLogger(str(csv_path), append=True),
        ResumableCheckpoint(output, cfg.monitor, {"reduce_lr": reduce_lr, "early_stopping": early_stopping}, state),
    ]
    network.fit(
        train_data,
        validation_data=valid_data,
        epochs=state["epoch"] if finished else cfg.epochs,  # finished but killed before the summary: no more epochs
        initial_epoch=state.get("epoch", 0),
        callbacks=callbacks,
        verbose=cfg.verbose,
    )
    state["stopped_early"] = bool(state.get("stopped_early") or early_stopping.stopped_epoch)
    atomic_write_text(state_path, json.dumps(state, indent=2))
    log = pd.read_csv(csv_path)
    summary = {
        "epochs_completed": int(state["epoch"]),
        "best_epoch": int(state["best_epoch"]),
        f"best_{cfg.monitor}": state["best"],
        "median_images_per_second": float(log["images_per_second"].median()),
        "median_epoch_seconds": float(log["epoch_seconds"].median()),
        "total_hours": float(log["epoch_seconds"].sum() / 3600),
        "normalisation": {"mean": statistics[0], "std": statistics[1]},
        "labels": list(cfg.label_names),
        "image_size": cfg.image_size,
        "precision": precision,
        "train_images": len(train_images),
    }
    atomic_write_text(output / "summary.json", json.dumps(summary, indent=2))
    return summary
