"""Benchmarks: inference, training and input-pipeline throughput as ratios to plain Keras baselines.

    .venv/bin/python -m bench.run              # full run, writes bench/RESULTS.md (under 25 min on 2 cores)
    .venv/bin/python -m bench.run --quick      # smoke test: small inputs, prints the table only
    .venv/bin/python -m bench.run --explore    # also the exploration candidates (bench/explore.py)

Every throughput figure is a ratio against a baseline measured in the same run: baseline and
candidates alternate within each repeat (their order rotating from one repeat to the next, so that
they share the machine's noise), and the figure is the median over the repeats of the per-repeat
ratio. Peak memory comes from one subprocess per workload; the notebook is timed last.

This module is the command line: ``bench.timing`` measures, ``bench.workloads`` says what is measured,
``bench.report`` writes RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads (bench.timing imports it)

import keras

from bench import report, timing, workloads
from cxr.fast_layers import resolve_precision

RESULTS_FILE = workloads.REPO_ROOT / "bench" / "RESULTS.md"
SECTIONS = ("inference", "threads", "training", "memory", "notebook")
# The thread-pool settings are an exploration: measured with --explore (or --sections threads).
DEFAULT_SECTIONS = ("inference", "training", "memory", "notebook")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: small inputs, no notebook")
    parser.add_argument("--explore", action="store_true",
                        help="also measure the exploration candidates (bench/explore.py) and the thread settings, "
                             "whose results bench/RESULTS.md records")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; quick: 3)")
    parser.add_argument("--output", type=Path, default=None,
                        help="Markdown report (default bench/RESULTS.md; quick: none)")
    parser.add_argument("--sections", default=None,
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: {','.join(DEFAULT_SECTIONS)}, "
                             "with --explore also threads; quick: no threads, no notebook)")
    parser.add_argument("--sizes", default="128,224,320", help="inference image sizes (quick: 64)")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: write the report again from the measurements a run saved "
                             "(default output bench/RESULTS.md)")
    # One workload in a fresh process (peak memory, thread pools): started by the benchmark itself.
    parser.add_argument("--worker", choices=("inference", "training", "threads"), help=argparse.SUPPRESS)
    parser.add_argument("--inter", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--intra", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="project", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = args.sections or ",".join(DEFAULT_SECTIONS + (("threads",) if args.explore else ()))
    args.sections = set(sections.split(","))
    unknown = args.sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    return args


def worker(args: argparse.Namespace) -> dict:
    """The hidden ``--worker`` mode: one workload in this fresh process, its result printed as JSON."""
    if args.worker == "threads":
        from bench.explore import threads_worker

        result = threads_worker(args.inter, args.intra, args.size, args.count or None)
    else:
        result = workloads.memory_worker(args.worker, args.path, args.size, args.count or None, args.steps)
    print(json.dumps(result))
    return result


def measure(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """Every requested section, between two measurements of the machine's peak: the results dict."""
    started = time.perf_counter()
    quick, sections = args.quick, args.sections
    repeats = args.repeats or (3 if quick else 5)
    results = {"quick": quick, "explore": args.explore, "machine": timing.machine_info(), "notes": []}
    if results["machine"]["other_training"]:
        log("Warning: another training run is using the CPU; the figures will be noisy.")
    peak_n = 1024 if quick else 4096
    results["peak_n"] = peak_n
    cpu_start = timing.cpu_snapshot()
    results["peak_gflops"] = timing.matmul_peak_gflops(peak_n)
    results["peak_bf16_gflops"] = timing.matmul_peak_gflops(peak_n, dtype="bfloat16")
    log(f"matmul peak: float32 {results['peak_gflops']:.0f} GFLOP/s, bfloat16 {results['peak_bf16_gflops']:.0f}")
    results["convolution_batch"] = 4 if quick else 32
    results["convolution_gflops"] = timing.convolution_gflops(results["convolution_batch"])
    log("convolutions alone: " + ", ".join(f"{rate:.0f}" for rate in results["convolution_gflops"].values())
        + " GFLOP/s")

    results["inference"] = measure_inference(args, repeats, results["peak_gflops"], log)
    if not workloads.shipped_model_available() and results["inference"]:
        results["notes"].append(
            f"{workloads.SHIPPED_WEIGHTS.relative_to(workloads.REPO_ROOT)} was not there: inference used "
            "DenseNet121 with seeded random weights and per-image standardisation (same cost per image).")
    results["threads"] = []
    if "threads" in sections and not quick:
        from bench.explore import benchmark_threads

        results["threads"] = benchmark_threads(128, 64, 3, log)
    results["training"] = measure_training(quick, repeats, log) if "training" in sections else []
    results["memory"] = workloads.benchmark_memory(quick, log) if "memory" in sections else []
    results["notebook"] = workloads.time_notebook() if "notebook" in sections and not quick else None

    # The peak again at the end (the best of both), so that a noisy moment at the start cannot lower it.
    results["peak_gflops"] = max(results["peak_gflops"], timing.matmul_peak_gflops(peak_n))
    results["peak_bf16_gflops"] = max(results["peak_bf16_gflops"],
                                      timing.matmul_peak_gflops(peak_n, dtype="bfloat16"))
    for row in results["inference"]:
        if "GFLOP/s" in row:
            row["% of peak"] = 100 * row["GFLOP/s"] / results["peak_gflops"]
    results["others_cpu_percent"], results["steal_percent"] = timing.cpu_share_of_others(
        cpu_start, timing.cpu_snapshot())
    results["seconds"] = time.perf_counter() - started
    results["machine"]["other_training"] = results["machine"]["other_training"] or timing.other_training_running()
    return results


