"""A training run's directory: the files it holds, what a resume may trust, and the per-epoch commit.

A run lives in one output directory::

    config.json           the settings (TrainConfig), checked when the same command runs again
    state.json            the last committed epoch: its weights file, the best epoch's, callback counters
    normalisation.json    the training-set mean and std that inference needs
    epochNNN.weights.h5   the last epoch's weights and optimizer state (and the best epoch's, if older)
    best.weights.h5       the best epoch's weights, once state.json has committed that epoch
    log.csv               one line per epoch; summary.json: the finished run in numbers

After every epoch ``ResumableCheckpoint`` writes the epoch's weights, then ``state.json`` (the
commit point), then moves ``best.weights.h5``; every file is written atomically (``cxr.files``), so
a run killed at any moment resumes from the last state it can fully trust.

In multi-worker training only the chief writes the run; every other worker reads the run's
committed files and writes its own copies to ``worker-N/`` (never read), as TensorFlow advises.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import keras
import pandas as pd

from cxr import config
from cxr.checks import BadInput
from cxr.files import PARTIAL_PREFIX, atomic_write

# Files a kill can leave behind: epoch weights never committed (or no longer named), half-written files
# (``*.partial``: as runs before cxr.files named them).
LEFTOVER_FILES = ("epoch*.weights.h5", PARTIAL_PREFIX + "*", "*.partial")
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


class CheckpointError(RuntimeError):
    """An epoch could not be saved (a full disk, say); the last committed state is intact."""


class DamagedRunFile(ValueError):
    """A JSON file of a run directory cannot be read (the run writes them atomically: something else did it)."""


class RunDirectory:
    """The files of one training run.

    Reads come from ``path``, the run. Writes go to ``own``: the run itself, or for a worker other than
    the chief in multi-worker training, ``path/<worker>/`` (that worker's copies, never read back).
    """

    CONFIG = "config.json"
    STATE = "state.json"
    NORMALISATION = "normalisation.json"
    BEST_WEIGHTS = "best.weights.h5"
    LOG = "log.csv"
    SUMMARY = "summary.json"
    TENSORBOARD = "tensorboard"

    def __init__(self, path: str | os.PathLike, worker: str | None = None):
        self.path = Path(path)
        self.worker = worker
        self.own = self.path / worker if worker else self.path

    @classmethod
    def for_strategy(cls, path: str | os.PathLike, strategy) -> RunDirectory:
        """The run as this process of a ``tf.distribute`` strategy sees it: the chief (or a single process)
        writes the run, another worker its ``worker-N/`` folder."""
        if strategy.extended.should_checkpoint:
            return cls(path)
        resolver = strategy.cluster_resolver
        return cls(path, worker=f"{resolver.task_type}-{resolver.task_id}")

    # --- reading the committed run ---------------------------------------------------------------------

    def read_state(self) -> dict:
        """The training state committed in the run; {} if there is none."""
        return read_json(self.path / self.STATE) or {}

    def read_summary(self) -> dict | None:
        return read_json(self.path / self.SUMMARY)

    def resumable_state(self, settings: dict) -> dict:
        """The state committed in the run ({} for a new run), once checked that ``settings`` can resume it.

        Raises:
            FileNotFoundError: if config.json or a weights file that state.json names is missing.
            BadInput: if ``settings`` change a setting that a resumed run cannot follow.
        """
        state = self.read_state()
        if not state:
            return state
        start_afresh = "or start the run afresh with a new --output-dir"
        saved = read_json(self.path / self.CONFIG)
        if saved is None:
            raise FileNotFoundError(
                f"{self.path} holds a run ({self.STATE} after epoch {state['epoch']}) without its {self.CONFIG}, "
                f"so its settings cannot be checked: put the file back, {start_afresh}."
            )
        changed = changed_settings(settings, saved)
        if changed:
            raise BadInput(
                f"{self.path} holds a run with other settings ({changed}): resume it with those values "
                "or use a new --output-dir."
            )
        named = (state["weights_file"], state.get("best_weights_file"))
        missing = [name for name in named if name and not (self.path / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.path} is incomplete: {self.STATE} (after epoch {state['epoch']}) names {', '.join(missing)}, "
                f"which is not there: put it back, {start_afresh}."
            )
        return state

    def load_weights(self, network: keras.Model, state: dict) -> None:
        """Put the last committed epoch's weights and optimizer state into ``network`` (its optimizer built)."""
        network.load_weights(self.path / state["weights_file"])

    # --- writing -------------------------------------------------------------------------------------------

    def start(self, settings: dict) -> dict:
        """Open the run for ``settings``: check that they can resume it, clear what a kill left, save them.

        Returns:
            the committed state ({} for a new run).
        """
        state = self.resumable_state(settings)
        if self.worker:  # a worker's copies are never read: start them afresh
            shutil.rmtree(self.own, ignore_errors=True)
        self.own.mkdir(parents=True, exist_ok=True)
        self.remove_leftovers(state)
        self.trim_log(state)
        self.write_json(self.CONFIG, settings)
        self.publish_best_weights(state)  # in case a kill came between a commit and its publish
        return state

    def write_json(self, name: str, content: dict) -> None:
        atomic_write(self.own / name, json.dumps(content, indent=2))

    def write_state(self, state: dict) -> None:
        """Commit ``state``: the run resumes from it from now on."""
        self.write_json(self.STATE, state)

    def save_weights(self, network: keras.Model, name: str) -> None:
        atomic_write(self.own / name, network.save_weights)

    def publish_best_weights(self, state: dict) -> None:
        """Point ``best.weights.h5`` at the best epoch's weights that ``state`` committed (if it names them)."""
        committed = state.get("best_weights_file")
        source, target = self.own / str(committed), self.own / self.BEST_WEIGHTS
        if not committed or not source.is_file():
            return
        if target.is_file() and os.path.samefile(source, target):
            return  # already published; renaming a link onto its own file would do nothing and leave it behind
        atomic_write(target, lambda partial: _link_or_copy(source, partial))

    def remove_leftovers(self, state: dict) -> None:
        """Delete the epoch weights and half-written files that ``state`` does not name."""
        named = {state.get("weights_file"), state.get("best_weights_file")}
        for pattern in LEFTOVER_FILES:
            for path in self.own.glob(pattern):
                if path.name not in named:
                    path.unlink()

    def trim_log(self, state: dict) -> None:
        """Keep the lines of ``log.csv`` that ``state`` committed: none for a new run, and not the line of
        an epoch logged but killed before its commit."""
        path = self.own / self.LOG
        if not state:
            path.unlink(missing_ok=True)
        elif path.is_file() and path.stat().st_size:
            log = pd.read_csv(path)
            committed = log[log["epoch"] < state["epoch"]]
            atomic_write(path, lambda partial: committed.to_csv(partial, index=False))

    def read_log(self) -> pd.DataFrame:
        return pd.read_csv(self.own / self.LOG)


def changed_settings(settings: dict, saved: dict) -> dict:
    """The settings, with the values the saved run used, in which ``settings`` differ from a saved
    ``config.json`` in ways a resumed run cannot follow."""
    changed = {}
    for name, value in settings.items():
        earlier = saved.get(name, EARLIER_DEFAULTS.get(name))
        # A cosine schedule spans the run's epochs: another count would move the rate mid-run.
        resumable = name in RESUMABLE_CHANGES and not (name == "epochs" and settings.get("schedule") == "cosine")
        if not resumable and _comparable(name, earlier) != _comparable(name, value):
            changed[name] = earlier
    return changed


def _comparable(name: str, value):
    """A setting as resumes compare it: directories as absolute paths, so that the same folder given
    another way (a relative path, the default spelled out) is no change."""
    if name == "data_dir":
        return config.chosen_data_dir(value).resolve()
    if name == "split_dir":
        return Path(value).expanduser().resolve()
    return value


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves the weights and the complete training state after each epoch, atomically.

    Each epoch's weights go to a file of their own, then ``state.json``, which names the last
    epoch's file and the best epoch's, is written: it is the commit point. Only then does
    ``best.weights.h5`` move to the committed best epoch, and files no longer named are removed.

    If a write fails (``OSError``: a full disk, say), training stops after that epoch and
    ``failure`` holds a ``CheckpointError`` saying which epoch is committed and how to resume.
    """

    def __init__(self, run: RunDirectory, monitor: str, tracked: dict[str, keras.callbacks.Callback], state: dict):
        super().__init__()
        self.run = run
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
            committed = read_json(self.run.own / RunDirectory.STATE) or {}
            self.run.remove_leftovers(committed)  # what the failed writes left, freeing their space
            where = f"{RunDirectory.STATE}: epoch {committed['epoch']}" if committed else "no epoch committed yet"
            self.failure = CheckpointError(
                f"Could not save epoch {epoch + 1} in {self.run.own}: {error}. The committed state is intact "
                f"({where}); free some disk space and run the same command to carry on from there."
            )

    def on_train_end(self, logs=None):
        if not self.failure and self.state:
            stopped = self.tracked["early_stopping"].stopped_epoch
            self.state["stopped_early"] = bool(self.state.get("stopped_early") or stopped)
            self.run.write_state(self.state)

    def save(self, epoch, logs):
        value = float(logs[self.monitor])
        weights_file = f"epoch{epoch + 1:03d}.weights.h5"
        self.run.save_weights(self.model, weights_file)
        # With weight averaging, the average is what validation scored and what is shipped.
        selected_file = weights_file
        if getattr(self.model.optimizer, "use_ema", False):
            selected_file = f"epoch{epoch + 1:03d}-average.weights.h5"
            with averaged_weights(self.model):
                self.run.save_weights(self.model, selected_file)
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
        self.run.write_state(self.state)
        if improved:
            self.run.publish_best_weights(self.state)
        kept = {weights_file, self.state.get("best_weights_file")}
        for name in (previous | {selected_file}) - kept - {None}:
            (self.run.own / name).unlink(missing_ok=True)


@contextlib.contextmanager
def averaged_weights(network: keras.Model):
    """Within the block, ``network`` holds its optimizer's moving average of the weights (``use_ema``)."""
    swap = keras.callbacks.SwapEMAWeights()
    swap.set_model(network)
    swap.on_test_begin()  # the public hooks by which Keras swaps the averages in around validation...
    try:
        yield network
    finally:
        swap.on_test_end()  # ...and back out


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` holds the bytes of ``source``: a hard link, or a copy where links fail."""
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def read_json(path: Path) -> dict | None:
    """The JSON in ``path``, None if there is no such file; DamagedRunFile naming it if it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DamagedRunFile(f"{path}: not valid JSON ({error}). Restore it from a backup, or train into a new "
                             "--output-dir (`python train.py --output-dir RUN_DIR ...`).") from error


def _plain(value):
    """numpy scalars to Python numbers for JSON."""
    return value.item() if hasattr(value, "item") else value
