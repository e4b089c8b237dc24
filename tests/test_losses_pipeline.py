"""The weighted loss against a NumPy oracle, the notebook's public checks, and the tf.data pipelines."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

import public_tests
import util
from cxr import inference, losses, pipeline
from cxr.pipeline import Augmentation


def numpy_weighted_loss(y_true, y_pred, pos_weights, neg_weights, epsilon=1e-7):
    """Oracle: per class the batch mean of the weighted cross-entropy, summed over classes (float64)."""
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    per_entry = -(
        pos_weights * y_true * np.log(y_pred + epsilon) + neg_weights * (1 - y_true) * np.log(1 - y_pred + epsilon)
    )
    return per_entry.mean(axis=0).sum()


def random_case(seed: int, batch: int = 16, classes: int = 14):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((batch, classes)) < rng.uniform(0.1, 0.9, classes)).astype(np.float32)
    y_pred = rng.uniform(0.001, 0.999, (batch, classes)).astype(np.float32)
    pos_freq = y_true.mean(axis=0)
    return y_true, y_pred, 1 - pos_freq, pos_freq


# --- get_weighted_loss ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_weighted_loss_matches_numpy_oracle(seed):
    y_true, y_pred, pos_weights, neg_weights = random_case(seed)
    loss = losses.get_weighted_loss(pos_weights, neg_weights)
    value = np.asarray(loss(y_true, y_pred))
    assert value.shape == ()
    np.testing.assert_allclose(value, numpy_weighted_loss(y_true, y_pred, pos_weights, neg_weights), rtol=1e-5)


@pytest.mark.parametrize("epsilon", [1e-7, 1e-3, 1.0])
def test_weighted_loss_uses_its_epsilon(epsilon):
    y_true, y_pred, pos_weights, neg_weights = random_case(7)
    value = float(losses.get_weighted_loss(pos_weights, neg_weights, epsilon)(y_true, y_pred))
    expected = numpy_weighted_loss(y_true, y_pred, pos_weights, neg_weights, epsilon)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing_moves_every_target_towards_one_half(smoothing):
    y_true, y_pred, pos_weights, neg_weights = random_case(5)
    value = float(losses.get_weighted_loss(pos_weights, neg_weights, label_smoothing=smoothing)(y_true, y_pred))
    smoothed = y_true * (1 - smoothing) + smoothing / 2
    expected = numpy_weighted_loss(smoothed, y_pred, pos_weights, neg_weights)
    assert value == pytest.approx(expected, rel=1e-5)
    assert value != pytest.approx(numpy_weighted_loss(y_true, y_pred, pos_weights, neg_weights), rel=1e-3)


@pytest.mark.parametrize(
    "y_pred_of",
    [lambda y: y, lambda y: 1 - y, lambda y: np.zeros_like(y), lambda y: np.ones_like(y)],
    ids=["exactly right", "exactly wrong", "all 0", "all 1"],
)
def test_weighted_loss_is_finite_for_predictions_of_exactly_0_and_1(y_pred_of):
    y_true, _, pos_weights, neg_weights = random_case(3)
    y_pred = y_pred_of(y_true).astype(np.float32)
    value = np.asarray(losses.get_weighted_loss(pos_weights, neg_weights)(y_true, y_pred))
    assert value.shape == () and np.isfinite(value)
    # float32 rounds 1 + 1e-7 to 1, so log(1 - 1 + eps) differs slightly from float64: compare loosely.
    np.testing.assert_allclose(value, numpy_weighted_loss(y_true, y_pred, pos_weights, neg_weights),
                               rtol=2e-2, atol=1e-5)


def test_weighted_loss_trains_a_tiny_keras_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype(np.float32)
    y = (rng.random((32, 3)) < [0.2, 0.5, 0.8]).astype(np.float32)
    pos_freq = y.mean(axis=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses.get_weighted_loss(1 - pos_freq, pos_freq))

    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)

    values = history.history["loss"]
    assert len(values) == 2 and np.all(np.isfinite(values))
    assert values[1] < values[0], "one gradient step on the full batch should lower the loss"


# --- public_tests on the reference and on broken versions ----------------------------------------


@pytest.mark.parametrize(
    "check, reference",
    [
        (public_tests.check_for_leakage_test, util.check_for_leakage),
        (public_tests.compute_class_freqs_test, util.compute_class_freqs),
        (public_tests.get_weighted_loss_test, util.get_weighted_loss),
    ],
    ids=["leakage", "class freqs", "weighted loss"],
)
def test_public_tests_pass_on_the_reference(check, reference, capsys):
    check(reference)
    assert "All tests passed." in capsys.readouterr().out


def leakage_numpy_bool(df1, df2, patient_col):
    return np.bool_(len(np.intersect1d(df1[patient_col], df2[patient_col])) > 0)


def leakage_always_false(df1, df2, patient_col):
    return False


def leakage_compares_rows(df1, df2, patient_col):  # wrong: compares row by row, not as sets
    n = min(len(df1), len(df2))
    return bool((df1[patient_col].to_numpy()[:n] == df2[patient_col].to_numpy()[:n]).any())


def leakage_hard_coded_column(df1, df2, patient_col):
    return bool(set(df1["patient_id"]) & set(df2["patient_id"]))


def freqs_swapped(labels):
    positive = np.mean(labels, axis=0)
    return 1 - positive, positive


def freqs_counts(labels):
    positive = np.sum(labels, axis=0)
    return positive, len(labels) - positive


def freqs_over_rows(labels):
    positive = np.mean(labels, axis=1)
    return positive, 1 - positive


def freqs_lists(labels):
    positive = np.mean(labels, axis=0)
    return list(positive), list(1 - positive)


def loss_without_epsilon(pos_weights, neg_weights, epsilon=1e-7):
    def loss(y_true, y_pred):
        per_entry = -(pos_weights * y_true * np.log(y_pred) + neg_weights * (1 - y_true) * np.log(1 - y_pred))
        return np.sum(np.mean(per_entry, axis=0))

    return loss


def loss_weights_swapped(pos_weights, neg_weights, epsilon=1e-7):
    return util.get_weighted_loss(neg_weights, pos_weights, epsilon)


def loss_mean_over_classes(pos_weights, neg_weights, epsilon=1e-7):
    def loss(y_true, y_pred):
        per_entry = -(
            pos_weights * y_true * np.log(y_pred + epsilon) + neg_weights * (1 - y_true) * np.log(1 - y_pred + epsilon)
        )
        return np.mean(per_entry)

    return loss


def loss_per_class_vector(pos_weights, neg_weights, epsilon=1e-7):
    def loss(y_true, y_pred):
        per_entry = -(
            pos_weights * y_true * np.log(y_pred + epsilon) + neg_weights * (1 - y_true) * np.log(1 - y_pred + epsilon)
        )
        return np.mean(per_entry, axis=0)

    return loss


BROKEN = [
    (public_tests.check_for_leakage_test, leakage_numpy_bool),
    (public_tests.check_for_leakage_test, leakage_always_false),
    (public_tests.check_for_leakage_test, leakage_compares_rows),
    (public_tests.compute_class_freqs_test, freqs_swapped),
    (public_tests.compute_class_freqs_test, freqs_counts),
    (public_tests.compute_class_freqs_test, freqs_over_rows),
    (public_tests.compute_class_freqs_test, freqs_lists),
    (public_tests.get_weighted_loss_test, loss_without_epsilon),
    (public_tests.get_weighted_loss_test, loss_weights_swapped),
    (public_tests.get_weighted_loss_test, loss_mean_over_classes),
    (public_tests.get_weighted_loss_test, loss_per_class_vector),
]


@pytest.mark.parametrize("check, broken", BROKEN, ids=[broken.__name__ for _, broken in BROKEN])
def test_public_tests_reject_a_broken_version(check, broken, capsys):
    with pytest.raises(AssertionError):
        check(broken)
    assert "All tests passed." not in capsys.readouterr().out


def test_public_leakage_check_fails_for_a_hard_coded_patient_column(capsys):
    # The renamed-column case catches it; public_tests.py lets pandas' KeyError through rather than
    # its own AssertionError message, so both count as "rejected" here.
    with pytest.raises((AssertionError, KeyError)):
        public_tests.check_for_leakage_test(leakage_hard_coded_column)
    assert "All tests passed." not in capsys.readouterr().out


# --- training_statistics -------------------------------------------------------------------------


def constant_images(values, side=4):
    return np.stack([np.full((side, side), value, np.uint8) for value in values])


@pytest.mark.parametrize("seed", range(5))
def test_training_statistics_samples_distinct_images(seed):
    # Image i is constant 2**i: a sum of k distinct images has exactly k bits set, a repeat would carry.
    values = [2**i for i in range(8)]
    sample_size = 4
    mean, std = pipeline.training_statistics(constant_images(values), sample_size=sample_size, seed=seed)

    assert isinstance(mean, float) and isinstance(std, float)
    assert mean not in values and std > 0, "the statistics must mix several images"
    total = round(mean * sample_size)
    assert total == pytest.approx(mean * sample_size)
    assert bin(total).count("1") == sample_size, "an image was sampled twice"


@pytest.mark.parametrize("sample_size", [8, 500])
def test_training_statistics_over_all_images_are_exact(sample_size):
    images = np.random.default_rng(0).integers(0, 256, (8, 6, 6), dtype=np.uint8)
    mean, std = pipeline.training_statistics(images, sample_size=sample_size)
    assert mean == pytest.approx(images.astype(np.float64).mean())
    assert std == pytest.approx(images.astype(np.float64).std())


def test_training_statistics_of_no_image_raises():
    with pytest.raises(ValueError, match="at least one"):
        pipeline.training_statistics(np.zeros((0, 4, 4), np.uint8))


# --- make_dataset --------------------------------------------------------------------------------


def numbered_images(count, side=6, seed=0):
    """Random uint8 images and (count, 2) labels whose first column is the image number."""
    images = np.random.default_rng(seed).integers(0, 256, (count, side, side), dtype=np.uint8)
    labels = np.stack([np.arange(count), np.arange(count) % 2], axis=1).astype(np.float32)
    return images, labels


def epoch(dataset):
    """All (images, labels) of one pass over a dataset, concatenated."""
    batches = [(x.numpy(), y.numpy()) for x, y in dataset]
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


@pytest.mark.parametrize("augmentation", [Augmentation(), Augmentation(horizontal_flip=False), Augmentation(gamma=0.5)],
                         ids=["flip", "plain", "gamma"])
def test_training_batches_are_standardised_image_by_image(augmentation):
    images, labels = numbered_images(10)
    images[3] = 200  # a constant image must not turn into NaN
    dataset = pipeline.make_dataset(images, labels, batch_size=4, training=True, augmentation=augmentation)

    first_x, first_y = next(iter(dataset))
    assert tuple(first_x.shape) == (4, 6, 6, 3) and first_x.dtype.name == "float32"
    assert tuple(first_y.shape) == (4, 2) and first_y.dtype.name == "float32"

    x, y = epoch(dataset)
    assert x.shape == (10, 6, 6, 3) and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x[..., 0], x[..., 1])
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    for image, label in zip(x, y):
        assert abs(image.mean()) < 1e-4
        if label[0] != 3:
            assert image.std() == pytest.approx(1, abs=1e-3)
        else:
            assert np.all(image == 0)


def test_the_same_seed_gives_the_same_augmented_batches(monkeypatch):
    # Many small batches and more threads than the runner may have cores, so that augmenting maps run in
    # parallel would race for the random layers' seed state.
    monkeypatch.setattr(pipeline, "PARALLEL_CALLS", 4)
    images, labels = numbered_images(256, side=32)
    augmentation = Augmentation(gamma=0.3, rotation=0.025, zoom=0.15, shift=0.05)
    first, second = (epoch(pipeline.make_dataset(images, labels, batch_size=2, training=True,
                                                 augmentation=augmentation, seed=7)) for _ in range(2))
    np.testing.assert_array_equal(first[1], second[1])  # the same order
    np.testing.assert_array_equal(first[0], second[0])  # the same augmentations
    other = epoch(pipeline.make_dataset(images, labels, batch_size=2, training=True, augmentation=augmentation, seed=8))
    assert not np.array_equal(other[1], first[1])


def test_random_gamma_bends_the_mid_tones_within_its_range_and_keeps_black_and_white():
    ramp = np.tile(np.linspace(0, 255, 16, dtype=np.float32), (64, 16, 1))[..., np.newaxis]  # 64 images
    bent = keras.ops.convert_to_numpy(pipeline.RandomGamma(0.5, seed=1)(ramp, training=True))
    np.testing.assert_allclose(bent[:, :, 0], 0, atol=1e-3)
    np.testing.assert_allclose(bent[:, :, -1], 255, atol=1e-2)
    # Each image has one exponent, between 1 / 1.5 and 1.5; some images get darker, some brighter.
    middle = ramp[0, 0, 8, 0] / 255
    exponents = np.log(bent[:, 0, 8, 0] / 255) / np.log(middle)
    assert np.all((exponents > 1 / 1.5 - 1e-4) & (exponents < 1.5 + 1e-4))
    assert exponents.min() < 0.9 and exponents.max() > 1.1
    np.testing.assert_allclose(bent, 255 * (ramp / 255) ** exponents[:, None, None, None], rtol=1e-4, atol=1e-3)
    # The same seed bends the same way; at inference nothing changes.
    again = keras.ops.convert_to_numpy(pipeline.RandomGamma(0.5, seed=1)(ramp, training=True))
    np.testing.assert_array_equal(again, bent)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(pipeline.RandomGamma(0.5)(ramp, training=False)), ramp)
    assert pipeline.RandomGamma(0.5, seed=1).get_config()["factor"] == 0.5
    with pytest.raises(ValueError, match="factor must be"):
        pipeline.RandomGamma(-0.1)


def test_training_shuffle_keeps_images_with_their_labels():
    images, labels = numbered_images(12)
    dataset = pipeline.make_dataset(
        images, labels, batch_size=5, training=True, augmentation=Augmentation(horizontal_flip=False)
    )
    x, y = epoch(dataset)
    for image, label in zip(x, y):
        source = images[int(label[0])].astype(np.float32)
        expected = (source - source.mean()) / (source.std() + inference.EPSILON)
        np.testing.assert_allclose(image[..., 0], expected, atol=1e-4)
        assert label[1] == label[0] % 2


def test_training_order_is_reshuffled_every_epoch():
    images, labels = numbered_images(64, side=2)
    dataset = pipeline.make_dataset(images, labels, batch_size=8, training=True, seed=3)

    orders = [epoch(dataset)[1][:, 0] for _ in range(3)]

    for order in orders:
        assert sorted(order) == list(range(64)), "every item exactly once per epoch"
    assert not np.array_equal(orders[0], np.arange(64)), "training data must be shuffled"
    assert not np.array_equal(orders[0][:8], orders[1][:8]), "first batch identical in two epochs"
    assert not np.array_equal(orders[1], orders[2])
    # The shuffle buffer spans the whole set: first batches also draw from its second half.
    assert max(order[:8].max() for order in orders) >= 32


def test_horizontal_flip_flips_some_training_images_and_not_others():
    images = np.zeros((32, 4, 4), np.uint8)
    images[:, :, 2:] = 255  # dark left half, bright right half
    labels = np.zeros((32, 1), np.float32)
    dataset = pipeline.make_dataset(images, labels, batch_size=8, training=True, augmentation=Augmentation())

    x, _ = epoch(dataset)

    flipped = x[:, 0, 0, 0] > 0  # bright on the left
    assert 0 < flipped.sum() < len(x), f"{flipped.sum()} of {len(x)} images flipped"


def test_evaluation_pipeline_keeps_order_and_uses_the_given_statistics():
    images, labels = numbered_images(10)
    statistics = (100.0, 50.0)
    dataset = pipeline.make_dataset(images, labels, batch_size=4, training=False, statistics=statistics)

    batch_sizes = [len(y) for _, y in dataset]
    x, y = epoch(dataset)

    assert batch_sizes == [4, 4, 2]
    np.testing.assert_array_equal(y, labels)  # order kept, twice over
    np.testing.assert_array_equal(epoch(dataset)[1], labels)
    expected = (images.astype(np.float32) - 100.0) / 50.0
    assert x.shape == (10, 6, 6, 3) and x.dtype == np.float32
    for channel in range(3):
        np.testing.assert_allclose(x[..., channel], expected, rtol=1e-5, atol=1e-5)
    # Same treatment as the NumPy path used for evaluation.
    np.testing.assert_allclose(x, pipeline.standardise(images, statistics), rtol=1e-6, atol=1e-6)


def test_evaluation_pipeline_does_not_standardise_per_batch():
    # A constant image would become all zeros with per-image statistics; with the training ones it keeps its level.
    images = np.full((3, 4, 4), 150, np.uint8)
    labels = np.zeros((3, 1), np.float32)
    x, _ = epoch(pipeline.make_dataset(images, labels, batch_size=3, training=False, statistics=(100.0, 25.0)))
    np.testing.assert_allclose(x, 2.0, rtol=1e-5)


def test_evaluation_pipeline_without_statistics_raises():
    images, labels = numbered_images(4)
    with pytest.raises(ValueError, match="statistics"):
        pipeline.make_dataset(images, labels, batch_size=2, training=False)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("n_labels", [3, 5])
def test_images_and_labels_of_different_lengths_raise(training, n_labels):
    images, _ = numbered_images(4)
    labels = np.zeros((n_labels, 2), np.float32)
    with pytest.raises(ValueError, match=f"4 images but {n_labels} label rows"):
        pipeline.make_dataset(images, labels, 2, training, statistics=(0.0, 1.0))


def test_integer_labels_from_a_split_table_become_float32():
    images, _ = numbered_images(4)
    labels = pd.DataFrame({"a": [0, 1, 0, 1], "b": [1, 1, 0, 0]}, dtype=np.int8).to_numpy()
    _, y = epoch(pipeline.make_dataset(images, labels, 4, training=False, statistics=(0.0, 1.0)))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, labels)