def measure_inference(args: argparse.Namespace, repeats: int, peak_gflops: float,
                      log: Callable[[str], None]) -> list[dict]:
    """The project path against the baseline at every size; the exploration candidates at the first."""
    if "inference" not in args.sections:
        return []
    # At the first size the whole test split (the notebook's call); fewer images at the larger sizes.
    counts = {128: None, 224: 96, 320: 64}
    sizes = [int(size) for size in args.sizes.split(",")]
    plan = [(64, 32)] if args.quick else [(size, counts.get(size, 64)) for size in sizes]
    rows = []
    for index, (size, count) in enumerate(plan):
        network, statistics = workloads.shipped_model(size, fuse_batch_norm=False)
        project, _ = workloads.shipped_model(size)
        pixels, _, _ = workloads.split_images("test", size, count)
        log(f"inference at {size} px on {len(pixels)} test images")
        rows += workloads.benchmark_inference(network, pixels, statistics, repeats, peak_gflops, log, project,
                                              explore=args.explore and index == 0)
        del network, project
        keras.backend.clear_session()
    return rows


def measure_training(quick: bool, repeats: int, log: Callable[[str], None]) -> list[dict]:
    """Training steps at 224 px, batch 16 (quick: 64 px), each effect added one at a time."""
    size = 64 if quick else workloads.TRAIN_SIZE
    pixels, labels, paths = workloads.split_images("train", size, 64 if quick else 320)
    log(f"training at {size} px on {len(pixels)} training images")
    precision = resolve_precision("auto")  # what train.py uses on this machine
    networks = {"plain": workloads.plain_network(labels, size),
                "fused float32": workloads.fused_float32_network(labels, size),
                "project": workloads.project_network(labels, size, precision)}
    networks = {name: workloads.compiled_for_training(network, labels) for name, network in networks.items()}
    rows = workloads.benchmark_training(networks, pixels, labels, paths, workloads.TRAIN_BATCH, 2 if quick else 8,
                                        repeats, 4 if quick else 30, precision, log)
    del networks
    keras.backend.clear_session()
    return rows


def print_tables(results: dict) -> None:
    tables = [([row for row in results["inference"] if "note" not in row], report.INFERENCE_COLUMNS),
              (results["threads"], report.THREAD_COLUMNS), (results["training"], report.TRAINING_COLUMNS),
              (results["memory"], report.MEMORY_COLUMNS)]
    for rows, columns in tables:
        if rows:
            print()
            print(report.text_table(rows, columns))
    print()
    print("\n".join(report.goal_lines(results)))


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    if args.worker:
        return worker(args)
    if args.render:
        results = json.loads(args.render.read_text())
        output = args.output or RESULTS_FILE
        output.write_text(report.report(results))
        print("\n".join(report.goal_lines(results)) + f"\n\nWrote {output} from {args.render}")
        return results

    results = measure(args, lambda message: print(message, flush=True))
    print_tables(results)
    output = args.output if args.output else (None if args.quick else RESULTS_FILE)
    if output:
        output.write_text(report.report(results))
        # The measurements themselves, so that the report can be written again (--render) without a rerun.
        output.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float) + "\n")
        print(f"\nWrote {output} and {output.with_suffix('.json').name}")
    return results


if __name__ == "__main__":
    main()
