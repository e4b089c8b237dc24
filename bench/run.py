"""Benchmarks: inference, training and input-pipeline throughput as ratios to plain Keras baselines.

    .venv/bin/python bench/run.py            # full run, writes bench/RESULTS.md (about half an hour on 2 cores)
    .venv/bin/python bench/run.py --quick    # smoke test: small inputs, prints the table only

Every throughput figure is a ratio against a baseline measured in the same run: baseline and
candidates alternate within each repeat (their order rotating from one repeat to the next, so that
they share the machine's noise), and the figure is the median over the repeats of the per-repeat
ratio. Peak memory comes from one subprocess per workload; the notebook is timed last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from cxr import config, data, evaluation, images, losses, model as cxr_model, pipeline  # noqa: E402

RESULTS_FILE = Path(__file__).resolve().parent / "RESULTS.md"
SHIPPED_SETTINGS = config.MODEL_DIR / "densenet121_cxr14.json"
SHIPPED_WEIGHTS = config.MODEL_DIR / "densenet121_cxr14.weights.h5"
# DenseNet121 costs about 2.9 GMAC (5.8 GFLOP) per 224-px image; other sizes are scaled by (size/224)^2.
GMAC_224 = 2.9
TOLERANCE = 1e-3  # largest accepted |probability difference| from plain model.predict
INFERENCE_BATCH = 32
TRAIN_SIZE, TRAIN_BATCH = 224, 16
# train.py's default augmentation.
TRAIN_AUGMENTATION = pipeline.Augmentation(horizontal_flip=True, rotation=0.02, zoom=0.1, shift=0.05)
SECTIONS = ("inference", "threads", "training", "memory", "notebook")
# A baseline call this much slower than its fastest counts as one that waited for tf.data's autotuner
# (the waits add a second or more; the machine's own noise is a few per cent).
WAIT_FACTOR = 1.25
GOALS = {"inference": 1.5, "training": 1.5, "pipeline": 10.0, "notebook_seconds": 180.0}


# --- the machine ---------------------------------------------------------------------------------


def machine_info() -> dict:
    """Date, CPU model and cores (from /proc/cpuinfo), software versions and the load at the start."""
    cpu, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu in ("unknown", platform.processor()):
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    try:
        import onnxruntime

        onnx_version = onnxruntime.__version__
    except ImportError:
        onnx_version = "not installed"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onnxruntime": onnx_version,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3,
        "other_training": other_training_running(),
    }


def other_training_running() -> bool:
    """Whether a train.py run of this project (not started by us) is using the CPU."""
    try:
        found = subprocess.run(["pgrep", "-f", "train.py --output-dir"], capture_output=True, text=True)
    except OSError:
        return False
    return any(int(pid) != os.getpid() for pid in found.stdout.split())


def cpu_snapshot() -> dict:
    """Machine-wide busy and steal CPU seconds (/proc/stat) and this process tree's CPU seconds."""
    own = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for field in ("ru_utime", "ru_stime"))
    snapshot = {"wall": time.time(), "own": own, "busy": float("nan"), "steal": float("nan")}
    stat = Path("/proc/stat")
    if stat.is_file():
        fields = [float(value) for value in stat.read_text().splitlines()[0].split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
        steal = fields[7] if len(fields) > 7 else 0.0
        busy = sum(fields[:8]) - idle - steal
        snapshot.update(busy=busy / ticks, steal=steal / ticks)
    return snapshot


def cpu_share_of_others(start: dict, end: dict) -> tuple[float, float]:
    """(% of the machine's CPU time used by other processes, % stolen by the hypervisor) between snapshots."""
    capacity = (end["wall"] - start["wall"]) * (os.cpu_count() or 1)
    others = (end["busy"] - start["busy"]) - (end["own"] - start["own"])
    return 100 * max(others, 0.0) / capacity, 100 * (end["steal"] - start["steal"]) / capacity


def densenet_gflop(size: int) -> float:
    """Forward-pass GFLOP of DenseNet121 per image (2 FLOP per MAC), scaled from 224 px by area."""
    return 2 * GMAC_224 * (size / 224) ** 2


def matmul_peak_gflops(n: int = 4096, repeats: int = 5, dtype: tf.DType = tf.float32) -> float:
    """Best GFLOP/s of an n x n by n x n tf.matmul: the machine's practical dense peak."""
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((n, n)), dtype)
    b = tf.constant(rng.standard_normal((n, n)), dtype)
    multiply = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1, :1], tf.float32)))
    return 2 * n**3 / best_seconds(lambda: multiply(a, b).numpy(), repeats) / 1e9


