"""Train DenseNet121 on the NIH chest X-rays; kill it at any time and run the same command to resume.

    python train.py --output-dir runs/densenet121 --image-size 224 --epochs 30
    python train.py --labels 4 --optimizer sgd            # the 4-class variant, SGD with momentum
    python train.py --strategy mirrored                   # all GPUs of this machine

Every option of cxr.training.TrainConfig is a flag (--image-size, --no-use-low-resolution, ...).
"""

import argparse
import dataclasses
import json
import os
import sys
import typing

from cxr.checks import BadInput
from cxr.run_directory import CheckpointError, DamagedRunFile
from cxr.training import TrainConfig, train


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(TrainConfig)
    for item in dataclasses.fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        kind = hints[item.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=item.default)
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        parser.add_argument(flag, type=base, default=item.default, help=f"default: {item.default}")
    try:
        return TrainConfig(**vars(parser.parse_args(argv)))
    except ValueError as error:
        parser.error(str(error))  # usage and the message, exit status 2


def main(argv: list[str] | None = None) -> int:
    """Train as the command line says; return the exit status (1, with the message, if a file it needs is
    missing, damaged or holds a bad value, the run directory was saved with other settings, or an epoch
    could not be saved)."""
    cfg = parse_config(argv)
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    try:
        summary = train(cfg)
    # Their messages name the file or setting and say what to do (BadInput: a changed setting, a bad cell
    # of a split CSV, an unreadable image); any other error is a bug, and keeps its traceback.
    except (CheckpointError, DamagedRunFile, FileNotFoundError, BadInput) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    status = main()
    if status:
        # HDF5 keeps a file whose writes failed open, and crashes closing it in its exit handler (a segfault):
        # leave without running exit handlers; everything the run committed is already on disk.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
