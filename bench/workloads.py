"""What the benchmark measures: the baseline and the project's paths for inference, training and memory.

Each ``benchmark_*`` function times its paths against a plain Keras baseline (``bench.timing``) and
returns one row (a dict) per path; ``bench.report`` turns the rows into bench/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from bench.timing import densenet_gflop, interleave, median_ratio, peak_rss_mib
from cxr import config, data, images, inference, losses, pipeline
from cxr import model as cxr_model
from cxr.fast_layers import resolve_precision

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_SETTINGS = config.SHIPPED_MODEL.with_suffix(".json")
SHIPPED_WEIGHTS = config.SHIPPED_MODEL.with_suffix(".weights.h5")
TOLERANCE = 1e-3  # largest accepted |probability difference| from plain model.predict
INFERENCE_BATCH = 32
TRAIN_SIZE, TRAIN_BATCH = 224, 16
# train.py's default augmentation.
TRAIN_AUGMENTATION = pipeline.Augmentation(horizontal_flip=True, rotation=0.02, zoom=0.1, shift=0.05)


# --- inference -----------------------------------------------------------------------------------


def plain_predict(network: keras.Model, pixels: np.ndarray, statistics, batch_size: int = INFERENCE_BATCH):
    """The baseline: standardise in numpy, then ``model.predict`` on the array."""
    return model_predict(network, inference.standardise(pixels, statistics), batch_size)


def model_predict(network: keras.Model, inputs: np.ndarray, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    return np.asarray(network.predict(inputs, batch_size=batch_size, verbose=0), np.float32)


def dataset_predict(network: keras.Model, pixels: np.ndarray, statistics, batch_size: int = INFERENCE_BATCH):
    """The project's path before this benchmark: the validation tf.data pipeline and ``model.predict``."""
    dataset = pipeline.make_dataset(pixels, np.zeros((len(pixels), 0), np.float32), batch_size,
                                    training=False, statistics=statistics)
    return np.asarray(network.predict(dataset, verbose=0), np.float32)


def project_predict(network: keras.Model, pixels: np.ndarray, statistics, batch_size: int = INFERENCE_BATCH):
    """The project's inference path now (what the notebook, the app and export_model.py call)."""
    return inference.predict(network, pixels, statistics, batch_size=batch_size, verbose=0)


def inference_candidates(network: keras.Model, pixels: np.ndarray, statistics,
                         project_network: keras.Model | None = None) -> dict[str, Callable]:
    """Callables returning probabilities for ``pixels``: the baseline first, then the project's paths."""
    return {
        "plain model.predict (baseline)": lambda: plain_predict(network, pixels, statistics),
        "project: inference.predict": lambda: project_predict(project_network or network, pixels, statistics),
        "before: make_dataset + predict": lambda: dataset_predict(network, pixels, statistics),
    }


def benchmark_inference(network: keras.Model, pixels: np.ndarray, statistics, repeats: int, peak_gflops: float,
                        log: Callable[[str], None] = print, project_network: keras.Model | None = None,
                        explore: bool = False) -> list[dict]:
    """One row per path: images/s, ratio to plain predict, GFLOP/s, % of peak, max |difference|.

    ``network`` is plain Keras (the baseline's and the explored candidates'); ``project_network`` the
    same weights as ``build_densenet121`` builds them (default: ``network``). ``explore`` adds the
    candidates of ``bench.explore``.
    """
    size = pixels.shape[1]
    candidates = inference_candidates(network, pixels, statistics, project_network)
    setup = {}
    if explore:
        from bench.explore import exploration_candidates  # loaded only when asked: tf2onnx, frozen graphs

        explored, setup = exploration_candidates(network, pixels, statistics, log)
        candidates |= explored
    first_call, reference = {}, None
    outputs = {}
    for name, run in candidates.items():  # first call: tracing, compilation, warm-up
        start = time.perf_counter()
        outputs[name] = run()
        first_call[name] = time.perf_counter() - start
        if reference is None:
            reference = outputs[name]
        log(f"  {size} px {name}: first call {first_call[name]:.1f} s")
    seconds = interleave(candidates, repeats)
    baseline = next(iter(candidates))
    rows = []
    for name in candidates:
        per_image = densenet_gflop(size) if network.name == "densenet121_cxr" else float("nan")
        images_per_second = len(pixels) / float(np.median(seconds[name]))
        rows.append({
            "size": size,
            "images": len(pixels),
            "path": name,
            "images/s": images_per_second,
            "ratio": median_ratio(seconds[baseline], seconds[name]),
            "GFLOP/s": images_per_second * per_image,
            "% of peak": 100 * images_per_second * per_image / peak_gflops,
            "max abs diff": float(np.max(np.abs(outputs[name] - reference))),
            "first call s": first_call[name],
            "setup s": setup.get(name, 0.0) if not isinstance(setup.get(name), str) else float("nan"),
            "repeats": repeats,
            "seconds": seconds[name],
        })
    rows.extend({"size": size, "path": name, "note": note} for name, note in setup.items() if isinstance(note, str))
    return rows


