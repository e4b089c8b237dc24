"""Export the best weights of a training run as the project's shipped model.

    python export_model.py runs/cxr14-128 --destination models/densenet121_cxr14 [--float16]

Writes DESTINATION.weights.h5 (no optimizer state) and DESTINATION.json: the labels, input size and
training-set normalisation that inference needs, the evaluation standardisation chosen on the
validation split (training statistics or per image), the operating thresholds chosen on the validation
split (Youden's J), and the per-class validation and test AUROC of the exported weights. With
--float16 the weights are stored in half precision, which is refused if it costs 0.002 mean AUROC
or more on either split.
"""

import argparse
import datetime
import json
import os
from pathlib import Path

import numpy as np

from cxr import config, data, evaluation, images, pipeline
from cxr import model as cxr_model
from cxr.training import BEST_WEIGHTS, LOCATION_SETTINGS, NORMALISATION_FILE, STATE_FILE, atomic_write_text

FLOAT16_TOLERANCE = 0.002  # largest mean-AUROC loss accepted for half-precision weights


def evaluate_splits(network, labels: list[str], image_size: int, statistics, splits=("valid", "test")) -> dict:
    """Probabilities and labels of the chosen splits."""
    results = {}
    for split in splits:
        frame = data.read_split(split)
        pixels, frame = images.load_images(
            frame, config.data_dir(), image_size, f"data/{split}.csv", config.SPLIT_DIR / "cache"
        )
        scores = evaluation.predict_probabilities(network, pixels, statistics, verbose=0)
        results[split] = (data.label_matrix(frame, labels), scores)
    return results


def auroc_per_class(results: dict, labels: list[str]) -> dict:
    return {
        split: {label: evaluation.auroc(truth[:, i], scores[:, i]) for i, label in enumerate(labels)}
        for split, (truth, scores) in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--destination", type=Path, default=Path("models/densenet121_cxr14"))
    parser.add_argument("--float16", action="store_true", help="store the weights as float16 (half the size)")
    args = parser.parse_args()

    run_config = json.loads((args.run_dir / "config.json").read_text())
    state = json.loads((args.run_dir / STATE_FILE).read_text())
    normalisation = json.loads((args.run_dir / NORMALISATION_FILE).read_text())
    labels = list(config.LABEL_SETS[run_config["labels"]])
    size = run_config["image_size"]
    network = cxr_model.build_densenet121(len(labels), size)
    cxr_model.load_pretrained_weights(network, args.run_dir / BEST_WEIGHTS)
    # Training standardises each image; evaluation may use training statistics (the course's way)
    # or do the same as training. Choose on the validation split only.
    candidates = {
        cxr_model.TRAINING_STATISTICS: (normalisation["mean"], normalisation["std"]),
        pipeline.PER_IMAGE: pipeline.PER_IMAGE,
    }
    valid_by_standardisation = {
        name: float(np.nanmean(list(auroc_per_class(evaluate_splits(network, labels, size, statistics, ("valid",)), labels)["valid"].values())))
        for name, statistics in candidates.items()
    }
    standardisation = max(valid_by_standardisation, key=valid_by_standardisation.get)
    statistics = candidates[standardisation]
    print(f"validation mean AUROC by standardisation: {valid_by_standardisation} -> {standardisation}")
    results = evaluate_splits(network, labels, size, statistics)
    aurocs = auroc_per_class(results, labels)

    weights_path = args.destination.with_name(args.destination.name + ".weights.h5")
    # Written beside the destination and renamed at the end: a reader never sees a half-written file.
    partial = weights_path.with_name("partial-" + weights_path.name)
    if args.float16:
        cxr_model.save_weights_float16(network, partial)
        half = cxr_model.load_pretrained_weights(cxr_model.build_densenet121(len(labels), size), partial)
        half_results = evaluate_splits(half, labels, size, statistics)
        half_aurocs = auroc_per_class(half_results, labels)
        loss = {s: float(np.nanmean(list(aurocs[s].values())) - np.nanmean(list(half_aurocs[s].values()))) for s in aurocs}
        print(f"mean AUROC lost by float16 weights: {loss}")
        if max(loss.values()) >= FLOAT16_TOLERANCE:
            partial.unlink()
            raise SystemExit(f"float16 loses {loss} mean AUROC: export without --float16.")
        results, aurocs = half_results, half_aurocs  # report what is shipped
    else:
        network.save_weights(partial)

    valid_truth, valid_scores = results["valid"]
    thresholds = evaluation.choose_thresholds(valid_truth, valid_scores, rule="youden", labels=labels)
    card = {
        "labels": labels,
        "image_size": size,
        "normalisation": normalisation,
        "standardisation": standardisation,
        "validation_mean_auroc_by_standardisation": {k: round(v, 4) for k, v in valid_by_standardisation.items()},
        "weights_dtype": "float16" if args.float16 else "float32",
        "exported": datetime.date.today().isoformat(),
        "best_epoch": state["best_epoch"],
        f"best_{run_config['monitor']}": state["best"],
        "threshold_rule": "Youden's J on the validation split",
        "thresholds": dict(zip(labels, thresholds.round(6).tolist())),
        "auroc": {split: {k: round(v, 4) for k, v in per_class.items()} for split, per_class in aurocs.items()},
        "mean_auroc": {split: round(float(np.nanmean(list(v.values()))), 4) for split, v in aurocs.items()},
        "training": {key: value for key, value in run_config.items() if key not in LOCATION_SETTINGS},
    }
    if args.float16:
        card["float16_mean_auroc_loss"] = {split: round(value, 5) for split, value in loss.items()}
    card_path = args.destination.with_name(args.destination.name + ".json")
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    os.replace(partial, weights_path)
    print(f"wrote {weights_path} and {card_path}")
    print(json.dumps(card["mean_auroc"]))


if __name__ == "__main__":
    main()