def best_seconds(call: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls, after one untimed warm-up call."""
    call()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


# DenseNet121's own convolutions at 224 px (NHWC input, HWIO kernel): the rate its arithmetic can run at.
CONVOLUTIONS = {
    "3x3, 128 to 32 channels at 56x56 (dense block 1)": ((56, 56, 128), (3, 3, 128, 32)),
    "1x1, 640 to 128 channels at 14x14 (dense block 3)": ((14, 14, 640), (1, 1, 640, 128)),
}


def convolution_gflops(batch: int = 32, repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of each of ``CONVOLUTIONS`` alone (tf.nn.conv2d, float32, a batch of ``batch``)."""
    rng = np.random.default_rng(0)
    rates = {}
    for name, (image, kernel) in CONVOLUTIONS.items():
        x = tf.constant(rng.standard_normal((batch, *image)), tf.float32)
        w = tf.constant(rng.standard_normal(kernel), tf.float32)
        convolve = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME")[:1, :1, :1]))
        seconds = best_seconds(lambda: convolve().numpy(), repeats)
        rates[name] = 2 * batch * math.prod(image[:2]) * math.prod(kernel) / seconds / 1e9
    return rates


# --- timing --------------------------------------------------------------------------------------


def interleave(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every candidate, ``repeats`` times, the order rotating each repeat."""
    names = list(candidates)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            candidates[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median_ratio(baseline: list[float], candidate: list[float]) -> float:
    """Median over repeats of baseline seconds / candidate seconds (> 1: the candidate is faster)."""
    return float(np.median(np.asarray(baseline) / np.asarray(candidate)))


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM) in MiB."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- inference candidates ------------------------------------------------------------------------


def plain_predict(network: keras.Model, pixels: np.ndarray, statistics, batch_size: int = INFERENCE_BATCH):
    """The baseline: standardise in numpy, then ``model.predict`` on the array."""
    return model_predict(network, pipeline.standardise(pixels, statistics), batch_size)


def model_predict(network: keras.Model, inputs: np.ndarray, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    return np.asarray(network.predict(inputs, batch_size=batch_size, verbose=0), np.float32)


def dataset_predict(network: keras.Model, pixels: np.ndarray, statistics, batch_size: int = INFERENCE_BATCH):
    """The project's path before this benchmark: the validation tf.data pipeline and ``model.predict``."""
    dataset = pipeline.make_dataset(pixels, np.zeros((len(pixels), 0), np.float32), batch_size,
                                    training=False, statistics=statistics)
    return np.asarray(network.predict(dataset, verbose=0), np.float32)


def project_predict(network: keras.Model, pixels: np.ndarray, statistics, batch_size: int = INFERENCE_BATCH):
    """The project's inference path now (what the notebook, the app and export_model.py call)."""
    return evaluation.predict_probabilities(network, pixels, statistics, batch_size=batch_size, verbose=0)


def function_forward(network: keras.Model, jit_compile: bool, statistics) -> Callable:
    """uint8 (B, H, W) batch -> probabilities, as one tf.function (XLA if ``jit_compile``)."""

    @tf.function(jit_compile=jit_compile,
                 input_signature=None if jit_compile else [tf.TensorSpec((None, *network.input_shape[1:3]), tf.uint8)])
    def forward(batch):
        standardised = pipeline._standardise_batch(tf.cast(batch, tf.float32)[..., tf.newaxis], statistics)
        return tf.cast(network(standardised, training=False), tf.float32)

    return forward


def function_predict(forward: Callable, pixels: np.ndarray, batch_size: int, pad: bool) -> np.ndarray:
    """Call ``forward`` batch by batch; ``pad`` fills the last batch up so that its shape never changes."""
    outputs = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start:start + batch_size]
        count = len(batch)
        if pad and count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count, *batch.shape[1:]), batch.dtype)])
        outputs.append(np.asarray(forward(tf.constant(batch)))[:count])
    return np.concatenate(outputs).astype(np.float32)


def weight_copy(network: keras.Model, dtype_policy: str | None = None) -> keras.Model:
    """A clone of ``network`` with its weights; every layer but the last under ``dtype_policy`` if given."""
    last = network.layers[-1].name

    def clone(layer):
        layer_config = layer.get_config()
        if dtype_policy and layer.name != last and not isinstance(layer, keras.layers.InputLayer):
            layer_config["dtype"] = dtype_policy
        return layer.__class__.from_config(layer_config)

    copy = keras.models.clone_model(network, clone_function=clone)
    copy.set_weights(network.get_weights())
    return copy


def fused_copy(network: keras.Model) -> keras.Model:
    """A copy of the plain model with its batch norms fused, as build_densenet121 builds it."""
    return cxr_model.fuse_batch_norms(network)