def shipped_model_available() -> bool:
    """Whether the shipped model's settings and weights are in models/ (not while one is being re-exported)."""
    return SHIPPED_SETTINGS.is_file() and SHIPPED_WEIGHTS.is_file()


def shipped_model(size: int, fuse_batch_norm: bool = True) -> tuple[keras.Model, object]:
    """DenseNet121 at ``size`` px with the shipped weights (size-independent) and standardisation;
    ``fuse_batch_norm=False``: Keras' own layers, the plain baselines' model.

    Without the shipped files (``shipped_model_available()``): seeded random weights and per-image
    standardisation, which cost the same time.
    """
    if not shipped_model_available():
        keras.utils.set_random_seed(config.SEED)
        return (cxr_model.build_densenet121(len(config.LABELS), size, fuse_batch_norm=fuse_batch_norm),
                inference.PER_IMAGE)
    card = inference.read_card(SHIPPED_SETTINGS)
    network = cxr_model.build_densenet121(len(card["labels"]), size, fuse_batch_norm=fuse_batch_norm)
    cxr_model.load_pretrained_weights(network, SHIPPED_WEIGHTS)
    return network, inference.card_standardisation(card)


def split_images(split: str, size: int, count: int | None, full_resolution_only: bool = True):
    """uint8 images, labels and file paths of the first ``count`` rows of a split, decoded now (no disk cache).

    Not blurred as the shipped model's inputs are: the speed of a forward pass does not depend on the pixels."""
    loaded = images.load_split(split, size, limit=count, low_resolution=not full_resolution_only, cache_dir=None)
    root = config.data_dir()
    paths = [data.image_path(row, root) for _, row in loaded.rows.iterrows()]
    return loaded.pixels, loaded.labels, paths


# --- training ------------------------------------------------------------------------------------


def pil_batches(paths: list[Path], labels: np.ndarray, size: int, batch_size: int, seed: int = 0) -> Iterator:
    """The course's way: open every PNG of a batch with PIL, resize, standardise, yield numpy, forever."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(paths))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chosen = order[start:start + batch_size]
            batch = []
            for index in chosen:
                with Image.open(paths[index]) as image:
                    pixels = np.asarray(image.convert("L").resize((size, size), Image.BILINEAR), np.float32)
                if rng.random() < 0.5:
                    pixels = pixels[:, ::-1]
                batch.append((pixels - pixels.mean()) / (pixels.std() + inference.EPSILON))
            yield np.repeat(np.stack(batch)[..., np.newaxis], 3, axis=-1), labels[chosen].astype(np.float32)


def project_training_data(pixels: np.ndarray, labels: np.ndarray, batch_size: int, seed: int = 0) -> tf.data.Dataset:
    """The project's training feed: cached uint8 arrays through ``cxr.pipeline.make_dataset``, repeated."""
    return pipeline.make_dataset(pixels, labels, batch_size, training=True, augmentation=TRAIN_AUGMENTATION,
                                 seed=seed).repeat()


