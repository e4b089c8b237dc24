"""The resumable training loop behind ``train.py``.

A run lives in one output directory. After every epoch it atomically writes the full training
state (weights, optimizer, callback counters); the same command started again after a crash or
a kill resumes from the last completed epoch. ``best.weights.h5``, the best weights by the
monitored validation metric, only ever holds an epoch that ``state.json`` has committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
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

from cxr import config, data, fast_layers, images, inference, losses, model, pipeline

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
BEST_WEIGHTS = "best.weights.h5"
NORMALISATION_FILE = "normalisation.json"  # training-set mean/std that inference needs
# Files a kill can leave behind: epoch weights never committed (or no longer named), half-written files.
LEFTOVER_FILES = ("epoch*.weights.h5", "partial-*.weights.h5", "*.partial")
# Settings that say where files are or how much to print, not how to train (left out of the model card).
LOCATION_SETTINGS = ("output_dir", "data_dir", "split_dir", "cache_dir", "verbose")
# A run may resume with other values of these: not with another data or split directory, which would
# train and select the rest of the run on other images.
RESUMABLE_CHANGES = ("output_dir", "cache_dir", "verbose", "epochs")
# Settings added after runs were saved without them: the value those runs used.
EARLIER_DEFAULTS = {
    "precision": "float32", "schedule": "plateau", "early_epochs": 0, "warmup_epochs": 0,
    "label_smoothing": 0.0, "dropout": 0.0,
}
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
    image_size: int = 224  # the size the model is validated and shipped at
    # Progressive resizing: the first `early_epochs` train at `early_image_size` (4 times cheaper at
    # 112 px than at 224), the rest at `image_size`. Validation is always at `image_size`.
    early_image_size: int | None = None
    early_epochs: int = 0
    batch_size: int = 16
    epochs: int = 30
    optimizer: str = "adam"  # adam | sgd (momentum 0.9) | adamw
    learning_rate: float | None = None  # default: 1e-3 for adam/adamw, 1e-2 for sgd
    weight_decay: float = 1e-4  # adamw only
    # plateau: divide the rate by 10 when the monitor stalls; cosine: linear warm-up over
    # `warmup_epochs`, then cosine decay to 1% of the rate at `epochs`
    schedule: str = "plateau"
    warmup_epochs: int = 0
    # Weight averaging: validate, select and ship an exponential moving average of the weights
    # (e.g. 0.998, about the last 500 steps); None trains and ships the weights themselves.
    ema_momentum: float | None = None
    label_smoothing: float = 0.0  # targets y * (1 - s) + s / 2 in the weighted loss
    dropout: float = 0.0  # dropout rate before the 14-sigmoid head
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
            "validation_standardisation": (pipeline.PER_IMAGE, inference.TRAINING_STATISTICS),
            "precision": fast_layers.PRECISIONS,
            "schedule": ("plateau", "cosine"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.ema_momentum is not None and not 0 < self.ema_momentum < 1:
            raise ValueError(f"ema_momentum must lie between 0 and 1, got {self.ema_momentum}.")
        for name in ("label_smoothing", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must lie in [0, 1), got {getattr(self, name)}.")
        if self.early_epochs and not self.early_image_size:
            raise ValueError("early_epochs needs early_image_size (the size of those epochs).")
        # Checked here so that train.py stops at once, not after loading every image.
        for name, least in (("epochs", 1), ("batch_size", 1), ("image_size", model.MINIMUM_IMAGE_SIZE),
                            ("early_image_size", model.MINIMUM_IMAGE_SIZE)):
            value = getattr(self, name)
            if value is not None and value < least:
                why = " (the smallest input DenseNet121 takes)" if name.endswith("image_size") else ""
                raise ValueError(f"--{name.replace('_', '-')} must be at least {least}{why}, got {value}.")

    def size_of_epoch(self, epoch: int) -> int:
        """Training image size of a 0-based epoch under progressive resizing."""
        return self.early_image_size if epoch < self.early_epochs else self.image_size

    @property
    def training_sizes(self) -> list[int]:
        return sorted({self.size_of_epoch(epoch) for epoch in range(self.epochs)} | {self.image_size})

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


def make_learning_rate(cfg: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The base rate, or for ``schedule="cosine"`` a warm-up then cosine decay over the whole run."""
    rate = cfg.learning_rate or (1e-2 if cfg.optimizer == "sgd" else 1e-3)
    if cfg.schedule == "plateau":
        return rate
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=rate / 100 if warmup_steps else rate,
        decay_steps=max(1, cfg.epochs * steps_per_epoch - warmup_steps),
        alpha=0.01,
        warmup_target=rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = make_learning_rate(cfg, steps_per_epoch)
    # The optimizer keeps the moving average in its own variables: saved and resumed with its state.
    averaging = {"use_ema": True, "ema_momentum": cfg.ema_momentum} if cfg.ema_momentum else {}
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(rate, **averaging)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9, **averaging)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=cfg.weight_decay, **averaging)
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
    if path.is_file() and os.path.samefile(source, path):
        return  # already published; renaming a link onto its own file would do nothing and leave it behind
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


