"""Export the best weights of a training run as the project's shipped model.

    python export_model.py runs/cxr14-224-blur --destination models/densenet121_cxr14 [--float16]

Writes DESTINATION.weights.h5 (no optimizer state) and DESTINATION.json: the labels, input size and
training-set normalisation that inference needs, and what was chosen on the validation split only:
the evaluation standardisation (training statistics or per image), whether to average each image
with its mirror image (test-time flip), the layer GradCAM looks at (the one that points inside the
most NIH boxes of the validation images), the calibration (cxr.calibration) and the operating
thresholds (90% specificity; Youden's J as an alternative). It then scores the
validation and test splits of the run's own split directory once: AUROC per finding with
patient-bootstrap 95% CIs, beside two baselines that read no radiograph (cxr.baselines) and the
paired difference from the metadata baseline. With --float16 the weights are stored in half
precision, which is refused if it costs 0.002 mean AUROC or more on either split.
"""

import argparse
import datetime
import os
import tempfile
from pathlib import Path

from cxr import baselines, calibration, config, data, evaluation, gradcam, images, thresholds
from cxr import model as cxr_model
from cxr.inference import PER_IMAGE, TRAINING_STATISTICS, ShippedModel, predict
from cxr.run_directory import DamagedRunFile, RunDirectory, read_json
from cxr.training import LOCATION_SETTINGS, TrainConfig, load_split

FLOAT16_TOLERANCE = 0.002  # largest mean-AUROC loss accepted for half-precision weights
SPECIFICITY = 0.90  # the shipped thresholds: each finding flags at most 10% of validation negatives
METADATA = "metadata baseline"
THUMBNAIL = "32x32 thumbnail baseline"


def mean_auroc_on(split: images.Split, scores) -> float:
    """The mean over findings of the AUROC of ``scores`` on ``split``'s labels."""
    return evaluation.mean_class_auroc(split.labels, scores)


def read_run(run_dir: Path) -> tuple[dict, dict, dict]:
    """The run's config, committed state and normalisation, with a clear error for what is missing."""
    files = {name: run_dir / name for name in (RunDirectory.CONFIG, RunDirectory.STATE, RunDirectory.NORMALISATION,
                                               RunDirectory.BEST_WEIGHTS)}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise SystemExit(
            f"{run_dir} is not a finished training run: {', '.join(missing)} missing. Train (or resume) it "
            "with `python train.py --output-dir RUN_DIR` until an epoch is committed."
        )
    try:
        return tuple(read_json(files[name]) for name in (RunDirectory.CONFIG, RunDirectory.STATE,
                                                         RunDirectory.NORMALISATION))
    except DamagedRunFile as error:
        raise SystemExit(str(error)) from error


def choose_gradcam_layer(network, valid: images.Split, statistics, labels: list[str], data_dir: Path):
    """``gradcam.choose_layer`` on the validation images with NIH boxes: (layer, hit rate of each candidate);
    the last convolutional layer, and no rates, where there is no box to point at."""
    try:
        return gradcam.choose_layer(network, valid.rows, valid.pixels, statistics, labels, data.load_boxes(data_dir))
    except (FileNotFoundError, gradcam.NoBoxes) as error:
        print(f"GradCAM keeps the last convolutional layer: {error}")
        return cxr_model.LAST_CONV_LAYER, {}