def frozen_forward(network: keras.Model, statistics) -> Callable:
    """``function_forward`` with the weights frozen into graph constants (constant folding, cached reorders)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(function_forward(network, False, statistics).get_concrete_function())

    def call(batch):
        result = frozen(batch)
        return result[0] if isinstance(result, (list, tuple)) else result

    return call


def jit_compiled_copy(network: keras.Model) -> keras.Model:
    """A clone compiled with ``jit_compile=True``, so that its ``predict`` runs under XLA."""
    copy = weight_copy(network)
    copy.compile(jit_compile=True)
    return copy


def onnx_session(network: keras.Model, threads: int | None = None):
    """The model converted by tf2onnx and loaded into an ONNX Runtime CPU session (ImportError if absent)."""
    import onnxruntime
    import tf2onnx

    signature = [tf.TensorSpec((None, *network.input_shape[1:]), tf.float32, name="image")]
    proto, _ = tf2onnx.convert.from_keras(network, input_signature=signature, opset=17)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnx_predict(session, pixels: np.ndarray, statistics, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    name = session.get_inputs()[0].name
    standardised = pipeline.standardise(pixels, statistics)
    return np.concatenate([session.run(None, {name: standardised[start:start + batch_size]})[0]
                           for start in range(0, len(pixels), batch_size)]).astype(np.float32)


def inference_candidates(network: keras.Model, pixels: np.ndarray, statistics, explore: bool,
                         log: Callable[[str], None] = print, project_network: keras.Model | None = None,
                         ) -> tuple[dict[str, Callable], dict[str, float]]:
    """Callables returning probabilities for ``pixels``: the baseline first, then the candidates.

    Returns the candidates and the seconds each took to set up (conversion, copies), first call excluded.
    """
    candidates: dict[str, Callable] = {
        "plain model.predict (baseline)": lambda: plain_predict(network, pixels, statistics),
        "project: predict_probabilities": lambda: project_predict(project_network or network, pixels, statistics),
        "before: make_dataset + predict": lambda: dataset_predict(network, pixels, statistics),
    }
    setup: dict[str, float] = {}
    if not explore:
        return candidates, setup
    plain_function = function_forward(network, False, statistics)
    xla_function = function_forward(network, True, statistics)
    for batch_size in (16, 32, 64):
        candidates[f"tf.function, batch {batch_size}"] = (
            lambda b=batch_size: function_predict(plain_function, pixels, b, False))
    candidates["tf.function + XLA, batch 32"] = lambda: function_predict(xla_function, pixels, 32, True)
    start = time.perf_counter()
    compiled = jit_compiled_copy(network)
    setup["compile(jit_compile=True) + predict"] = time.perf_counter() - start
    candidates["compile(jit_compile=True) + predict"] = lambda: plain_predict(compiled, pixels, statistics)
    start = time.perf_counter()
    fused = fused_copy(network)
    fused_function = function_forward(fused, False, statistics)
    setup["fused batch norm, tf.function, batch 32"] = time.perf_counter() - start
    candidates["fused batch norm, tf.function, batch 32"] = lambda: function_predict(fused_function, pixels, 32, False)
    start = time.perf_counter()
    frozen = frozen_forward(network, statistics)
    setup["frozen graph, batch 32"] = time.perf_counter() - start
    candidates["frozen graph, batch 32"] = lambda: function_predict(frozen, pixels, 32, False)
    start = time.perf_counter()
    fused_frozen = frozen_forward(fused, statistics)
    setup["fused batch norm + frozen graph, batch 32"] = time.perf_counter() - start
    candidates["fused batch norm + frozen graph, batch 32"] = lambda: function_predict(fused_frozen, pixels, 32, False)
    start = time.perf_counter()
    bfloat16 = function_forward(weight_copy(network, "mixed_bfloat16"), False, statistics)
    setup["mixed_bfloat16, tf.function, batch 32"] = time.perf_counter() - start
    candidates["mixed_bfloat16, tf.function, batch 32"] = lambda: function_predict(bfloat16, pixels, 32, False)
    try:
        start = time.perf_counter()
        session = onnx_session(network)
        setup["ONNX Runtime (tf2onnx), batch 32"] = time.perf_counter() - start
        candidates["ONNX Runtime (tf2onnx), batch 32"] = lambda: onnx_predict(session, pixels, statistics)
    except Exception as error:  # not installed, or the conversion failed: say so in the results
        log(f"ONNX Runtime candidate left out: {type(error).__name__}: {error}")
        hint = " (pip install -r bench/requirements.txt)" if isinstance(error, ImportError) else ""
        setup["ONNX Runtime (tf2onnx), batch 32"] = f"left out: {type(error).__name__}: {str(error)[:200]}{hint}"
    return candidates, setup


def benchmark_inference(network: keras.Model, pixels: np.ndarray, statistics, repeats: int, explore: bool,
                        peak_gflops: float, log: Callable[[str], None] = print,
                        project_network: keras.Model | None = None) -> list[dict]:
    """One row per candidate: images/s, ratio to plain predict, GFLOP/s, % of peak, max |difference|.

    ``network`` is plain Keras (the baseline's and the explored candidates'); ``project_network`` the
    same weights as ``build_densenet121`` builds them (default: ``network``).
    """
    size = pixels.shape[1]
    candidates, setup = inference_candidates(network, pixels, statistics, explore, log,
                                             project_network or network)
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


NOTES: list[str] = []  # remarks gathered during the run, written under "Notes"


def shipped_model(size: int, fuse_batch_norm: bool = True) -> tuple[keras.Model, object]:
    """DenseNet121 at ``size`` px with the shipped weights (size-independent) and standardisation;
    ``fuse_batch_norm=False``: Keras' own layers, the plain baselines' model.

    Without the shipped files (e.g. while a model is being re-exported): seeded random weights and
    per-image standardisation, which cost the same time; a note says so.
    """
    if not (SHIPPED_SETTINGS.is_file() and SHIPPED_WEIGHTS.is_file()):
        note = (f"{SHIPPED_WEIGHTS.relative_to(REPO_ROOT)} was not there: inference used DenseNet121 with seeded "
                "random weights and per-image standardisation (same cost per image).")
        if note not in NOTES:
            NOTES.append(note)
        keras.utils.set_random_seed(config.SEED)
        return (cxr_model.build_densenet121(len(config.LABELS), size, fuse_batch_norm=fuse_batch_norm),
                pipeline.PER_IMAGE)
    card = json.loads(SHIPPED_SETTINGS.read_text())
    network = cxr_model.build_densenet121(len(card["labels"]), size, fuse_batch_norm=fuse_batch_norm)
    cxr_model.load_pretrained_weights(network, SHIPPED_WEIGHTS)
    return network, cxr_model.inference_statistics(card)


def split_images(split: str, size: int, count: int | None, full_resolution_only: bool = True):
    """uint8 images, labels and file paths of the first ``count`` rows of a split, decoded now (no disk cache)."""
    frame = data.read_split(split)
    if full_resolution_only:
        frame = frame[frame["Resolution"] != 64]
    frame = frame.head(count).reset_index(drop=True) if count else frame.reset_index(drop=True)
    root = config.data_dir()
    pixels, frame = images.load_images(frame, root, size, source=split, cache_dir=None)
    paths = [data.image_path(row, root) for _, row in frame.iterrows()]
    return pixels, data.label_matrix(frame), paths


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
                batch.append((pixels - pixels.mean()) / (pixels.std() + pipeline.EPSILON))
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


TRAINING_PRECISION = cxr_model.resolve_precision("auto")  # what train.py uses on this machine
BASELINE_FIT = "plain fit on a PIL generator (baseline)"
PLAIN_DATASET_FIT = "make_dataset + plain Keras model, float32"
FUSED_FLOAT32_FIT = "make_dataset + fused batch norm, float32"
PROJECT_FIT = "project: make_dataset + fit"


def plain_network(labels: np.ndarray, size: int) -> keras.Model:
    """The course's model: Keras' DenseNet121 as it is, in float32."""
    return cxr_model.build_densenet121(labels.shape[1], size, fuse_batch_norm=False)


def fused_float32_network(labels: np.ndarray, size: int) -> keras.Model:
    return cxr_model.build_densenet121(labels.shape[1], size, precision="float32")


def project_network(labels: np.ndarray, size: int) -> keras.Model:
    """The model train.py builds on this machine: fused batch norms, ``TRAINING_PRECISION``."""
    return cxr_model.build_densenet121(labels.shape[1], size, precision=TRAINING_PRECISION)


def benchmark_training(networks: dict[str, keras.Model], pixels: np.ndarray, labels: np.ndarray, paths: list[Path],
                       batch_size: int, steps: int, repeats: int, pipeline_batches: int,
                       log: Callable[[str], None] = print) -> list[dict]:
    """images/s of ``fit``, one effect added at a time, then of each feed alone.

    ``networks``: compiled models built by ``plain_network``, ``fused_float32_network`` and
    ``project_network`` (keys "plain", "fused float32", "project"). The baseline is the plain model
    on the PIL feed; then the project's input pipeline into the plain model; into the fused model;
    and into train.py's model (the fused one in ``TRAINING_PRECISION``; left out when that is float32).
    """
    size = pixels.shape[1]
    dataset = project_training_data(pixels, labels, batch_size)
    project = f"{PROJECT_FIT} ({TRAINING_PRECISION}, fused batch norm, as train.py here)"
    runs = {BASELINE_FIT: (networks["plain"], lambda: pil_batches(paths, labels, size, batch_size)),
            PLAIN_DATASET_FIT: (networks["plain"], lambda: dataset)}
    if TRAINING_PRECISION != "float32":
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


def memory_worker(workload: str, path: str, size: int, count: int, steps: int) -> dict:
    """Run one workload in this (fresh) process and report its peak resident memory."""
    start = time.perf_counter()
    if workload == "inference":
        network, statistics = shipped_model(size, fuse_batch_norm=path == "project")
        pixels, _, _ = split_images("test", size, count)
        run = project_predict if path == "project" else plain_predict
        run(network, pixels, statistics)
    elif workload == "training":
        pixels, labels, paths = split_images("train", size, count)
        network = compiled_for_training(project_network(labels, size) if path == "project"
                                        else plain_network(labels, size), labels)
        feed = (project_training_data(pixels, labels, TRAIN_BATCH) if path == "project"
                else pil_batches(paths, labels, size, TRAIN_BATCH))
        network.fit(feed, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    else:
        raise ValueError(f"unknown workload {workload!r}")
    return {"peak_rss_mib": peak_rss_mib(), "seconds": time.perf_counter() - start}


def measure_memory(workload: str, path: str, size: int, count: int, steps: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", workload, "--path", path,
               "--size", str(size), "--count", str(count), "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker {workload}/{path} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark_memory(quick: bool, log: Callable[[str], None] = print) -> list[dict]:
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
            measured[path] = measure_memory(workload, path, workload_size, count, steps)
            log(f"  memory {workload}/{path}: {measured[path]['peak_rss_mib']:.0f} MiB")
        baseline, candidate = (measured[path]["peak_rss_mib"] for path in paths)
        rows.append({"workload": label, "baseline": "plain predict" if workload == "inference" else "PIL generator fit",
                     "baseline MiB": baseline, "project MiB": candidate,
                     "ratio": candidate / baseline})
    return rows


# --- thread settings (must be set before TensorFlow starts: one subprocess per setting) -------------


THREAD_SETTINGS = {"default (TensorFlow's choice)": (0, 0), "inter-op 1, intra-op all cores": (1, 0),
                   "inter-op 1, intra-op 1": (1, 1)}


def threads_worker(inter: int, intra: int, size: int, count: int, calls: int = 3) -> dict:
    """Median seconds of plain predict under the given thread pools (0: TensorFlow's default)."""
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    network, statistics = shipped_model(size, fuse_batch_norm=False)
    pixels, _, _ = split_images("test", size, count)
    plain_predict(network, pixels, statistics)
    seconds = interleave({"plain": lambda: plain_predict(network, pixels, statistics)}, calls)["plain"]
    return {"seconds": float(np.median(seconds)), "images": len(pixels)}


def benchmark_threads(size: int, count: int, repeats: int, log: Callable[[str], None] = print) -> list[dict]:
    """Plain predict under each thread setting, the settings' subprocesses alternating over the repeats."""
    def run(inter, intra):
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "threads", "--inter", str(inter),
                   "--intra", str(intra), "--size", str(size), "--count", str(count)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"threads worker failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    measured = {name: [] for name in THREAD_SETTINGS}
    names = list(THREAD_SETTINGS)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            result = run(*THREAD_SETTINGS[name])
            measured[name].append(result["seconds"])
            log(f"  threads {name}: {result['images'] / result['seconds']:.1f} images/s")
    baseline = names[0]
    return [{"size": size, "path": f"plain predict, threads: {name}", "ratio": median_ratio(measured[baseline], times),
             "images/s": count / float(np.median(times)), "repeats": repeats} for name, times in measured.items()]


# --- notebook ------------------------------------------------------------------------------------


def time_notebook() -> dict:
    command = [sys.executable, "-m", "pytest", "chest_x_ray_diagnosis.ipynb", "-q"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    tail = [line for line in done.stdout.strip().splitlines() if line.strip()][-1:] or [""]
    return {"seconds": seconds, "passed": done.returncode == 0, "summary": tail[0], "returncode": done.returncode}


# --- tables --------------------------------------------------------------------------------------


def format_value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and abs(value) < 1e-2:
            return f"{value:.1e}"
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    alignments = ["---" if column in ("path", "workload", "baseline") else "---:" for column in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(alignments) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(column, "")) for column in columns) + " |")
    return "\n".join(lines)