def read_state(directory: Path) -> dict:
    """The training state committed in ``directory``; {} if there is none."""
    path = directory / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def remove_leftovers(directory: Path, state: dict) -> None:
    """Delete the epoch weights and half-written files in ``directory`` that ``state`` does not name."""
    named = {state.get("weights_file"), state.get("best_weights_file")}
    for pattern in LEFTOVER_FILES:
        for path in directory.glob(pattern):
            if path.name not in named:
                path.unlink()


class CheckpointError(RuntimeError):
    """An epoch could not be saved (a full disk, say); the last committed state is intact."""


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves the weights and the complete training state after each epoch, atomically.

    Each epoch's weights go to a file of their own, then ``state.json``, which names the last
    epoch's file and the best epoch's, is written: it is the commit point, so a run killed at
    any moment resumes from the last state it can fully trust. Only then does ``best.weights.h5``
    move to the committed best epoch, and files no longer named are removed.

    If a write fails (``OSError``: a full disk, say), training stops after that epoch and
    ``failure`` holds a ``CheckpointError`` saying which epoch is committed and how to resume.
    """

    def __init__(self, directory: Path, monitor: str, tracked: dict[str, keras.callbacks.Callback], state: dict):
        super().__init__()
        self.directory = directory
        self.monitor = monitor
        self.higher_is_better = "auc" in monitor
        self.tracked = tracked
        self.state = state
        self.failure = None

    def on_train_begin(self, logs=None):
        # Runs after the tracked callbacks have reset themselves: put their counters back.
        for name, values in self.state.get("callbacks", {}).items():
            for attribute, value in values.items():
                setattr(self.tracked[name], attribute, value)

    def on_epoch_end(self, epoch, logs=None):
        try:
            self.save(epoch, logs)
        except OSError as error:
            # Stop after this epoch rather than raise through fit(): the other callbacks close their files.
            self.model.stop_training = True
            committed = read_state(self.directory)
            remove_leftovers(self.directory, committed)  # what the failed writes left, freeing their space
            where = f"{STATE_FILE}: epoch {committed['epoch']}" if committed else "no epoch committed yet"
            self.failure = CheckpointError(
                f"Could not save epoch {epoch + 1} in {self.directory}: {error}. The committed state is intact "
                f"({where}); free some disk space and run the same command to carry on from there."
            )

    def save(self, epoch, logs):
        value = float(logs[self.monitor])
        weights_file = f"epoch{epoch + 1:03d}.weights.h5"
        atomic_save_weights(self.model, self.directory / weights_file)
        # With weight averaging, the average is what validation scored and what is shipped.
        selected_file = weights_file
        if getattr(self.model.optimizer, "use_ema", False):
            selected_file = f"epoch{epoch + 1:03d}-average.weights.h5"
            with averaged_weights(self.model):
                atomic_save_weights(self.model, self.directory / selected_file)
        previous = {self.state.get("weights_file"), self.state.get("best_weights_file")}
        best = self.state.get("best")
        improved = best is None or (value > best if self.higher_is_better else value < best)
        if improved:
            self.state.update(best=value, best_epoch=epoch + 1, best_weights_file=selected_file)
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
        kept = {weights_file, self.state.get("best_weights_file")}
        for name in (previous | {selected_file}) - kept - {None}:
            (self.directory / name).unlink(missing_ok=True)


@contextlib.contextmanager
def averaged_weights(network: keras.Model):
    """Within the block, ``network`` holds its optimizer's moving average of the weights (``use_ema``)."""
    swap = keras.callbacks.SwapEMAWeights()
    swap.set_model(network)
    swap._swap_variables()  # Keras' own exchange of weights and averages, as used around validation
    try:
        yield network
    finally:
        swap._swap_variables()


