"""Two workarounds that let Keras 3's ``fit`` run under ``tf.distribute.MultiWorkerMirroredStrategy``.

Keras 3 (3.15 at least; keras-team/keras#20585, tensorflow/tensorflow#72388) fails there twice:

1. Before training it averages one input batch across the workers, only to learn the input shapes;
   that average fails ("Attempt to convert a value (PerReplica...) to a Tensor").
2. After every step it averages each logged value across the workers along axis 0, which a scalar
   (the loss, a metric) does not have ("Invalid reduction dimension 0 for input with 0 dimensions").

Both use Keras internals: ``tests/test_distributed.py`` fails when a Keras release changes them.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.src.backend.tensorflow import trainer

_KERAS_REDUCE_PER_REPLICA = trainer.reduce_per_replica


def enable_fit(network: keras.Model, dataset: tf.data.Dataset) -> None:
    """Let ``network.fit`` and ``network.evaluate`` run under the multi-worker strategy ``network`` was built in."""
    batch = next(iter(dataset))

    def build_from_a_local_batch(iterator=None, data_batch=None):
        with network.distribute_strategy.scope():
            network._symbolic_build(data_batch=batch)

    network._maybe_symbolic_build = build_from_a_local_batch
    trainer.reduce_per_replica = _reduce_per_replica


def _reduce_per_replica(values, strategy, reduction):
    """Keras' reduction of per-replica values, averaging across workers without an axis (scalars have none)."""
    if reduction == "auto" and trainer._collective_all_reduce_multi_worker(strategy):
        return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
    return _KERAS_REDUCE_PER_REPLICA(values, strategy, reduction)
