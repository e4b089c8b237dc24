"""Exploration candidates for inference, measured only with ``python -m bench.run --explore``.

tf.function batch sizes, XLA, fused batch norm, frozen graphs, bfloat16, ONNX Runtime and thread pools:
the paths tried before ``cxr.inference.predict`` took its shape. bench/RESULTS.md records what they
showed; the standing benchmark measures only the baseline and the project's paths (``bench.workloads``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from bench.timing import interleave, median_ratio
from bench.workloads import INFERENCE_BATCH, plain_predict, run_worker, shipped_model, split_images
from cxr import inference
from cxr.fast_layers import FusedBatchNormalization


def function_forward(network: keras.Model, jit_compile: bool, statistics) -> Callable:
    """uint8 (B, H, W) batch -> probabilities, as one tf.function (XLA if ``jit_compile``)."""

    @tf.function(jit_compile=jit_compile,
                 input_signature=None if jit_compile else [tf.TensorSpec((None, *network.input_shape[1:3]), tf.uint8)])
    def forward(batch):
        standardised = inference.standardise(batch, statistics)
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
    """A copy of the plain model with its batch norms fused, as ``build_densenet121(..., fuse_batch_norm=True)``
    builds them: the same layers with every BatchNormalization a ``FusedBatchNormalization``, same weights."""

    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return FusedBatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(network, clone_function=clone)
    copy.set_weights(network.get_weights())
    return copy


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
    standardised = inference.standardise(pixels, statistics)
    return np.concatenate([session.run(None, {name: standardised[start:start + batch_size]})[0]
                           for start in range(0, len(pixels), batch_size)]).astype(np.float32)


def exploration_candidates(network: keras.Model, pixels: np.ndarray, statistics,
                           log: Callable[[str], None] = print) -> tuple[dict[str, Callable], dict[str, float | str]]:
    """Callables returning probabilities for ``pixels``, one per explored path, and the seconds each took to
    set up (conversion, copies; first call excluded), or why it was left out."""
    candidates: dict[str, Callable] = {}
    setup: dict[str, float | str] = {}
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


# --- thread settings (fixed when TensorFlow starts: one subprocess per setting) -------------------


THREAD_SETTINGS = {"default (TensorFlow's choice)": (0, 0), "inter-op 1, intra-op all cores": (1, 0),
                   "inter-op 1, intra-op 1": (1, 1)}


def threads_worker(inter: int, intra: int, size: int, count: int | None, calls: int = 3) -> dict:
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
    measured = {name: [] for name in THREAD_SETTINGS}
    names = list(THREAD_SETTINGS)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            inter, intra = THREAD_SETTINGS[name]
            result = run_worker("threads", inter=inter, intra=intra, size=size, count=count)
            measured[name].append(result["seconds"])
            log(f"  threads {name}: {result['images'] / result['seconds']:.1f} images/s")
    baseline = names[0]
    return [{"size": size, "path": f"plain predict, threads: {name}", "ratio": median_ratio(measured[baseline], times),
             "images/s": count / float(np.median(times)), "repeats": repeats} for name, times in measured.items()]
