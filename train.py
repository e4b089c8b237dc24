"""Train DenseNet121 on the NIH chest X-rays; kill it at any time and run the same command to resume.

    python train.py --output-dir runs/densenet121 --image-size 224 --epochs 30
    python train.py --labels 4 --optimizer sgd            # the 4-class variant, SGD with momentum
    python train.py --strategy mirrored                   # all GPUs of this machine

Every option of cxr.training.TrainConfig is a flag (--image-size, --no-use-low-resolution, ...).
"""

import argparse
import dataclasses
import json
import typing

from cxr.training import TrainConfig, train


def parse_config() -> TrainConfig:
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
    return TrainConfig(**vars(parser.parse_args()))


if __name__ == "__main__":
    cfg = parse_config()
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    print(json.dumps(train(cfg), indent=2))
