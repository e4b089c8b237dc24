"""The distributed tests' worker: train.py with a small stand-in for DenseNet121, reporting on its replicas.

    PYTHONPATH=. python tests/distributed_train.py REPORT.npz [train.py flags]

Runs train.py's ``main()``, then writes REPORT.npz: ``replicas``, the number of replicas in this process,
``spread``, the largest difference of a weight between them, and ``weight0``, ``weight1``..., replica 0's
weights: the trainable ones and the batch norm's moving averages.
"""

import sys

import keras
import numpy as np

import train as train_script
from cxr import training

built: list[keras.Model] = []


def small_densenet(num_classes: int, image_size: int | None, weights=None, precision: str = "float32",
                   dropout: float = 0.0, synchronized_batch_norm: bool = False) -> keras.Model:
    """DenseNet121's input and output, and a batch normalisation (synchronised as train.py asks), in a
    model that trains in seconds."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    normalisation = keras.layers.BatchNormalization(synchronized=synchronized_batch_norm)
    features = normalisation(keras.layers.Conv2D(8, 3)(inputs))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(features))
    built.append(keras.Model(inputs, keras.layers.Dense(num_classes, activation="sigmoid")(features)))
    return built[-1]


if __name__ == "__main__":
    training.model.build_densenet121 = small_densenet
    status = train_script.main(sys.argv[2:])
    # Under a strategy each variable holds one copy per replica of this process (`.values`).
    replicas = [[np.asarray(copy) for copy in getattr(v.value, "values", [v.value])]
                for v in built[0].weights]
    np.savez(
        sys.argv[1],
        replicas=len(replicas[0]),
        spread=max(float(np.max(np.abs(copy - copies[0]))) for copies in replicas for copy in copies),
        **{f"weight{i}": copies[0] for i, copies in enumerate(replicas)},
    )
    sys.exit(status)
