"""Write the patient-level train/valid/test split CSVs to data/ and print their summary.

    python split_data.py [--data-dir DIR] [--seed 42]
"""

import argparse

from cxr import config, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help=f"NIH data directory (default: ${config.DATA_DIR_VARIABLE} or ../shared/data/nih)")
    parser.add_argument("--seed", type=int, default=config.SEED)
    parser.add_argument("--output-dir", default=str(config.SPLIT_DIR))
    args = parser.parse_args()

    metadata = data.build_metadata(args.data_dir)
    splits = data.split_by_patient(metadata, seed=args.seed)
    for name, frame in splits.items():
        frame.to_csv(f"{args.output_dir}/{name}.csv", index=False)
    summary = data.split_summary(splits)
    summary.to_csv(f"{args.output_dir}/split_summary.csv")
    print(summary.to_string())


if __name__ == "__main__":
    main()
