"""The shipped weights' half-precision file: `save_weights_float16` written, then read back by
`load_pretrained_weights`, as export_model.py --float16 and every reader of the shipped model do."""

from __future__ import annotations

import h5py
import keras
import numpy as np

from cxr.model import load_pretrained_weights, save_weights_float16


def small_model(seed: int) -> keras.Model:
    """A convolution, a batch norm and a dense head: kernels, biases and moving statistics to round-trip."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid")(x))


def test_float16_weights_are_half_precision_on_disk_and_load_back_within_float16_precision(tmp_path):
    saved = small_model(seed=0)
    batch_norm = saved.layers[2]
    batch_norm.moving_mean.assign(np.linspace(-0.5, 0.5, 4).astype("float32"))
    batch_norm.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))
    path = tmp_path / "model.weights.h5"

    save_weights_float16(saved, path)

    dtypes = []
    with h5py.File(path, "r") as file:
        file.visititems(lambda name, item: dtypes.append(item.dtype) if isinstance(item, h5py.Dataset) else None)
    assert dtypes and set(dtypes) == {np.dtype(np.float16)}
    assert [item.name for item in tmp_path.iterdir()] == [path.name]  # the float32 intermediate is gone

    loaded = load_pretrained_weights(small_model(seed=1), path)  # other initial weights, all replaced
    for original, read in zip(saved.get_weights(), loaded.get_weights(), strict=True):
        assert read.dtype == np.float32
        np.testing.assert_array_equal(read, original.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(read, original, rtol=1e-3, atol=1e-4)