def _plain(value):
    """numpy scalars to Python numbers for JSON."""
    return value.item() if hasattr(value, "item") else value


def split_rows(cfg: TrainConfig, split: str) -> pd.DataFrame:
    """The rows of one split that the run uses, honouring ``limit`` and the 64-px switch."""
    frame = data.read_split(split, cfg.split_dir)
    if split == "train" and not cfg.use_low_resolution:
        frame = frame[~data.is_low_resolution(frame)]
    if cfg.limit:
        frame = frame.head(cfg.limit)
    return frame.reset_index(drop=True)


def load_split_arrays(cfg: TrainConfig, split: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Images (N, S, S) uint8 at ``size`` (default ``image_size``), labels (N, C) and rows of one split,
    honouring ``limit`` and the 64-px switch."""
    frame = split_rows(cfg, split)
    root = config.data_dir(cfg.data_dir)
    pixels, frame = images.load_images(
        frame, root, size or cfg.image_size, source=f"{cfg.split_dir}/{split}.csv", cache_dir=cfg.cache_dir
    )
    return pixels, data.label_matrix(frame, cfg.label_names), frame


def training_epochs(
    cfg: TrainConfig, arrays: dict[int, tuple], first_epoch: int, augmentation: pipeline.Augmentation
) -> tf.data.Dataset:
    """One dataset for the epochs from ``first_epoch`` on, each epoch at its size (progressive resizing):
    ``steps_per_epoch`` batches per epoch, reshuffled every epoch."""
    # Consecutive epochs of one size make one stage; a finished run gets an empty stage list.
    stages = [(size, len(list(group))) for size, group in itertools.groupby(range(first_epoch, cfg.epochs), cfg.size_of_epoch)]
    epochs = None
    for size, count in stages or [(cfg.image_size, 1)]:
        pixels, labels, _ = arrays[size]
        stage = pipeline.make_dataset(
            pixels, labels, cfg.batch_size, training=True, augmentation=augmentation, seed=cfg.seed + size
        ).repeat(count)
        epochs = stage if epochs is None else epochs.concatenate(stage)
    return epochs


def _comparable(name: str, value):
    """A setting as resumes compare it: directories as absolute paths, so that the same folder given
    another way (a relative path, the default spelled out) is no change."""
    if name == "data_dir":
        return config.chosen_data_dir(value).resolve()
    if name == "split_dir":
        return Path(value).expanduser().resolve()
    return value


def changed_settings(cfg: TrainConfig, saved: dict) -> dict:
    """The settings, with the values the saved run used, in which ``cfg`` differs from a saved ``config.json``
    in ways a resumed run cannot follow."""
    changed = {}
    for name, value in dataclasses.asdict(cfg).items():
        earlier = saved.get(name, EARLIER_DEFAULTS.get(name))
        # A cosine schedule spans the run's epochs: another count would move the rate mid-run.
        resumable = name in RESUMABLE_CHANGES and not (name == "epochs" and cfg.schedule == "cosine")
        if not resumable and _comparable(name, earlier) != _comparable(name, value):
            changed[name] = earlier
    return changed


def resumable_state(output: Path, cfg: TrainConfig) -> dict:
    """The state committed in ``output`` ({} for a new run), once checked that ``cfg`` can resume it.

    Raises:
        FileNotFoundError: if config.json or a weights file that state.json names is missing.
        ValueError: if ``cfg`` changes a setting that a resumed run cannot follow.
    """
    state = read_state(output)
    if not state:
        return state
    start_afresh = "or start the run afresh with a new --output-dir"
    if not (output / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{output} holds a run ({STATE_FILE} after epoch {state['epoch']}) without its {CONFIG_FILE}, so its "
            f"settings cannot be checked: put the file back, {start_afresh}."
        )
    changed = changed_settings(cfg, json.loads((output / CONFIG_FILE).read_text()))
    if changed:
        raise ValueError(
            f"{output} holds a run with other settings ({changed}): resume it with those values "
            "or use a new --output-dir."
        )
    named = (state["weights_file"], state.get("best_weights_file"))
    missing = [name for name in named if name and not (output / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{output} is incomplete: {STATE_FILE} (after epoch {state['epoch']}) names {', '.join(missing)}, "
            f"which is not there: put it back, {start_afresh}."
        )
    return state


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) DenseNet121 as configured; returns the run summary (also in ``summary.json``).

    Raises:
        CheckpointError: if an epoch could not be saved; the committed state is intact.
    """
    output = Path(cfg.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    state_path = output / STATE_FILE
    state = resumable_state(output, cfg)
    remove_leftovers(output, state)
    atomic_write_text(output / CONFIG_FILE, json.dumps(dataclasses.asdict(cfg), indent=2))
    finished = bool(state.get("stopped_early") or state.get("epoch", 0) >= cfg.epochs)
    if finished and (output / "summary.json").is_file():
        print(f"Run in {output} already finished at epoch {state['epoch']}.")
        return json.loads((output / "summary.json").read_text())

    data.image_folders(config.data_dir(cfg.data_dir))  # an empty data directory: say so, not blame a split row
    publish_best_weights(output, state)  # in case a kill came between a commit and its publish

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()

    train_arrays = {size: load_split_arrays(cfg, "train", size) for size in cfg.training_sizes}
    train_images, train_labels, train_rows = train_arrays[cfg.image_size]
    valid_images, valid_labels, _ = load_split_arrays(cfg, "valid")
    full_resolution = train_images[(~data.is_low_resolution(train_rows)).to_numpy()]
    statistics = pipeline.training_statistics(full_resolution, cfg.statistics_sample, cfg.seed)
    atomic_write_text(output / NORMALISATION_FILE, json.dumps({"mean": statistics[0], "std": statistics[1]}))
    positive_frequencies, negative_frequencies = data.compute_class_freqs(train_labels)
    augmentation = pipeline.Augmentation(cfg.horizontal_flip, cfg.rotation, cfg.zoom, cfg.shift)
    steps_per_epoch = -(-len(train_images) // cfg.batch_size)
    train_data = training_epochs(cfg, train_arrays, state.get("epoch", 0), augmentation)
    valid_statistics = statistics if cfg.validation_standardisation == inference.TRAINING_STATISTICS else pipeline.PER_IMAGE
    valid_data = pipeline.make_dataset(
        valid_images, valid_labels, cfg.batch_size, training=False, statistics=valid_statistics
    )

    precision = fast_layers.resolve_precision(cfg.precision)
    print(f"Training in {precision}.")
    with make_strategy(cfg.strategy).scope():
        network = model.build_densenet121(
            len(cfg.label_names),
            # Any input size where sizes change during training: the weights do not depend on it.
            None if len(cfg.training_sizes) > 1 else cfg.image_size,
            "imagenet" if cfg.initial_weights == "imagenet" else None,
            precision=precision,
            dropout=cfg.dropout,
        )
        if cfg.initial_weights not in (None, "imagenet") and not state:
            model.load_pretrained_weights(network, cfg.initial_weights)
        network.compile(
            optimizer=make_optimizer(cfg, steps_per_epoch),
            loss=losses.get_weighted_loss(negative_frequencies, positive_frequencies, label_smoothing=cfg.label_smoothing),
            metrics=[keras.metrics.AUC(multi_label=True, num_labels=len(cfg.label_names), name="auc")],
        )
        if state:
            network.optimizer.build(network.trainable_variables)
            network.load_weights(output / state["weights_file"])
            if cfg.schedule == "plateau":  # a schedule follows the restored step count by itself
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
    tracked = {"reduce_lr": reduce_lr, "early_stopping": early_stopping}
    checkpoint = ResumableCheckpoint(output, cfg.monitor, tracked, state)
    callbacks = [
        Throughput(len(train_images)),
        *([reduce_lr] if cfg.schedule == "plateau" else []),
        # Validation scores the moving average (the weights are swapped back for training).
        *([keras.callbacks.SwapEMAWeights()] if cfg.ema_momentum else []),
        early_stopping,
        keras.callbacks.TensorBoard(str(output / "tensorboard")),
        keras.callbacks.CSVLogger(str(csv_path), append=True),
        checkpoint,
    ]
    network.fit(
        train_data,
        steps_per_epoch=steps_per_epoch,
        validation_data=valid_data,
        epochs=state["epoch"] if finished else cfg.epochs,  # finished but killed before the summary: no more epochs
        initial_epoch=state.get("epoch", 0),
        callbacks=callbacks,
        verbose=cfg.verbose,
    )
    if checkpoint.failure:
        raise checkpoint.failure
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
