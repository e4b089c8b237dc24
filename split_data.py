"""Write the patient-level train/valid/test split CSVs to data/ and print their summary.

    python split_data.py [--data-dir DIR] [--seed 42]      # extend the splits already in data/
    python split_data.py --fresh                            # split every patient anew

By default the splits already in the output directory are extended: each of their patients stays
in its split and only patients new to the data directory are placed, so that a model trained on the
earlier training split is never scored on its own patients. All files are written first and then
moved into place, so a failure midway leaves the earlier splits whole.
"""

import argparse
import sys
from pathlib import Path

from cxr import config, data
from cxr.files import atomic_write_all


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir",
                        help=f"NIH data directory (default: ${config.DATA_DIR_VARIABLE} or ../shared/data/nih)")
    parser.add_argument("--seed", type=int, default=config.SEED)
    parser.add_argument("--output-dir", default=str(config.SPLIT_DIR))
    parser.add_argument("--fresh", action="store_true", help="ignore the splits in --output-dir and split anew")
    args = parser.parse_args()

    output = Path(args.output_dir)
    previous = None
    try:
        if not args.fresh and all((output / f"{name}.csv").is_file() for name in data.SPLITS):
            previous = {name: data.read_split(name, output) for name in data.SPLITS}
            print(f"Extending the splits in {output} (--fresh to split anew).")
        metadata = data.build_metadata(args.data_dir)
        splits = data.split_by_patient(metadata, seed=args.seed, previous=previous)
    except (FileNotFoundError, ValueError) as error:  # their messages name the file and what to do
        print(f"error: {error}", file=sys.stderr)
        return 1
    summary = data.split_summary(splits)
    files = {output / f"{name}.csv": frame.to_csv(index=False) for name, frame in splits.items()}
    files[output / "split_summary.csv"] = summary.to_csv()
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_all(files)
    print(summary.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