def text_table(rows: list[dict], columns: list[str]) -> str:
    cells = [columns] + [[format_value(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    left = [column in ("path", "workload", "baseline") for column in columns]
    return "\n".join("  ".join(cell.ljust(width) if left[i] else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(line, widths))) for line in cells)


INFERENCE_COLUMNS = ["size", "images", "path", "ratio", "images/s", "GFLOP/s", "% of peak", "max abs diff",
                     "first call s"]
TRAINING_COLUMNS = ["workload", "path", "ratio", "images/s", "steps", "repeats"]
THREAD_COLUMNS = ["size", "path", "ratio", "images/s", "repeats"]
MEMORY_COLUMNS = ["workload", "baseline", "baseline MiB", "project MiB", "ratio"]


def report(results: dict) -> str:
    """RESULTS.md: the machine, the method and every table."""
    info = results["machine"]
    load = ", ".join(f"{value:.2f}" for value in info["load_average"])
    convolutions = "; ".join(f"{name}: {rate:.0f} GFLOP/s ({100 * rate / results['peak_gflops']:.0f}% of the peak)"
                             for name, rate in results.get("convolution_gflops", {}).items())
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (bench/requirements.txt into .venv, then `.venv/bin/python bench/run.py`; "
        "do not edit by hand, run it again instead).",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cores']} cores ({info['usable_cores']} usable), {info['cpu']}, "
        f"AVX512_BF16 {'yes' if info['avx512_bf16'] else 'no'}, AMX {'yes' if info['amx'] else 'no'}",
        f"- software: Python {info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}, "
        f"ONNX Runtime {info['onnxruntime']}",
        f"- load average at the start: {load}"
        + ("; **another training run was using the CPU during this benchmark (machine loaded)**"
           if info["other_training"] else ""),
        f"- CPU time used by other processes during the run: {results.get('others_cpu_percent', float('nan')):.1f}% "
        f"of the machine; stolen by the hypervisor: {results.get('steal_percent', float('nan')):.1f}%",
        f"- measured float32 matmul peak ({results['peak_n']}x{results['peak_n']} tf.matmul, best of 5 at the start "
        "and 5 at the end): "
        f"{results['peak_gflops']:.0f} GFLOP/s; bfloat16: {results['peak_bf16_gflops']:.0f} GFLOP/s",
        *([f"- DenseNet121's own convolutions alone (float32 tf.nn.conv2d, batch {results['convolution_batch']}, "
           f"best of 5): {convolutions}"] if convolutions else []),
        f"- mode: {'quick (smoke test, small inputs)' if results['quick'] else 'full'}; "
        f"total time {results['seconds'] / 60:.1f} min",
        "",
        "**Method.** A *ratio* is the median, over the repeats, of baseline seconds / candidate seconds "
        "for the same work, baseline and candidates alternating within each repeat (the order rotates "
        "from one repeat to the next) so that they share the machine's noise; > 1 means faster than the "
        "baseline. *images/s* is the median rate. GFLOP/s counts DenseNet121 as 2.9 GMAC = 5.8 GFLOP per "
        "224-px image, scaled by (size/224)^2 for other sizes (an approximation: padding and pooling do "
        "not scale exactly). *max abs diff* is the largest absolute difference of any probability from "
        "plain `model.predict` on the same images. *first call s* is the first call's time (tracing, "
        "compilation; conversions and copies are listed apart) before the timed repeats; the first row's first "
        "call also pays for creating the oneDNN kernels of these shapes, which later rows reuse.",
        "",
        "**Paths.** *plain model.predict*: `pipeline.standardise` in numpy, then `model.predict(x, batch_size=32)`. "
        "*project: predict_probabilities*: `cxr.evaluation.predict_probabilities` as shipped, one `tf.function` per "
        "model taking uint8 batches (standardisation in the graph) and running the model with its batch norms "
        "as TensorFlow's fused op. *before: make_dataset + predict*: the project's path before this benchmark "
        "(the validation `tf.data` pipeline into `model.predict`). The other rows are the candidates tried.",
        "",
        f"## Inference (batch {INFERENCE_BATCH} unless stated; baseline: plain `model.predict(numpy_batch)`)",
        "",
        markdown_table([row for row in results["inference"] if "note" not in row], INFERENCE_COLUMNS),
    ]
    notes = [row for row in results["inference"] if "note" in row]
    if notes:
        parts += [""] + [f"- {row['size']} px, {row['path']}: {row['note']}" for row in notes]
    setups = [row for row in results["inference"] if row.get("setup s", 0) and not math.isnan(row["setup s"])]
    if setups:
        parts += ["", "One-time set-up before the first call (not in the ratios): "
                  + "; ".join(f"{row['path']} {row['setup s']:.1f} s" for row in setups) + "."]
    if results.get("threads"):
        parts += ["", "## Thread settings (plain predict, one subprocess per setting and repeat; "
                  "baseline: TensorFlow's default)", "",
                  "Thread pools are fixed when TensorFlow starts, so they cannot be chosen inside "
                  "`predict_probabilities`; each setting runs in its own subprocess (median of 3 calls), the "
                  "settings alternating over the repeats.", "",
                  markdown_table(results["threads"], THREAD_COLUMNS)]
    training = results.get("training") or []
    parts += ["", f"## Training ({training[0]['workload'].split(', ', 1)[1] if training else 'not measured'}; "
              "DenseNet121 compiled like train.py)", ""]
    if training:
        parts += [
            "Baseline: plain `fit` of Keras' DenseNet121 in float32 on a Python generator that opens each PNG of a "
            "batch with PIL, resizes, standardises and yields numpy (the course's way). Project: the cached uint8 "
            "arrays through `cxr.pipeline.make_dataset` (train.py's augmentation) into `fit` of the model train.py "
            "builds on this machine: `build_densenet121` with its batch norms as one fused op, and "
            "`--precision auto` (mixed bfloat16 where the CPU computes bfloat16 natively; float32 weights either "
            "way). The rows between add one change at a time: the project's input into the plain model, then "
            "into the fused float32 model. Each repeat is a fixed number of steps after a 2-step warm-up. The "
            "*input only* rows iterate each feed without the model; their ratio is the feed's rate over the "
            "rate its `fit` consumed.",
            "",
            markdown_table(training, TRAINING_COLUMNS),
        ]
    parts += [
        "",
        "## Peak resident memory (VmHWM of one fresh subprocess per workload; ratio: project / baseline)",
        "",
        markdown_table(results["memory"], MEMORY_COLUMNS) if results.get("memory") else "(not measured)",
        "",
        "## Notebook",
        "",
    ]
    notebook = results.get("notebook")
    if notebook:
        parts.append(
            f"`time .venv/bin/python -m pytest chest_x_ray_diagnosis.ipynb -q` (nbval): "
            f"{notebook['seconds']:.0f} s = {notebook['seconds'] / 60:.1f} min "
            f"({notebook['seconds'] / GOALS['notebook_seconds']:.2f} of the "
            f"{GOALS['notebook_seconds'] / 60:.0f}-min goal); "
            f"{'passed' if notebook['passed'] else 'FAILED'}: `{notebook['summary']}`")
    else:
        parts.append("(not run in this mode)")
    parts += ["", "## Goals", ""] + [f"- {line}" for line in goal_lines(results)]
    raw = [row for row in results["inference"] + (results.get("training") or []) if row.get("seconds")]
    if raw:
        parts += ["", "## Seconds per repeat (the raw timings behind the ratios, repeat by repeat)", ""]
        parts += [f"- {row.get('size', '')}{' px ' if 'size' in row else ''}{row.get('workload', '')}"
                  f"{', ' if 'workload' in row else ''}{row['path']}: "
                  + ", ".join(f"{value:.2f}" for value in row["seconds"]) for row in raw]
    notes = (inference_findings(results["inference"]) + training_findings(results.get("training") or [])
             + results.get("notes", []))
    if notes:
        parts += ["", "## Notes", ""] + [f"- {line}" for line in notes]
    return "\n".join(parts) + "\n"


def waits(seconds: list[float]) -> int:
    """How many calls took over ``WAIT_FACTOR`` times the fastest one."""
    return sum(value > WAIT_FACTOR * min(seconds) for value in seconds)


def inference_findings(rows: list[dict]) -> list[str]:
    """What the candidates at the exploration size showed: the fastest acceptable one, the rejected ones."""
    lines = []
    for baseline in (row for row in rows if row.get("path", "").startswith("plain") and row.get("seconds")):
        waited = waits(baseline["seconds"])
        if waited:
            lines.append(f"{baseline['size']} px: plain predict took over {WAIT_FACTOR}x its fastest time in "
                         f"{waited} of {len(baseline['seconds'])} repeats: Keras feeds its numpy input through an "
                         "autotuned tf.data pipeline, and the call waits at the end for the autotuner's sleeping "
                         "thread (see the training note); predict_probabilities uses no tf.data pipeline")
    explored = [row for row in rows if "note" not in row and not row["path"].startswith("plain")]
    sizes = sorted({row["size"] for row in explored if not row["path"].startswith(("project", "before"))})
    for size in sizes:
        candidates = [row for row in explored if row["size"] == size]
        accepted = [row for row in candidates if row["max abs diff"] <= TOLERANCE]
        if accepted:
            best = max(accepted, key=lambda row: row["ratio"])
            project = next((row for row in candidates if row["path"].startswith("project")), None)
            lines.append(f"{size} px: fastest within {TOLERANCE} of plain predict: {best['path']} "
                         f"({best['ratio']:.2f}x)"
                         + (f"; the project path: {project['ratio']:.2f}x" if project and best is not project else ""))
            if project and "frozen" in best["path"] and best is not project:
                lines.append(f"{size} px: a frozen graph holds the weights as constants, so predict_probabilities "
                             "would have to freeze again (seconds) whenever the weights change, or hash every "
                             f"weight on every call, for {100 * (best['ratio'] / project['ratio'] - 1):.0f}% over "
                             "the project path here: not adopted")
        lines += [f"{size} px: {row['path']} rejected: max abs diff {row['max abs diff']:.1e} > {TOLERANCE} "
                  f"(it ran at {row['ratio']:.2f}x)" for row in candidates if row["max abs diff"] > TOLERANCE]
        onnx = next((row for row in candidates if row["path"].startswith("ONNX")), None)
        if onnx:
            lines.append(f"{size} px: ONNX Runtime ran at {onnx['ratio']:.2f}x (the model converted with "
                         "`tf2onnx.convert.from_keras`; bench/requirements.txt installs it, the project does not "
                         "need it)")
    return lines


def training_findings(rows: list[dict]) -> list[str]:
    """Why the training ratio is what it is: how much faster than the model each feed alone runs."""
    by_path = {row["path"]: row for row in rows}
    fit = next((row for row in rows if row["path"].startswith(PROJECT_FIT)), None)
    plain_fit, fused_fit = by_path.get(PLAIN_DATASET_FIT), by_path.get(FUSED_FLOAT32_FIT)
    alone = by_path.get("project: make_dataset alone")
    pil = by_path.get("PIL generator alone")
    if not (fit and alone and pil):
        return []
    line = (f"training: the model consumes {fit['images/s']:.1f} images/s; the project's input pipeline alone "
            f"delivers {alone['images/s']:.0f} images/s and the PIL generator alone {pil['images/s']:.0f}, "
            f"{pil['ratio']:.0f}x what its fit consumed")
    lines = [line + "."]
    baseline = by_path.get(BASELINE_FIT)
    if plain_fit and baseline:
        waited = waits(baseline["seconds"])
        lines.append(
            f"training: the project's input pipeline into the plain Keras model runs at {plain_fit['ratio']:.2f}x "
            "the PIL baseline: each feed alone outruns its fit many times over, so the input is not the limit "
            "(the baseline's fit, whose generator Keras wraps in an autotuned tf.data pipeline, took over "
            f"{WAIT_FACTOR}x its fastest time in {waited} of {len(baseline['seconds'])} repeats, waiting at the end "
            "for the autotuner's sleeping thread; make_dataset runs without autotuning). The step is bound by "
            "DenseNet121's forward and backward pass, and the gain comes from the model: batch norm as one fused op"
            + (f" ({fused_fit['ratio']:.2f}x in float32)" if fused_fit else "")
            + (f", then bfloat16 arithmetic on float32 weights, which this CPU computes natively "
               f"({fit['ratio']:.2f}x in all)" if TRAINING_PRECISION != "float32" else "") + ".")
    return lines


def baseline_row(rows: list[dict], size: int) -> dict | None:
    """The plain-predict baseline's inference row at ``size``, with its per-repeat seconds (None if absent)."""
    return next((row for row in rows if row.get("size") == size and row.get("path", "").startswith("plain")
                 and row.get("seconds")), None)


def float32_ceiling(results: dict, size: int, gflops: float | None = None) -> float:
    """``gflops`` (default: the float32 matmul peak) over the plain-predict baseline's GFLOP/s in its fastest
    repeat at ``size``: the ratio a path doing all of DenseNet121's arithmetic at that rate would reach (NaN if
    unknown)."""
    baseline = baseline_row(results["inference"], size)
    if baseline is None or not math.isfinite(baseline["GFLOP/s"]):
        return float("nan")
    fastest = baseline["images"] * densenet_gflop(size) / min(baseline["seconds"])
    return (gflops or results["peak_gflops"]) / fastest


def goal_lines(results: dict) -> list[str]:
    lines = []
    project = [row for row in results["inference"] if row.get("path", "").startswith("project")]
    for row in project:
        met = row["ratio"] >= GOALS["inference"]
        line = (f"inference {row['size']} px: project path {row['ratio']:.2f}x plain predict "
                f"(goal >= {GOALS['inference']}x: {'met' if met else 'NOT met'}); max abs diff "
                f"{row['max abs diff']:.1e} "
                f"(<= {TOLERANCE}: {'yes' if row['max abs diff'] <= TOLERANCE else 'NO'})")
        baseline = baseline_row(results["inference"], row["size"])
        if baseline and row.get("seconds"):
            line += (f"; fastest repeat against fastest repeat "
                     f"{min(baseline['seconds']) / min(row['seconds']):.2f}x")
        ceiling = float32_ceiling(results, row["size"])
        if math.isfinite(ceiling):
            line += (f"; float32 ceiling {ceiling:.2f}x (the measured float32 matmul peak over the baseline's "
                     "GFLOP/s in its fastest repeat: what a float32 path running at 100% of the peak would reach)")
        convolutions = results.get("convolution_gflops")
        if convolutions and math.isfinite(ceiling):
            line += (f", {float32_ceiling(results, row['size'], max(convolutions.values())):.2f}x at the rate of "
                     "DenseNet121's fastest convolution alone")
        lines.append(line)
    for row in results["training"]:
        if row["path"].startswith(PROJECT_FIT):
            met = row["ratio"] >= GOALS["training"]
            lines.append(f"training: project fit {row['ratio']:.2f}x the PIL-generator fit "
                         f"(goal >= {GOALS['training']}x: {'met' if met else 'NOT met'})")
        elif row["path"] == "project: make_dataset alone":
            met = row["ratio"] >= GOALS["pipeline"]
            lines.append(f"input pipeline alone: {row['images/s']:.0f} images/s, {row['ratio']:.0f}x what the "
                         f"model consumes (goal >= {GOALS['pipeline']:.0f}x: {'met' if met else 'NOT met'})")
    notebook = results.get("notebook")
    if notebook:
        met = notebook["seconds"] <= GOALS["notebook_seconds"]
        lines.append(f"notebook: {notebook['seconds']:.0f} s (goal <= {GOALS['notebook_seconds']:.0f} s: "
                     f"{'met' if met else 'NOT met'})")
    return lines


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: small inputs, no notebook")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; quick: 3)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"Markdown report (default {RESULTS_FILE.relative_to(REPO_ROOT)}; quick: none)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} "
                             "(default: all; quick: no threads, no notebook)")
    parser.add_argument("--sizes", default="128,224,320", help="inference image sizes (quick: 64)")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: write the report again from the measurements a run saved "
                             f"(default output {RESULTS_FILE.relative_to(REPO_ROOT)})")
    parser.add_argument("--worker", choices=("inference", "training", "threads"), help=argparse.SUPPRESS)
    parser.add_argument("--inter", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--intra", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="project", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "threads":
        result = threads_worker(args.inter, args.intra, args.size, args.count)
        print(json.dumps(result))
        return result
    if args.worker:
        result = memory_worker(args.worker, args.path, args.size, args.count or None, args.steps)
        print(json.dumps(result))
        return result

    if args.render:
        results = json.loads(args.render.read_text())
        output = args.output or RESULTS_FILE
        output.write_text(report(results))
        print("\n".join(goal_lines(results)) + f"\n\nWrote {output} from {args.render}")
        return results

    started = time.perf_counter()
    quick = args.quick
    sections = set(args.sections.split(","))
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    repeats = args.repeats or (3 if quick else 5)
    output = args.output if args.output else (None if quick else RESULTS_FILE)

    def log(message: str) -> None:
        print(message, flush=True)

    results = {"quick": quick, "machine": machine_info(), "notes": []}
    if results["machine"]["other_training"]:
        log("Warning: another training run is using the CPU; the figures will be noisy.")
    peak_n = 1024 if quick else 4096
    results["peak_n"] = peak_n
    cpu_start = cpu_snapshot()
    results["peak_gflops"] = matmul_peak_gflops(peak_n)
    results["peak_bf16_gflops"] = matmul_peak_gflops(peak_n, dtype=tf.bfloat16)
    log(f"matmul peak: float32 {results['peak_gflops']:.0f} GFLOP/s, bfloat16 {results['peak_bf16_gflops']:.0f}")
    results["convolution_batch"] = 4 if quick else 32
    results["convolution_gflops"] = convolution_gflops(results["convolution_batch"])
    log("convolutions alone: " + ", ".join(f"{rate:.0f}" for rate in results["convolution_gflops"].values())
        + " GFLOP/s")

    # Inference: every candidate at the shipped size, the project path against the baseline at the others.
    inference = []
    # At the shipped size the whole test split (the notebook's call); fewer images at the larger sizes.
    counts = {128: None, 224: 96, 320: 64}
    sizes = [int(size) for size in args.sizes.split(",")] if "inference" in sections else []
    plan = [(64, 32, True)] if quick else [(size, counts.get(size, 64), index == 0) for index, size in enumerate(sizes)]
    for size, count, explore in plan:
        network, statistics = shipped_model(size, fuse_batch_norm=False)
        project, _ = shipped_model(size)
        pixels, _, _ = split_images("test", size, count)
        log(f"inference at {size} px on {len(pixels)} test images")
        inference += benchmark_inference(network, pixels, statistics, repeats,
                                         explore, results["peak_gflops"], log, project)
        del network, project
        keras.backend.clear_session()
    results["inference"] = inference
    results["threads"] = benchmark_threads(128, 64, 3, log) if "threads" in sections and not quick else []

    # Training at 224 px, batch 16.
    results["training"] = []
    if "training" in sections:
        train_size = 64 if quick else TRAIN_SIZE
        pixels, labels, paths = split_images("train", train_size, 64 if quick else 320)
        log(f"training at {train_size} px on {len(pixels)} training images")
        networks = {name: compiled_for_training(build(labels, train_size), labels) for name, build in
                    (("plain", plain_network), ("fused float32", fused_float32_network), ("project", project_network))}
        results["training"] = benchmark_training(networks, pixels, labels, paths, TRAIN_BATCH, 2 if quick else 8,
                                                 repeats, 4 if quick else 30, log)
        del networks
        keras.backend.clear_session()

    results["memory"] = benchmark_memory(quick, log) if "memory" in sections else []
    results["notebook"] = time_notebook() if "notebook" in sections and not quick else None
    # The peak again at the end (the best of both), so that a noisy moment at the start cannot lower it.
    results["peak_gflops"] = max(results["peak_gflops"], matmul_peak_gflops(peak_n))
    results["peak_bf16_gflops"] = max(results["peak_bf16_gflops"], matmul_peak_gflops(peak_n, dtype=tf.bfloat16))
    for row in results["inference"]:
        if "GFLOP/s" in row:
            row["% of peak"] = 100 * row["GFLOP/s"] / results["peak_gflops"]
    results["others_cpu_percent"], results["steal_percent"] = cpu_share_of_others(cpu_start, cpu_snapshot())
    results["seconds"] = time.perf_counter() - started
    results["machine"]["other_training"] = results["machine"]["other_training"] or other_training_running()
    results["notes"] += NOTES

    print()
    print(text_table([row for row in results["inference"] if "note" not in row], INFERENCE_COLUMNS))
    if results["threads"]:
        print()
        print(text_table(results["threads"], THREAD_COLUMNS))
    if results["training"]:
        print()
        print(text_table(results["training"], TRAINING_COLUMNS))
    if results["memory"]:
        print()
        print(text_table(results["memory"], MEMORY_COLUMNS))
    print()
    print("\n".join(goal_lines(results)))
    if output:
        output.write_text(report(results))
        # The measurements themselves, so that the report can be written again (--render) without a rerun.
        output.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float) + "\n")
        print(f"\nWrote {output} and {output.with_suffix('.json').name}")
    return results


if __name__ == "__main__":
    main()