def compiled_for_training(network: keras.Model, labels: np.ndarray) -> keras.Model:
    """Compile like train.py: Adam, the weighted loss from the label frequencies, multi-label AUC."""
    positive, negative = data.compute_class_freqs(labels)
    network.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.get_weighted_loss(negative, positive),
                    metrics=[keras.metrics.AUC(multi_label=True, num_labels=labels.shape[1], name="auc")])
    return network


BASELINE_FIT = "plain fit on a PIL generator (baseline)"
PLAIN_DATASET_FIT = "make_dataset + plain Keras model, float32"
FUSED_FLOAT32_FIT = "make_dataset + fused batch norm, float32"
PROJECT_FIT = "project: make_dataset + fit"


def plain_network(labels: np.ndarray, size: int) -> keras.Model:
    """The course's model: Keras' DenseNet121 as it is, in float32."""
    return cxr_model.build_densenet121(labels.shape[1], size, fuse_batch_norm=False)


def fused_float32_network(labels: np.ndarray, size: int) -> keras.Model:
    return cxr_model.build_densenet121(labels.shape[1], size, precision="float32")


def project_network(labels: np.ndarray, size: int, precision: str) -> keras.Model:
    """The model train.py builds: fused batch norms, ``precision`` (``resolve_precision("auto")`` there)."""
    return cxr_model.build_densenet121(labels.shape[1], size, precision=precision)


def benchmark_training(networks: dict[str, keras.Model], pixels: np.ndarray, labels: np.ndarray, paths: list[Path],
                       batch_size: int, steps: int, repeats: int, pipeline_batches: int, precision: str,
                       log: Callable[[str], None] = print) -> list[dict]:
    """images/s of ``fit``, one effect added at a time, then of each feed alone.

    ``networks``: compiled models built by ``plain_network``, ``fused_float32_network`` and
    ``project_network`` (keys "plain", "fused float32", "project"), the last in ``precision``. The
    baseline is the plain model on the PIL feed; then the project's input pipeline into the plain model;
    into the fused model; and into train.py's model (the fused one in ``precision``; the fused float32
    step is left out when ``precision`` is float32).
    """
    size = pixels.shape[1]
    dataset = project_training_data(pixels, labels, batch_size)
    project = f"{PROJECT_FIT} ({precision}, fused batch norm, as train.py here)"
    runs = {BASELINE_FIT: (networks["plain"], lambda: pil_batches(paths, labels, size, batch_size)),
            PLAIN_DATASET_FIT: (networks["plain"], lambda: dataset)}
    if precision != "float32":
        runs[FUSED_FLOAT32_FIT] = (networks["fused float32"], lambda: dataset)
    runs[project] = (networks["project"], lambda: dataset)

    def fit(network, feed, count):
        network.fit(feed(), steps_per_epoch=count, epochs=1, verbose=0, shuffle=False)

    for name, (network, feed) in runs.items():  # warm-up: tracing, the first optimizer step, pipeline start
        start = time.perf_counter()
        fit(network, feed, 2)
        log(f"  training warm-up {name}: {time.perf_counter() - start:.1f} s")
    seconds = interleave({name: (lambda n=network, f=feed: fit(n, f, steps)) for name, (network, feed) in runs.items()},
                         repeats)

    def iterate(feed):
        for _ in zip(range(pipeline_batches), feed()):
            pass

    # Each feed alone, against the rate of the fit it serves.
    alone = {"PIL generator alone": (runs[BASELINE_FIT][1], BASELINE_FIT),
             "project: make_dataset alone": (runs[project][1], project)}
    for feed, _ in alone.values():
        iterate(feed)  # warm-up
    alone_seconds = interleave({name: (lambda f=feed: iterate(f)) for name, (feed, _) in alone.items()}, repeats)

    model_rate = {name: steps * batch_size / float(np.median(seconds[name])) for name in runs}
    rows = [{"workload": f"training step, {size} px, batch {batch_size}", "path": name,
             "images/s": model_rate[name], "ratio": median_ratio(seconds[BASELINE_FIT], seconds[name]),
             "steps": steps, "repeats": repeats, "seconds": seconds[name]} for name in runs]
    for name, (_, served) in alone.items():
        rate = pipeline_batches * batch_size / float(np.median(alone_seconds[name]))
        rows.append({"workload": f"input only, {size} px, batch {batch_size}", "path": name, "images/s": rate,
                     "ratio": rate / model_rate[served], "steps": pipeline_batches, "repeats": repeats,
                     "ratio of": "feed alone / what its fit consumed"})
    return rows