def project_relative(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it (the card names no machine's paths)."""
    resolved = path.resolve()
    return str(resolved.relative_to(config.PROJECT_ROOT)) if resolved.is_relative_to(config.PROJECT_ROOT) else str(path)


def rounded(table, digits: int = 6) -> dict:
    return {key: round(float(value), digits) for key, value in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--destination", type=Path, default=config.SHIPPED_MODEL)
    parser.add_argument("--float16", action="store_true", help="store the weights as float16 (half the size)")
    parser.add_argument("--weights", default=RunDirectory.BEST_WEIGHTS,
                        help=f"which of the run's weight files to export (default {RunDirectory.BEST_WEIGHTS}, "
                             "the best validated epoch)")
    args = parser.parse_args()
    try:  # now, not after minutes of evaluation
        args.destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"--destination {args.destination}: its folder cannot be created ({error}).") from error
    if not os.access(args.destination.parent, os.W_OK):
        raise SystemExit(f"--destination {args.destination}: its folder {args.destination.parent} is not writable.")

    run_config, state, normalisation = read_run(args.run_dir)
    labels = list(config.LABEL_SETS[run_config["labels"]])
    size = run_config["image_size"]
    # The run's own split and data: another split could hold the run's training patients.
    split_dir, data_dir = Path(run_config["split_dir"]), config.data_dir(run_config["data_dir"])
    blur = run_config.get("blur", 0.0)  # preprocessing as in training
    cache_dir = run_config.get("cache_dir", str(config.SPLIT_DIR / "cache"))  # where training cached its images
    # The training split is only needed for its labels and metadata (no size: no images decoded).
    splits = {name: images.load_split(name, None if name == "train" else size, split_dir=split_dir, data_dir=data_dir,
                                      labels=tuple(labels), cache_dir=cache_dir, blur=blur)
              for name in data.SPLITS}
    network = cxr_model.build_densenet121(len(labels), size)
    cxr_model.load_pretrained_weights(network, args.run_dir / args.weights)

    # Choices made on the validation split only: standardisation, then test-time flip.
    valid = splits["valid"]
    candidates = {
        TRAINING_STATISTICS: (normalisation["mean"], normalisation["std"]),
        PER_IMAGE: PER_IMAGE,
    }
    by_standardisation = {
        name: mean_auroc_on(valid, predict(network, valid.pixels, statistics, verbose=0))
        for name, statistics in candidates.items()
    }
    standardisation = max(by_standardisation, key=by_standardisation.get)
    statistics = candidates[standardisation]
    by_flip = {
        flip: mean_auroc_on(valid, predict(network, valid.pixels, statistics, verbose=0, flip=flip))
        for flip in (False, True)
    }
    flip = by_flip[True] > by_flip[False]
    print(f"validation mean AUROC by standardisation {by_standardisation}, by test-time flip {by_flip}")

    shipped = network
    if args.float16:  # score the weights as they will be read back: stored in half precision
        with tempfile.TemporaryDirectory() as folder:
            half = Path(folder) / "half.weights.h5"
            cxr_model.save_weights_float16(network, half)
            shipped = cxr_model.load_pretrained_weights(cxr_model.build_densenet121(len(labels), size), half)

    gradcam_layer, pointing_by_layer = choose_gradcam_layer(shipped, valid, statistics, labels, data_dir)
    print(f"GradCAM layer {gradcam_layer}; validation pointing game by layer {pointing_by_layer}")

    def score(net, split):
        return predict(net, splits[split].pixels, statistics, verbose=0, flip=flip)

    scores = {split: score(shipped, split) for split in ("valid", "test")}
    if args.float16:
        loss = {split: mean_auroc_on(splits[split], score(network, split)) - mean_auroc_on(splits[split], scores[split])
                for split in scores}  # fmt: skip
        print(f"mean AUROC lost by float16 weights: {loss}")
        if max(loss.values()) >= FLOAT16_TOLERANCE:
            raise SystemExit(f"float16 loses {loss} mean AUROC: export without --float16.")

    baseline_scores = baselines.baseline_scores({name: split.rows for name, split in splits.items()}, data_dir,
                                                labels=tuple(labels))
    results = {}
    for name in scores:
        split = splits[name]
        # The project's seed for the bootstrap, as in the notebook: the same intervals in both.
        per_class = evaluation.auroc_table(split.labels, scores[name], labels, split.patients, seed=config.SEED)
        compared = evaluation.compare_mean_auroc(
            split.labels,
            {"model": scores[name], METADATA: baseline_scores[name]["metadata"],
             THUMBNAIL: baseline_scores[name]["thumbnail"]},
            split.patients,
            reference=METADATA,
            seed=config.SEED,
        )  # fmt: skip
        results[name] = {
            "images": len(split.rows),
            "patients": int(len(set(split.patients))),
            "auroc": {label: rounded(row) for label, row in per_class[["AUROC", "CI low", "CI high"]].iterrows()},
            "mean_auroc": {model: rounded(row.dropna()) for model, row in compared.iterrows()},
        }
        print(f"{name}:\n{compared.round(3).to_string()}")

    # Calibration and thresholds, fitted on the validation split; thresholds apply to calibrated probabilities.
    # The prevalences the loss was weighted with: those of the rows training used.
    positive_frequencies, _ = data.compute_class_freqs(load_split(TrainConfig(**run_config), "train").labels)
    fitted = calibration.fit_calibration(scores["valid"], splits["valid"].labels, positive_frequencies, labels)
    probabilities = {split: calibration.calibrate(scores[split], fitted, labels) for split in scores}
    at_specificity = thresholds.threshold_at_specificity(splits["valid"].labels, probabilities["valid"], SPECIFICITY)
    youden = thresholds.choose_thresholds(splits["valid"].labels, probabilities["valid"], rule="youden", labels=labels)
    test = splits["test"]
    no_finding = (test.rows[list(config.LABELS)].sum(axis=1) == 0).to_numpy()
    fitted["test_ece"] = {
        "before": rounded({label: calibration.expected_calibration_error(test.labels[:, i], scores["test"][:, i])
                           for i, label in enumerate(labels)}),
        "after": rounded({label: calibration.expected_calibration_error(test.labels[:, i], probabilities["test"][:, i])
                          for i, label in enumerate(labels)}),
    }  # fmt: skip
    operating = {}
    for rule, rule_thresholds in ((f"specificity {SPECIFICITY:.2f}", at_specificity), ("youden", youden)):
        flagged = probabilities["test"] >= rule_thresholds
        counts = thresholds.threshold_metrics(test.labels, probabilities["test"], rule_thresholds, labels)
        operating[rule] = {
            "sensitivity": rounded(counts["sensitivity"]),
            "specificity": rounded(counts["specificity"]),
            "mean_findings_flagged_on_no_finding_images": round(float(flagged[no_finding].sum(axis=1).mean()), 3),
        }
    card = {
        "labels": labels,
        "image_size": size,
        "blur": blur,
        "normalisation": normalisation,
        "standardisation": standardisation,
        "test_time_flip": bool(flip),
        "gradcam_layer": gradcam_layer,
        "validation_pointing_game_by_gradcam_layer": rounded(pointing_by_layer),
        "validation_mean_auroc_by_standardisation": rounded(by_standardisation),
        "validation_mean_auroc_by_test_time_flip": {
            str(key).lower(): round(value, 6) for key, value in by_flip.items()
        },
        "weights_dtype": "float16" if args.float16 else "float32",
        "exported": datetime.date.today().isoformat(),
        "split_dir": project_relative(split_dir),
        "data_dir": run_config["data_dir"] and project_relative(Path(run_config["data_dir"])),  # None: the default
        "weights_file": args.weights,
        "best_epoch": state["best_epoch"],
        f"best_{run_config['monitor']}": state["best"],
        "calibration": fitted,
        "threshold_rule": f"specificity {SPECIFICITY:.2f} on the validation split (calibrated probabilities)",
        "thresholds": dict(zip(labels, at_specificity.tolist())),  # unrounded: rounding could move a decision
        "thresholds_youden": dict(zip(labels, youden.tolist())),
        "test_operating_points": operating,
        "auroc": {
            split: {label: row["AUROC"] for label, row in result["auroc"].items()} for split, result in results.items()
        },
        "mean_auroc": {split: result["mean_auroc"]["model"]["mean AUROC"] for split, result in results.items()},
        "evaluation": results,
        "training": {key: value for key, value in run_config.items() if key not in LOCATION_SETTINGS},
    }
    if args.float16:
        card["float16_mean_auroc_loss"] = {split: round(value, 5) for split, value in loss.items()}
    card_path, weights_path = ShippedModel(network, card).save(args.destination, float16=args.float16)
    print(f"wrote {weights_path} and {card_path}")


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as error:  # a missing split, image or data folder: the message says which
        raise SystemExit(f"error: {error}") from None
