"""bench/RESULTS.md from a run's measurements: the machine, the method, the tables, the goals and the findings.

``report(results)`` takes the dict ``bench.run`` gathers (and saves as RESULTS.json), so that the report
can be written again from saved measurements (``--render``) without measuring anything.
"""

from __future__ import annotations

import math

from bench.timing import WAIT_FACTOR, densenet_gflop, waits
from bench.workloads import (
    BASELINE_FIT,
    FUSED_FLOAT32_FIT,
    INFERENCE_BATCH,
    PLAIN_DATASET_FIT,
    PROJECT_FIT,
    TOLERANCE,
)

GOALS = {"inference": 1.5, "training": 1.5, "pipeline": 10.0, "notebook_seconds": 180.0}


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


HEADER = ("Written by `make bench` (bench/requirements.txt into .venv, then `.venv/bin/python -m bench.run`; "
          "do not edit by hand, run it again instead).")
METHOD = (
    "**Method.** A *ratio* is the median, over the repeats, of baseline seconds / candidate seconds "
    "for the same work, baseline and candidates alternating within each repeat (the order rotates "
    "from one repeat to the next) so that they share the machine's noise; > 1 means faster than the "
    "baseline. *images/s* is the median rate. GFLOP/s counts DenseNet121 as 2.9 GMAC = 5.8 GFLOP per "
    "224-px image, scaled by (size/224)^2 for other sizes (an approximation: padding and pooling do "
    "not scale exactly). *max abs diff* is the largest absolute difference of any probability from "
    "plain `model.predict` on the same images. *first call s* is the first call's time (tracing, "
    "compilation; conversions and copies are listed apart) before the timed repeats; the first row's first "
    "call also pays for creating the oneDNN kernels of these shapes, which later rows reuse.")
PATHS = (
    "**Paths.** *plain model.predict*: `cxr.inference.standardise` in numpy, then `model.predict(x, batch_size=32)`. "
    "*project: inference.predict*: `cxr.inference.predict` as shipped, one `tf.function` per "
    "model taking uint8 batches (standardisation in the graph) and running the model with its batch norms "
    "as TensorFlow's fused op. *before: make_dataset + predict*: the project's path before this benchmark "
    "(the validation `tf.data` pipeline into `model.predict`).")
EXPLORED = " The other rows are the candidates tried (`bench/explore.py`, measured with `--explore`)."
NOT_EXPLORED = (" The exploration candidates (`bench/explore.py`: tf.function batch sizes, XLA, frozen graphs, "
                "bfloat16, ONNX Runtime, thread pools) were not measured in this run (`--explore` measures them).")
THREADS = (
    "Thread pools are fixed when TensorFlow starts, so they cannot be chosen inside "
    "`cxr.inference.predict`; each setting runs in its own subprocess (median of 3 calls), the "
    "settings alternating over the repeats.")
TRAINING = (
    "Baseline: plain `fit` of Keras' DenseNet121 in float32 on a Python generator that opens each PNG of a "
    "batch with PIL, resizes, standardises and yields numpy (the course's way). Project: the cached uint8 "
    "arrays through `cxr.pipeline.make_dataset` (train.py's augmentation) into `fit` of the model train.py "
    "builds on this machine: `build_densenet121` with its batch norms as one fused op, and "
    "`--precision auto` (mixed bfloat16 where the CPU computes bfloat16 natively; float32 weights either "
    "way). The rows between add one change at a time: the project's input into the plain model, then "
    "into the fused float32 model. Each repeat is a fixed number of steps after a 2-step warm-up. The "
    "*input only* rows iterate each feed without the model; their ratio is the feed's rate over the "
    "rate its `fit` consumed.")


def report(results: dict) -> str:
    """RESULTS.md: the machine, the method and every table, then the goals and the findings."""
    parts = ["# Benchmarks", "", HEADER, "", *machine_lines(results), ""]
    parts += inference_section(results) + threads_section(results) + training_section(results)
    parts += ["", "## Peak resident memory (VmHWM of one fresh subprocess per workload; ratio: project / baseline)",
              "", markdown_table(results["memory"], MEMORY_COLUMNS) if results.get("memory") else "(not measured)"]
    parts += ["", "## Notebook", "", notebook_line(results.get("notebook"))]
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


