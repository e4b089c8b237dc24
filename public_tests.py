"""Checks for the graded exercises of chest_x_ray_diagnosis.ipynb.

Each check takes the learner's function, runs it on small cases that can be verified by hand,
raises AssertionError with a message saying what went wrong, and prints "All tests passed."
"""

import numpy as np
import pandas as pd


def check_for_leakage_test(target):
    """check_for_leakage(df1, df2, patient_col) -> bool."""
    cases = [
        ("one patient shared", [0, 1, 2], [2, 3, 4], True),
        ("no patient shared", [0, 1, 2], [3, 4, 5], False),
        ("repeated patients, none shared", [7, 7, 8], [9, 9], False),
        ("every patient shared", [1, 2], [2, 1, 1], True),
    ]
    for name, ids1, ids2, expected in cases:
        df1 = pd.DataFrame({"patient_id": ids1, "x": range(len(ids1))})
        df2 = pd.DataFrame({"patient_id": ids2, "x": range(len(ids2))})
        result = target(df1, df2, "patient_id")
        assert type(result) is bool, f"{name}: expected a Python bool, got {type(result).__name__}"
        assert result == expected, f"{name}: expected {expected}, got {result}"
    # The patient column must come from the argument, not be hard-coded.
    renamed = pd.DataFrame({"PatientId": [5]}), pd.DataFrame({"PatientId": [5]})
    try:
        result = target(*renamed, "PatientId")
    except KeyError as error:
        raise AssertionError(
            f"use the patient_col argument to find the patient column (got KeyError {error})") from None
    assert result is True, "use the patient_col argument to find the patient column"
    print("All tests passed.")


def compute_class_freqs_test(target):
    """compute_class_freqs(labels) -> (positive_frequencies, negative_frequencies)."""
    labels = np.array(
        [
            [1, 0, 0],
            [0, 1, 1],
            [1, 0, 1],
            [1, 1, 1],
            [1, 0, 1],
        ]
    )
    positive, negative = target(labels)
    for name, value in (("positive", positive), ("negative", negative)):
        assert isinstance(value, np.ndarray), f"{name} frequencies: expected a numpy array, got {type(value).__name__}"
        assert value.shape == (3,), f"{name} frequencies: expected shape (3,) (one per class), got {value.shape}"
    assert np.allclose(positive, [0.8, 0.4, 0.8]), f"positive frequencies: expected [0.8 0.4 0.8], got {positive}"
    assert np.allclose(negative, [0.2, 0.6, 0.2]), f"negative frequencies: expected [0.2 0.6 0.2], got {negative}"
    all_zero, all_one = target(np.zeros((4, 2)))
    assert np.allclose(all_zero, 0) and np.allclose(all_one, 1), "a class with no positive has frequencies 0 and 1"
    print("All tests passed.")


def get_weighted_loss_test(target):
    """get_weighted_loss(pos_weights, neg_weights, epsilon) -> loss(y_true, y_pred)."""
    y_true = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 0], [1, 0, 1]], dtype="float32")
    w_pos = np.array([0.25, 0.25, 0.5], dtype="float32")
    w_neg = np.array([0.75, 0.75, 0.5], dtype="float32")
    mixed = np.array([[0.9, 0.2, 0.6], [0.8, 0.7, 0.1], [0.3, 0.6, 0.4], [0.7, 0.1, 0.8]])
    cases = [
        # (name, y_pred, epsilon, expected): computed by hand from the definition in the notebook.
        ("predictions all 0.7", np.full((4, 3), 0.7), 1e-7, 0.9754045),
        ("predictions all 0.3 (weights balance the classes)", np.full((4, 3), 0.3), 1e-7, 0.9754045),
        ("mixed predictions", mixed, 1e-7, 0.4530332),
        ("mixed predictions, epsilon 1", mixed, 1.0, -0.6749978),
        ("predictions all 0.7, epsilon 1", np.full((4, 3), 0.7), 1.0, -0.4956203),
    ]
    for name, y_pred, epsilon, expected in cases:
        loss = target(w_pos, w_neg, epsilon)
        assert callable(loss), f"get_weighted_loss must return a function, got {type(loss).__name__}"
        value = np.asarray(loss(y_true, y_pred.astype("float32")))
        assert value.shape == (), f"{name}: the loss must be a scalar, got shape {value.shape}"
        assert np.isclose(value, expected, atol=1e-5), (
            f"{name}: expected {expected:.6f}, got {float(value):.6f}"
            + (" (is epsilon added inside both logarithms?)" if epsilon == 1.0 else "")
        )
    print("All tests passed.")
