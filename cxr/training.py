"""The training recipe behind ``train.py``: its settings, optimizer and schedule, datasets, and ``train()``.

A run lives in one output directory (``cxr.run_directory``): after every epoch the full training
state is committed there, so that the same command started again after a crash or a kill resumes
from the last completed epoch.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from cxr import checks, config, data, fast_layers, images, inference, losses, model, multi_worker, pipeline
from cxr.run_directory import ResumableCheckpoint, RunDirectory

# Settings that say where files are or how much to print, not how to train (left out of the model card).
LOCATION_SETTINGS = ("output_dir", "data_dir", "split_dir", "cache_dir", "verbose")
# Mirror over this many logical CPU devices where a machine has no GPU (tests of the mirrored strategy).
LOGICAL_CPUS_VARIABLE = "CXR_LOGICAL_CPUS"


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` in the output directory."""

    output_dir: str = "runs/densenet121"
    data_dir: str | None = None  # default: $CXR_DATA_DIR or ../shared/data/nih
    split_dir: str = str(config.SPLIT_DIR)
    cache_dir: str | None = str(config.SPLIT_DIR / "cache")
    labels: str = "14"  # "14" findings or the "4"-class variant (Effusion, Atelectasis, Infiltration, No Finding)
    image_size: int = 224  # the size the model is validated and shipped at
    # Progressive resizing: the first `early_epochs` train at `early_image_size` (on a 2-core CPU an
    # epoch at 128 px costs about 2.4 times less than at 224), the rest at `image_size`. Validation is
    # always at `image_size`.
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
    # Gaussian blur (standard deviation in pixels) after resizing, against the trace of the file's
    # size (cxr.images.to_model_size); the model's JSON records it so that inference blurs the same way
    blur: float = 0.0
    horizontal_flip: bool = True
    rotation: float = 0.02
    zoom: float = 0.1
    shift: float = 0.05
    gamma: float = 0.0  # random gamma: the exponent lies between 1 / (1 + gamma) and 1 + gamma
    limit: int | None = None  # keep only the first N rows of each split (smoke tests)
    seed: int = config.SEED
    strategy: str = "default"  # default | mirrored | multi-worker
    # None (random), "imagenet" (online only), or any file load_pretrained_weights reads: a DenseNet121
    # notop file, or the weights of an earlier run to start from (warm start)
    initial_weights: str | None = None
    # How validation images are standardised: "per-image" as in training, or "training-statistics"
    # (the course's way; measured worse on validation for a model trained from scratch, see models/README.md)
    validation_standardisation: str = inference.PER_IMAGE
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
            "validation_standardisation": (inference.PER_IMAGE, inference.TRAINING_STATISTICS),
            "precision": fast_layers.PRECISIONS,
            "schedule": ("plateau", "cosine"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.ema_momentum is not None and not 0 < self.ema_momentum < 1:
            raise ValueError(f"ema_momentum must lie between 0 and 1, got {self.ema_momentum}.")
        if not checks.is_number(self.blur, low=0):
            raise ValueError(f"--blur must be a standard deviation of 0 or more pixels, got {self.blur}.")
        if not checks.is_number(self.gamma, low=0):
            raise ValueError(f"--gamma must be 0 (off) or more, got {self.gamma}.")
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
    """The tf.distribute strategy: one device (default), all local GPUs (mirrored), or several machines
    (multi-worker, as ``TF_CONFIG`` describes them). Create it before any other TensorFlow operation."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(_logical_cpus())
    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}: use default, mirrored or multi-worker.")


def _logical_cpus() -> list[str] | None:
    """With ``$CXR_LOGICAL_CPUS`` = N on a machine without GPUs, the CPU split into N devices to mirror
    over; else None (MirroredStrategy's own choice: every GPU)."""
    count = int(os.environ.get(LOGICAL_CPUS_VARIABLE) or 0)
    if count < 2 or tf.config.list_physical_devices("GPU"):
        return None
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def make_learning_rate(
    cfg: TrainConfig, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
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


def load_split(cfg: TrainConfig, split: str, size: int | None = None) -> images.Split:
    """One split as the run uses it (``limit``, the 64-px switch for training), decoded at ``size``
    (None: rows and labels only)."""
    return images.load_split(
        split, size, split_dir=cfg.split_dir, data_dir=cfg.data_dir, labels=cfg.label_names, limit=cfg.limit,
        low_resolution=split != "train" or cfg.use_low_resolution, cache_dir=cfg.cache_dir, blur=cfg.blur,
    )  # fmt: skip


def training_epochs(
    cfg: TrainConfig, splits: dict[int, images.Split], first_epoch: int, augmentation: pipeline.Augmentation
) -> tf.data.Dataset:
    """One dataset for the epochs from ``first_epoch`` on, each epoch at its size (progressive resizing):
    ``steps_per_epoch`` batches per epoch, reshuffled every epoch."""
    # Consecutive epochs of one size make one stage; a finished run gets an empty stage list.
    stages = [(size, len(list(group)))
              for size, group in itertools.groupby(range(first_epoch, cfg.epochs), cfg.size_of_epoch)]
    epochs = None
    for size, count in stages or [(cfg.image_size, 1)]:
        split = splits[size]
        stage = pipeline.make_dataset(
            split.pixels, split.labels, cfg.batch_size, training=True, augmentation=augmentation, seed=cfg.seed + size
        ).repeat(count)
        epochs = stage if epochs is None else epochs.concatenate(stage)
    return epochs


def build_model(cfg: TrainConfig, precision: str, steps_per_epoch: int, train_labels: np.ndarray) -> keras.Model:
    """DenseNet121 compiled with the run's optimizer, its class-weighted loss and a per-finding AUC."""
    network = model.build_densenet121(
        len(cfg.label_names),
        # Any input size where sizes change during training: the weights do not depend on it.
        None if len(cfg.training_sizes) > 1 else cfg.image_size,
        "imagenet" if cfg.initial_weights == "imagenet" else None,
        precision=precision,
        dropout=cfg.dropout,
        # Over several replicas, batch statistics of the global batch: the replicas stay identical.
        synchronized_batch_norm=tf.distribute.get_strategy().num_replicas_in_sync > 1,
    )
    positive_frequencies, negative_frequencies = data.compute_class_freqs(train_labels)
    network.compile(
        optimizer=make_optimizer(cfg, steps_per_epoch),
        loss=losses.get_weighted_loss(negative_frequencies, positive_frequencies, label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.AUC(multi_label=True, num_labels=len(cfg.label_names), name="auc")],
    )
    return network


def make_callbacks(
    cfg: TrainConfig, run: RunDirectory, state: dict, images_per_epoch: int
) -> list[keras.callbacks.Callback]:
    """The callbacks of ``fit``; the last is the ``ResumableCheckpoint`` (it restores the others' counters)."""
    mode = "max" if "auc" in cfg.monitor else "min"
    reduce_lr = keras.callbacks.ReduceLROnPlateau(cfg.monitor, factor=0.1, patience=cfg.reduce_lr_patience,
                                                  mode=mode, verbose=1)
    early_stopping = keras.callbacks.EarlyStopping(cfg.monitor, patience=cfg.early_stopping_patience,
                                                   mode=mode, verbose=1)
    return [
        Throughput(images_per_epoch),
        *([reduce_lr] if cfg.schedule == "plateau" else []),
        # Validation scores the moving average (the weights are swapped back for training).
        *([keras.callbacks.SwapEMAWeights()] if cfg.ema_momentum else []),
        early_stopping,
        keras.callbacks.TensorBoard(str(run.own / run.TENSORBOARD)),
        keras.callbacks.CSVLogger(str(run.own / run.LOG), append=True),
        ResumableCheckpoint(run, cfg.monitor, {"reduce_lr": reduce_lr, "early_stopping": early_stopping}, state),
    ]


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) DenseNet121 as configured; returns the run summary (also in ``summary.json``).

    Raises:
        cxr.run_directory.CheckpointError: if an epoch could not be saved; the committed state is intact.
        cxr.run_directory.DamagedRunFile: naming a file of the run directory that is not valid JSON.
        FileNotFoundError: naming the data, split or run file that is missing.
    """
    strategy = make_strategy(cfg.strategy)  # first: multi-worker training sets up its collectives at startup
    run = RunDirectory.for_strategy(cfg.output_dir, strategy)
    state = run.start(dataclasses.asdict(cfg))  # {} for a new run; refuses settings the run cannot resume with
    first_epoch = state.get("epoch", 0)
    finished = bool(state.get("stopped_early") or first_epoch >= cfg.epochs)
    if finished and run.read_summary():
        print(f"Run in {run.path} already finished at epoch {first_epoch}.")
        return run.read_summary()
    data.image_folders(config.data_dir(cfg.data_dir))  # an empty data directory: say so, not blame a split row

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()

    # The data: training images at every size the epochs use, standardised image by image;
    # validation at the final size, standardised as the run says.
    train_splits = {size: load_split(cfg, "train", size) for size in cfg.training_sizes}
    train_split = train_splits[cfg.image_size]
    full_resolution = train_split.pixels[(~data.is_low_resolution(train_split.rows)).to_numpy()]
    mean, std = pipeline.training_statistics(full_resolution, cfg.statistics_sample, cfg.seed)
    run.write_json(run.NORMALISATION, {"mean": mean, "std": std})
    augmentation = pipeline.Augmentation(cfg.horizontal_flip, cfg.rotation, cfg.zoom, cfg.shift, cfg.gamma)
    train_data = training_epochs(cfg, train_splits, first_epoch, augmentation)
    valid = load_split(cfg, "valid", cfg.image_size)
    by_statistics = cfg.validation_standardisation == inference.TRAINING_STATISTICS
    valid_data = pipeline.make_dataset(valid.pixels, valid.labels, cfg.batch_size, training=False,
                                       statistics=(mean, std) if by_statistics else inference.PER_IMAGE)

    # The model, from the committed epoch when resuming.
    steps_per_epoch = -(-len(train_split.pixels) // cfg.batch_size)
    precision = fast_layers.resolve_precision(cfg.precision)
    print(f"Training in {precision}.")
    with strategy.scope():
        network = build_model(cfg, precision, steps_per_epoch, train_split.labels)
        if cfg.initial_weights not in (None, "imagenet") and not state:
            model.load_pretrained_weights(network, cfg.initial_weights)
        if state:
            network.optimizer.build(network.trainable_variables)
            run.load_weights(network, state)
            if cfg.schedule == "plateau":  # a schedule follows the restored step count by itself
                network.optimizer.learning_rate.assign(state["learning_rate"])
            print(f"Resuming {run.path} after epoch {first_epoch} (best {cfg.monitor} {state['best']:.4f}).")
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        multi_worker.enable_fit(network, valid_data)

    callbacks = make_callbacks(cfg, run, state, len(train_split.pixels))
    checkpoint = callbacks[-1]
    network.fit(
        train_data,
        steps_per_epoch=steps_per_epoch,
        validation_data=valid_data,
        epochs=first_epoch if finished else cfg.epochs,  # finished but killed before the summary: no more epochs
        initial_epoch=first_epoch,
        callbacks=callbacks,
        verbose=cfg.verbose,
    )
    if checkpoint.failure:
        raise checkpoint.failure
    log = run.read_log()
    summary = {
        "epochs_completed": int(state["epoch"]),
        "best_epoch": int(state["best_epoch"]),
        f"best_{cfg.monitor}": state["best"],
        "median_images_per_second": float(log["images_per_second"].median()),
        "median_epoch_seconds": float(log["epoch_seconds"].median()),
        "total_hours": float(log["epoch_seconds"].sum() / 3600),
        "normalisation": {"mean": mean, "std": std},
        "labels": list(cfg.label_names),
        "image_size": cfg.image_size,
        "precision": precision,
        "train_images": len(train_split.pixels),
    }
    run.write_json(run.SUMMARY, summary)
    return summary