# --- memory (one subprocess per workload) ---------------------------------------------------------



def worker_command(workload: str, **options) -> list[str]:
    """The command line of ``bench.run``'s hidden worker mode: one workload in a fresh process."""
    return [sys.executable, "-m", "bench.run", "--worker", workload,
            *(item for name, value in options.items() for item in (f"--{name}", str(value)))]


def memory_worker(workload: str, path: str, size: int, count: int | None, steps: int) -> dict:
    """Run one workload in this (fresh) process and report its peak resident memory."""
    start = time.perf_counter()
    if workload == "inference":
        network, statistics = shipped_model(size, fuse_batch_norm=path == "project")
        pixels, _, _ = split_images("test", size, count)
        run = project_predict if path == "project" else plain_predict
        run(network, pixels, statistics)
    elif workload == "training":
        pixels, labels, paths = split_images("train", size, count)
        network = compiled_for_training(
            project_network(labels, size, resolve_precision("auto")) if path == "project"
            else plain_network(labels, size), labels)
        feed = (project_training_data(pixels, labels, TRAIN_BATCH) if path == "project"
                else pil_batches(paths, labels, size, TRAIN_BATCH))
        network.fit(feed, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    else:
        raise ValueError(f"unknown workload {workload!r}")
    return {"peak_rss_mib": peak_rss_mib(), "seconds": time.perf_counter() - start}


def run_worker(workload: str, **options) -> dict:
    """``worker_command`` in a subprocess from the repository root; its last stdout line, decoded."""
    done = subprocess.run(worker_command(workload, **options), capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{workload} worker {options} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark_memory(quick: bool, log: Callable[[str], None] = print) -> list[dict]:
    """Peak resident memory of inference and training, baseline and project, one fresh process each."""
    rows = []
    size = 128 if not quick else 64
    train_size = TRAIN_SIZE if not quick else 64
    plans = [
        ("inference", f"inference, {size} px, batch {INFERENCE_BATCH}, {'all' if not quick else '32'} test images",
         size, 0 if not quick else 32, 0, ("plain", "project")),
        ("training", f"training, {train_size} px, batch {TRAIN_BATCH}, {3 if not quick else 1} steps",
         train_size, 256 if not quick else 32, 3 if not quick else 1, ("pil", "project")),
    ]
    for workload, label, workload_size, count, steps, paths in plans:
        measured = {}
        for path in paths:
            measured[path] = run_worker(workload, path=path, size=workload_size, count=count, steps=steps)
            log(f"  memory {workload}/{path}: {measured[path]['peak_rss_mib']:.0f} MiB")
        baseline, candidate = (measured[path]["peak_rss_mib"] for path in paths)
        rows.append({"workload": label, "baseline": "plain predict" if workload == "inference" else "PIL generator fit",
                     "baseline MiB": baseline, "project MiB": candidate,
                     "ratio": candidate / baseline})
    return rows


# --- notebook ------------------------------------------------------------------------------------


def time_notebook() -> dict:
    """Seconds of the notebook under nbval, as `make test` runs it, and whether it passed."""
    command = [sys.executable, "-m", "pytest", "chest_x_ray_diagnosis.ipynb", "-q"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    tail = [line for line in done.stdout.strip().splitlines() if line.strip()][-1:] or [""]
    return {"seconds": seconds, "passed": done.returncode == 0, "summary": tail[0], "returncode": done.returncode}
