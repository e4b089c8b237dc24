"""The benchmark's pieces on tiny inputs, so that `python -m bench.run` cannot rot unnoticed."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
from PIL import Image

from bench import explore, report, run, timing, workloads
from cxr.inference import PER_IMAGE

SIZE = 16


def tiny_model(classes: int = 3, precision: str = "float32") -> keras.Model:
    """A small functional CNN with batch normalisation, like DenseNet's building blocks."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, dtype=precision, name="conv")(inputs)
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, dtype=precision)(x)
    x = keras.layers.ReLU(dtype=precision)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=precision)(x)
    outputs = keras.layers.Dense(classes, activation="sigmoid", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    # Non-trivial batch-norm statistics, so that a wrong fused or frozen computation shows.
    bn = model.layers[2]
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))
    return model


def pixels(count: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE), dtype=np.uint8)


def positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_interleave_rotates_the_order_and_ratio_is_baseline_over_candidate():
    calls = []
    seconds = timing.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert all(len(times) == 3 for times in seconds.values())
    assert timing.median_ratio([2.0, 4.0, 3.0], [1.0, 1.0, 3.0]) == pytest.approx(2.0)


@pytest.mark.parametrize("statistics", [(120.0, 50.0), PER_IMAGE], ids=["training-statistics", "per-image"])
def test_inference_rows_have_finite_ratios_and_matching_predictions(statistics):
    rows = workloads.benchmark_inference(tiny_model(), pixels(), statistics, repeats=3, peak_gflops=100.0,
                                         log=lambda message: None)
    paths = [row["path"] for row in rows]
    assert paths[0].startswith("plain model.predict") and any(path.startswith("project") for path in paths)
    for row in rows:
        assert positive_finite(row["ratio"]) and positive_finite(row["images/s"])
        assert row["max abs diff"] <= workloads.TOLERANCE
    assert rows[0]["ratio"] == pytest.approx(1.0)


def test_inference_variants_match_plain_predict():
    model, images, statistics = tiny_model(), pixels(7), (120.0, 50.0)
    expected = workloads.plain_predict(model, images, statistics, batch_size=3)
    variants = {
        "tf.function": explore.function_predict(explore.function_forward(model, False, statistics), images, 3, False),
        "padded": explore.function_predict(explore.function_forward(model, False, statistics), images, 4, True),
        "fused batch norm": explore.function_predict(
            explore.function_forward(explore.fused_copy(model), False, statistics), images, 3, False),
        "frozen": explore.function_predict(explore.frozen_forward(model, statistics), images, 3, False),
        "before": workloads.dataset_predict(model, images, statistics),
    }
    for name, probabilities in variants.items():
        assert probabilities.shape == expected.shape, name
        assert np.max(np.abs(probabilities - expected)) <= workloads.TOLERANCE, name


@pytest.mark.slow
def test_training_rows_and_report(tmp_path):
    images = pixels(8, seed=1)
    paths = []
    for index, image in enumerate(images):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(paths[-1])
    labels = (np.random.default_rng(1).random((8, 3)) < 0.5).astype(np.float32)
    networks = {"plain": workloads.compiled_for_training(tiny_model(), labels),
                "fused float32": workloads.compiled_for_training(tiny_model(), labels),
                "project": workloads.compiled_for_training(tiny_model(precision="mixed_bfloat16"), labels)}
    assert networks["project"].get_layer("conv").compute_dtype == "bfloat16"
    rows = workloads.benchmark_training(networks, images, labels, paths, batch_size=4, steps=1, repeats=3,
                                        pipeline_batches=2, precision="mixed_bfloat16", log=lambda message: None)
    assert [row["path"] for row in rows] == [
        "plain fit on a PIL generator (baseline)", "make_dataset + plain Keras model, float32",
        "make_dataset + fused batch norm, float32",
        "project: make_dataset + fit (mixed_bfloat16, fused batch norm, as train.py here)",
        "PIL generator alone", "project: make_dataset alone"]
    for row in rows:
        assert positive_finite(row["ratio"]) and positive_finite(row["images/s"])
    float32_rows = workloads.benchmark_training(networks, images, labels, paths, batch_size=4, steps=1, repeats=1,
                                                pipeline_batches=1, precision="float32", log=lambda message: None)
    assert [row["path"] for row in float32_rows][:3] == [
        "plain fit on a PIL generator (baseline)", "make_dataset + plain Keras model, float32",
        "project: make_dataset + fit (float32, fused batch norm, as train.py here)"]

    inference = workloads.benchmark_inference(tiny_model(), pixels(), (120.0, 50.0), repeats=3, peak_gflops=100.0,
                                              log=lambda message: None)
    results = {"quick": True, "machine": timing.machine_info(), "peak_n": 64, "peak_gflops": 100.0,
               "peak_bf16_gflops": 200.0, "inference": inference, "threads": [], "training": rows,
               "memory": [{"workload": "inference", "baseline MiB": 100.0, "project MiB": 90.0, "ratio": 0.9}],
               "notebook": None, "seconds": 1.0, "notes": []}
    text = report.report(results)
    header = next(line for line in text.splitlines() if line.startswith("| size"))
    assert "| ratio |" in header and "| max abs diff |" in header
    assert all(line.count("|") == header.count("|") for line in text.splitlines() if line.startswith("| 16 "))
    assert "training: project fit" in text and "input pipeline alone" in text
    findings = report.training_findings(rows)
    assert findings[0].startswith("training: the model consumes") and "bfloat16" in findings[1]
    assert results["machine"]["cores"] >= 1 and results["machine"]["tensorflow"] in text
    # A run's saved measurements render the same report again (python -m bench.run --render).
    saved = tmp_path / "RESULTS.json"
    saved.write_text(json.dumps(results, default=float))
    rendered = tmp_path / "RESULTS.md"
    run.main(["--render", str(saved), "--output", str(rendered)])
    assert rendered.read_text() == text


def test_findings_name_the_fastest_accepted_candidate_and_the_rejected_ones():
    def row(path, ratio, diff):
        return {"size": 128, "path": path, "ratio": ratio, "max abs diff": diff}

    lines = report.inference_findings([row("plain model.predict (baseline)", 1.0, 0.0), row("project: x", 1.6, 1e-7),
                                    row("fast but wrong", 3.0, 5e-3), row("tf.function, batch 32", 1.7, 1e-7)])
    assert lines[0].startswith("128 px: fastest within 0.001 of plain predict: tf.function, batch 32 (1.70x)")
    assert "the project path: 1.60x" in lines[0]
    assert any(line.startswith("128 px: fast but wrong rejected") for line in lines)


def test_findings_count_the_baseline_repeats_that_waited_on_the_autotuner():
    baseline = {"size": 224, "path": "plain model.predict (baseline)", "ratio": 1.0, "max abs diff": 0.0,
                "seconds": [3.1, 5.2, 3.0, 3.2]}
    project = {"size": 224, "path": "project: x", "ratio": 1.3, "max abs diff": 1e-7, "seconds": [2.5] * 4}
    lines = report.inference_findings([baseline, project])
    assert lines[0].startswith("224 px: plain predict took over 1.25x its fastest time in 1 of 4 repeats")
    assert report.inference_findings([dict(baseline, seconds=[3.1, 3.2, 3.0]), project]) == []


def test_the_exploration_runs_only_when_asked():
    assert "threads" not in run.parse_arguments([]).sections
    assert "threads" in run.parse_arguments(["--explore"]).sections
    assert workloads.worker_command("threads", inter=1, size=64)[1:] == [
        "-m", "bench.run", "--worker", "threads", "--inter", "1", "--size", "64"]
