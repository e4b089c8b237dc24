"""Export the best weights of a training run as the project's shipped model.

    python export_model.py runs/cxr14-128 --destination models/densenet121_cxr14 [--float16]

Writes DESTINATION.weights.h5 (no optimizer state) and DESTINATION.json: the labels, input size and the
training-set normalisation statistics that inference needs.
"""

import argparse
import json
from pathlib import Path

from cxr import model as cxr_model
from cxr.config import LABEL_SETS
from cxr.training import BEST_WEIGHTS, LOCATION_SETTINGS, NORMALISATION_FILE, STATE_FILE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--destination", type=Path, default=Path("models/densenet121_cxr14"))
    parser.add_argument("--float16", action="store_true", help="store the weights as float16 (half the size)")
    args = parser.parse_args()

    run_config = json.loads((args.run_dir / "config.json").read_text())
    state = json.loads((args.run_dir / STATE_FILE).read_text())
    labels = list(LABEL_SETS[run_config["labels"]])
    network = cxr_model.build_densenet121(len(labels), run_config["image_size"])
    cxr_model.load_pretrained_weights(network, args.run_dir / BEST_WEIGHTS)
    weights_path = args.destination.with_name(args.destination.name + ".weights.h5")
    if args.float16:
        cxr_model.save_weights_float16(network, weights_path)
    else:
        network.save_weights(weights_path)
    card = {
        "labels": labels,
        "image_size": run_config["image_size"],
        "normalisation": json.loads((args.run_dir / NORMALISATION_FILE).read_text()),
        "weights_dtype": "float16" if args.float16 else "float32",
        "best_epoch": state["best_epoch"],
        f"best_{run_config['monitor']}": state["best"],
        "training": {key: value for key, value in run_config.items() if key not in LOCATION_SETTINGS},
    }
    args.destination.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {weights_path} and {args.destination.with_suffix('.json')}")


if __name__ == "__main__":
    main()
