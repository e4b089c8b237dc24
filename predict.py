"""The shipped model from the command line: calibrated probabilities and decisions for image files.

    python predict.py IMAGE_OR_DIR... [--model models/densenet121_cxr14] [--output results.csv] [--force]
                      [--gradcam DIR] [--thresholds specificity|youden]

Prints, and with --output writes as CSV, one row per image: the file, each finding's calibrated
probability (column named after the finding) and whether it is at or above the model's validated
threshold (column ``<finding>_flag``: 1 or 0). A directory stands for the PNG and JPEG files in it.
--gradcam DIR also writes a GradCAM overlay of each image's top findings to DIR. An existing --output
file is replaced only with --force. Files that cannot be read, and images too small or too blank to
be radiographs, are reported by name and skipped; the exit status is 1 if any was, else 0 (2 if the
model cannot be loaded or an output path is unusable).

The probabilities hold for the prevalences of the data the model was calibrated on (a subset of the
NIH release, see models/README.md), not for a hospital's. Teaching project, not a diagnostic device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BATCH_SIZE = 32
TOP_FINDINGS = 3


def image_files(arguments: list[str]) -> list[Path]:
    """The files named, and the image files inside the directories named, in a stable order."""
    files = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


def results_table(
    names: list[str], probabilities: np.ndarray, thresholds: np.ndarray, labels: list[str]
) -> pd.DataFrame:
    """``image``, one probability column per finding, then one ``<finding>_flag`` column per finding
    (1 at or above the threshold)."""
    table = pd.DataFrame(probabilities, columns=labels)
    flags = pd.DataFrame((probabilities >= thresholds).astype(int), columns=[f"{label}_flag" for label in labels])
    return pd.concat([pd.DataFrame({"image": names}), table, flags], axis=1)


def file_in_the_way(folder: Path) -> Path | None:
    """The file, if any, where ``folder`` or one of its parents should be (the folders are made later)."""
    existing = next((path for path in (folder, *folder.parents) if path.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def output_problem(output: Path | None, gradcam: Path | None, force: bool, files: list[Path]) -> str | None:
    """Why the output paths cannot be used, checked before any image is read, or None."""
    if output is not None:
        if output.is_dir():
            return f"--output {output} is a folder; name the CSV file to write, e.g. {output / 'results.csv'}."
        if output.exists() and output.resolve() in {path.resolve() for path in files}:
            return f"--output {output} is one of the images to read; name another file."
        if output.exists() and not force:
            return f"--output {output} exists; pass --force to replace it, or name another file."
        blocking = file_in_the_way(output.parent)
        if blocking is not None:
            return f"--output {output}: {blocking} is a file, not a folder; name another place."
    if gradcam is not None:
        blocking = file_in_the_way(gradcam)
        if blocking is not None:
            return f"--gradcam {gradcam}: {blocking} is a file, not a folder; name a folder for the overlays."
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--model", type=Path, default=config.SHIPPED_MODEL, help="the shipped model's prefix")
    parser.add_argument("--output", type=Path, help="write the results as CSV here")
    parser.add_argument("--force", action="store_true", help="replace the --output file if it exists")
    parser.add_argument("--gradcam", type=Path, metavar="DIR", help="write GradCAM overlays of the top findings here")
    parser.add_argument("--thresholds", choices=("specificity", "youden"), default="specificity",
                        help="the shipped thresholds (90%% specificity on validation) "
                             "or Youden's J (more findings flagged)")
    args = parser.parse_args(argv)

    files = image_files(args.inputs)
    if not files:
        parser.error(f"no PNG or JPEG files in {args.inputs}")
    problem = output_problem(args.output, args.gradcam, args.force, files)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    # TensorFlow loads only once the arguments are known to be usable.
    import keras
    import matplotlib

    matplotlib.use("Agg")
    from cxr import gradcam, images, plots
    from cxr.files import atomic_write
    from cxr.inference import NotARadiograph, ShippedModel

    try:
        shipped = ShippedModel.load(args.model)
    except (FileNotFoundError, ValueError) as error:  # the messages name the file and the field
        print(f"error: {error}", file=sys.stderr)
        return 2
    labels = shipped.labels
    if shipped.calibration is None:
        print(f"warning: {args.model} has no calibration: the columns are the network's scores, not probabilities.",
              file=sys.stderr)  # fmt: skip
    chosen = shipped.thresholds_for(args.thresholds) or {}
    if not chosen:
        print(f"warning: {args.model} has no {args.thresholds} thresholds: every flag is 0.", file=sys.stderr)
    thresholds = np.array([chosen.get(label, np.inf) for label in labels])

    # Decoded a batch at a time, so that a folder of any size fits in memory.
    names, probabilities, failed = [], [], []
    progress = keras.utils.Progbar(len(files), unit_name="image") if len(files) > BATCH_SIZE else None
    for start in range(0, len(files), BATCH_SIZE):
        batch_names, pixels = [], []
        for path in files[start:start + BATCH_SIZE]:
            try:
                pixels.append(shipped.preprocess(images.read_image(path)))
                batch_names.append(str(path))
            except (OSError, ValueError) as error:  # missing, unreadable, not an image, not a radiograph
                failed.append(path)
                reason = f"the image {error}" if isinstance(error, NotARadiograph) else error
                print(f"skipped {path}: {reason}", file=sys.stderr)
        if pixels:
            stack = np.stack(pixels)
            batch_probabilities = shipped.probabilities(stack, BATCH_SIZE)
            if args.gradcam:
                args.gradcam.mkdir(parents=True, exist_ok=True)
                for position, (name, image, row) in enumerate(zip(batch_names, stack, batch_probabilities),
                                                              start=len(names) + 1):
                    top = [labels[i] for i in np.argsort(row)[::-1][:TOP_FINDINGS]]
                    explanations = gradcam.explain_findings(shipped.model, image, shipped.statistics, labels, top,
                                                            layer_name=shipped.gradcam_layer, probabilities=row)
                    figure = plots.plot_gradcam(image, explanations)
                    # Numbered in the order of the table: a.png and a.jpg, or two folders' a.png, stay apart.
                    figure.savefig(args.gradcam / f"{position:04d}_{Path(name).stem}_gradcam.png", dpi=80,
                                   bbox_inches="tight")
                    matplotlib.pyplot.close(figure)
            names += batch_names
            probabilities.append(batch_probabilities)
        if progress is not None:
            progress.update(min(start + BATCH_SIZE, len(files)))
    if names:
        table = results_table(names, np.concatenate(probabilities), thresholds, labels)
        with pd.option_context("display.max_columns", None, "display.width", 200, "display.precision", 3):
            print(table.to_string(index=False))
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(args.output, table.to_csv(index=False, float_format="%.6f"))
    print(f"{len(names)} image(s) read, {len(failed)} skipped", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