def machine_lines(results: dict) -> list[str]:
    """The run's circumstances: date, machine, software, load, measured peaks, mode and duration."""
    info = results["machine"]
    load = ", ".join(f"{value:.2f}" for value in info["load_average"])
    convolutions = "; ".join(f"{name}: {rate:.0f} GFLOP/s ({100 * rate / results['peak_gflops']:.0f}% of the peak)"
                             for name, rate in results.get("convolution_gflops", {}).items())
    return [
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
    ]


def inference_section(results: dict) -> list[str]:
    """The method, the paths, the inference table, candidates left out and one-time set-up costs."""
    rows = results["inference"]
    # Runs saved before --explore existed explored by default.
    explored = results.get("explore", True)
    parts = [METHOD, "", PATHS + (EXPLORED if explored else NOT_EXPLORED), "",
             f"## Inference (batch {INFERENCE_BATCH} unless stated; baseline: plain `model.predict(numpy_batch)`)",
             "", markdown_table([row for row in rows if "note" not in row], INFERENCE_COLUMNS)]
    notes = [row for row in rows if "note" in row]
    if notes:
        parts += [""] + [f"- {row['size']} px, {row['path']}: {row['note']}" for row in notes]
    setups = [row for row in rows if row.get("setup s", 0) and not math.isnan(row["setup s"])]
    if setups:
        parts += ["", "One-time set-up before the first call (not in the ratios): "
                  + "; ".join(f"{row['path']} {row['setup s']:.1f} s" for row in setups) + "."]
    return parts


def threads_section(results: dict) -> list[str]:
    if not results.get("threads"):
        return []
    return ["", "## Thread settings (plain predict, one subprocess per setting and repeat; "
            "baseline: TensorFlow's default)", "", THREADS, "", markdown_table(results["threads"], THREAD_COLUMNS)]


def training_section(results: dict) -> list[str]:
    training = results.get("training") or []
    parts = ["", f"## Training ({training[0]['workload'].split(', ', 1)[1] if training else 'not measured'}; "
             "DenseNet121 compiled like train.py)", ""]
    if training:
        parts += [TRAINING, "", markdown_table(training, TRAINING_COLUMNS)]
    return parts


def notebook_line(notebook: dict | None) -> str:
    if not notebook:
        return "(not run in this mode)"
    return (f"`time .venv/bin/python -m pytest chest_x_ray_diagnosis.ipynb -q` (nbval): "
            f"{notebook['seconds']:.0f} s = {notebook['seconds'] / 60:.1f} min "
            f"({notebook['seconds'] / GOALS['notebook_seconds']:.2f} of the "
            f"{GOALS['notebook_seconds'] / 60:.0f}-min goal); "
            f"{'passed' if notebook['passed'] else 'FAILED'}: `{notebook['summary']}`")


def inference_findings(rows: list[dict]) -> list[str]:
    """What the candidates at the exploration size showed: the fastest acceptable one, the rejected ones."""
    lines = []
    for baseline in (row for row in rows if row.get("path", "").startswith("plain") and row.get("seconds")):
        waited = waits(baseline["seconds"])
        if waited:
            lines.append(f"{baseline['size']} px: plain predict took over {WAIT_FACTOR}x its fastest time in "
                         f"{waited} of {len(baseline['seconds'])} repeats: Keras feeds its numpy input through an "
                         "autotuned tf.data pipeline, and the call waits at the end for the autotuner's sleeping "
                         "thread (see the training note); cxr.inference.predict uses no tf.data pipeline")
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
                lines.append(f"{size} px: a frozen graph holds the weights as constants, so cxr.inference.predict "
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
            + (f" ({fused_fit['images/s'] / plain_fit['images/s']:.2f}x the plain model on the same input, in "
               f"float32), then bfloat16 arithmetic on float32 weights, which this CPU computes natively "
               f"({fit['images/s'] / fused_fit['images/s']:.2f}x more); {fit['ratio']:.2f}x the PIL baseline in "
               "all, its waits included" if fused_fit else "") + ".")
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


