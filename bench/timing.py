"""Measuring helpers of the benchmark: the machine it runs on, its peak rate, and how to time and compare.

Nothing here knows the project: these helpers time callables, read /proc and summarise seconds.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

# DenseNet121 costs about 2.9 GMAC (5.8 GFLOP) per 224-px image; other sizes are scaled by (size/224)^2.
GMAC_224 = 2.9
# A baseline call this much slower than its fastest counts as one that waited for tf.data's autotuner
# (the waits add a second or more; the machine's own noise is a few per cent).
WAIT_FACTOR = 1.25
# DenseNet121's own convolutions at 224 px (NHWC input, HWIO kernel): the rate its arithmetic can run at.
CONVOLUTIONS = {
    "3x3, 128 to 32 channels at 56x56 (dense block 1)": ((56, 56, 128), (3, 3, 128, 32)),
    "1x1, 640 to 128 channels at 14x14 (dense block 3)": ((14, 14, 640), (1, 1, 640, 128)),
}


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
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
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


def matmul_peak_gflops(n: int = 4096, repeats: int = 5, dtype: str = "float32") -> float:
    """Best GFLOP/s of an n x n by n x n tf.matmul in ``dtype``: the machine's practical dense peak."""
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


def waits(seconds: list[float]) -> int:
    """How many calls took over ``WAIT_FACTOR`` times the fastest one."""
    return sum(value > WAIT_FACTOR * min(seconds) for value in seconds)
