"""Evaluation: rank AUROC against scikit-learn, bootstrap intervals, curves, thresholds, metrics
and the expert-label comparison (on the real test split when the NIH data is present)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr import checks, config, data, evaluation

LABELS3 = ("A", "B", "C")


def random_case(seed: int, images: int = 60, classes: int = 3, groups: int | None = None):
    """Labels with every class present, scores rounded to create ties, optional patient ids."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random((images, classes)) < 0.3).astype(np.int8)
    y_true[0], y_true[1] = 1, 0
    y_score = np.round(rng.random((images, classes)) * 0.5 + 0.4 * y_true, 2)
    patient_ids = rng.integers(0, groups, images) if groups else None
    return y_true, y_score, patient_ids


@pytest.fixture
def no_warnings():
    """Turn any warning (e.g. numpy's division by zero) into an error inside the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.fixture
def nih_dir():
    try:
        return config.data_dir()
    except FileNotFoundError:
        pytest.skip("NIH data directory not available")


# --- AUROC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_rank_auroc_equals_sklearn(seed):
    y_true, y_score, _ = random_case(seed, images=200)
    for column in range(y_true.shape[1]):
        assert evaluation.auroc(y_true[:, column], y_score[:, column]) == pytest.approx(
            roc_auc_score(y_true[:, column], y_score[:, column]), abs=1e-12
        )


def test_auroc_of_perfect_reversed_and_tied_scores():
    truth = np.array([0, 0, 1, 1])
    assert evaluation.auroc(truth, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert evaluation.auroc(truth, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert evaluation.auroc(truth, [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_bootstrap_resamples_match_sklearn_on_the_drawn_cases():
    y_true, y_score, groups = random_case(3, images=40, groups=15)
    weights = evaluation._bootstrap_weights(len(y_true), groups, 20, np.random.default_rng(0))
    vectorised = evaluation._weighted_auroc(y_true[:, 0], y_score[:, 0], weights)
    for row, value in zip(weights, vectorised):
        drawn = np.repeat(np.arange(len(y_true)), row.astype(int))
        if len(set(y_true[drawn, 0])) < 2:
            assert np.isnan(value)
        else:
            assert value == pytest.approx(roc_auc_score(y_true[drawn, 0], y_score[drawn, 0]), abs=1e-12)


def test_patient_resampling_keeps_a_patients_images_together():
    groups = np.array(["p1", "p1", "p2", "p3", "p3", "p3"])
    weights = evaluation._bootstrap_weights(len(groups), groups, 200, np.random.default_rng(1))
    assert weights.shape == (200, 6)
    assert (weights[:, 0] == weights[:, 1]).all()
    assert (weights[:, 3] == weights[:, 4]).all() and (weights[:, 4] == weights[:, 5]).all()
    # Three patients drawn per resample: the patient counts, not the image counts, sum to 3.
    assert (weights[:, [0, 2, 3]].sum(axis=1) == 3).all()


def test_auroc_table_columns_and_interval_contains_the_estimate():
    y_true, y_score, _ = random_case(0, images=120)
    table = evaluation.auroc_table(y_true, y_score, LABELS3, n_bootstrap=300, seed=0)
    assert list(table.index) == list(LABELS3)
    assert {"AUROC", "CI low", "CI high", "positives", "negatives", "note"} <= set(table.columns)
    assert (table["CI low"] <= table["AUROC"]).all() and (table["AUROC"] <= table["CI high"]).all()
    assert (table["positives"] + table["negatives"] == 120).all()
    for column, label in enumerate(LABELS3):
        assert table.loc[label, "AUROC"] == pytest.approx(roc_auc_score(y_true[:, column], y_score[:, column]))


def test_bootstrap_is_deterministic_for_a_seed():
    y_true, y_score, groups = random_case(1, images=80, groups=30)
    first = evaluation.auroc_table(y_true, y_score, LABELS3, groups=groups, n_bootstrap=200, seed=7)
    again = evaluation.auroc_table(y_true, y_score, LABELS3, groups=groups, n_bootstrap=200, seed=7)
    other = evaluation.auroc_table(y_true, y_score, LABELS3, groups=groups, n_bootstrap=200, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["CI low"], other["CI low"])


def test_patient_path_with_one_image_per_patient_equals_image_path():
    y_true, y_score, _ = random_case(2, images=50)
    by_image = evaluation.auroc_table(y_true, y_score, LABELS3, n_bootstrap=100, seed=3)
    by_patient = evaluation.auroc_table(y_true, y_score, LABELS3, groups=np.arange(50) + 1000, n_bootstrap=100, seed=3)
    pd.testing.assert_frame_equal(by_image, by_patient)


def test_patient_resampling_widens_the_interval_when_images_of_a_patient_agree():
    # Ten patients with eight identical images each: resampling images pretends there are 80 cases.
    rng = np.random.default_rng(5)
    truth = np.repeat(np.array([0, 1] * 5), 8)[:, np.newaxis]
    score = np.repeat(rng.random(10) * 0.6 + 0.3 * np.array([0, 1] * 5), 8)[:, np.newaxis]
    patients = np.repeat(np.arange(10), 8)
    by_image = evaluation.auroc_table(truth, score, ["A"], n_bootstrap=500)
    by_patient = evaluation.auroc_table(truth, score, ["A"], groups=patients, n_bootstrap=500)
    width = lambda table: float(table["CI high"].iloc[0] - table["CI low"].iloc[0])  # noqa: E731
    assert width(by_patient) > width(by_image)


def test_class_without_positives_or_negatives_is_nan_with_a_note(no_warnings):
    y_true, y_score, _ = random_case(4, images=40, classes=4)
    y_true[:, 1] = 0
    y_true[:, 2] = 1
    table = evaluation.auroc_table(y_true, y_score, ("A", "none", "all", "D"), n_bootstrap=50)
    for label, reason in (("none", "no positive case"), ("all", "no negative case")):
        assert np.isnan(table.loc[label, ["AUROC", "CI low", "CI high"]].astype(float)).all()
        assert table.loc[label, "note"] == f"not computable: {reason}"
    assert table.loc["A", "note"] == ""
    assert evaluation.mean_auroc(table) == pytest.approx(table.loc[["A", "D"], "AUROC"].mean())


def test_rare_class_notes_how_many_resamples_the_interval_rests_on():
    y_true = np.zeros((30, 1), np.int8)
    y_true[0] = 1
    y_score = np.linspace(0, 1, 30)[:, np.newaxis]
    table = evaluation.auroc_table(y_true, y_score, ["rare"], n_bootstrap=200)
    assert np.isfinite(table.loc["rare", "AUROC"])
    assert table.loc["rare", "note"].startswith("CI from ")


def test_mean_auroc_of_nothing_computable_is_nan():
    scores = np.random.default_rng(0).random((5, 2))
    table = evaluation.auroc_table(np.zeros((5, 2)), scores, ("A", "B"), n_bootstrap=10)
    assert np.isnan(evaluation.mean_auroc(table))


def test_no_bootstrap_gives_nan_interval():
    y_true, y_score, _ = random_case(0)
    table = evaluation.auroc_table(y_true, y_score, LABELS3, n_bootstrap=0)
    assert table["CI low"].isna().all() and table["AUROC"].notna().all()


@pytest.mark.parametrize(
    "y_true, y_score, labels, message",
    [
        (np.array([[0, 2]]), np.zeros((1, 2)), ("A", "B"), "only 0 and 1"),
        (np.zeros((3, 2)), np.zeros((3, 3)), ("A", "B"), "shape"),
        (np.zeros((3, 2)), np.full((3, 2), np.nan), ("A", "B"), "NaN"),
        (np.zeros((3, 2)), np.zeros((3, 2)), ("A",), "label names"),
    ],
)
def test_bad_input_raises_value_error(y_true, y_score, labels, message):
    with pytest.raises(ValueError, match=message):
        evaluation.auroc_table(y_true, y_score, labels, n_bootstrap=10)


@pytest.mark.parametrize(
    "value, low, high, expected",
    [(0, 0, np.inf, True), (1.5, 0, np.inf, True), (np.float32(0.5), 0, 1, True), (1, 0, 1, True),
     (-0.1, 0, np.inf, False), (1.01, 0, 1, False), (float("nan"), 0, np.inf, False),
     (float("inf"), 0, np.inf, False), (True, 0, 1, False), ("0.5", 0, 1, False), (None, 0, 1, False),
     (10**400, 0, np.inf, False)],
)
def test_is_number_takes_finite_real_numbers_in_range_and_nothing_else(value, low, high, expected):
    assert checks.is_number(value, low, high) is expected


def test_groups_of_the_wrong_length_raise():
    y_true, y_score, _ = random_case(0)
    with pytest.raises(ValueError, match="group ids"):
        evaluation.auroc_table(y_true, y_score, LABELS3, groups=[1, 2, 3])


# --- curves --------------------------------------------------------------------------------------


def test_roc_curves_give_each_auroc_and_none_where_not_computable():
    y_true, y_score, _ = random_case(0)
    y_true[:, 1] = 0
    curves = evaluation.roc_curves(y_true, y_score, LABELS3)
    assert list(curves) == list(LABELS3) and curves["B"] is None
    assert curves["A"].auroc == pytest.approx(roc_auc_score(y_true[:, 0], y_score[:, 0]))
    assert curves["A"].false_positive_rate[-1] == curves["A"].true_positive_rate[-1] == 1.0


def test_precision_recall_curves_give_average_precision_and_prevalence():
    y_true, y_score, _ = random_case(0)
    y_true[:, 2] = 0
    curves = evaluation.precision_recall_curves(y_true, y_score, LABELS3)
    assert curves["C"] is None
    assert curves["A"].prevalence == pytest.approx(y_true[:, 0].mean())
    assert curves["A"].average_precision == pytest.approx(average_precision_score(y_true[:, 0], y_score[:, 0]))


# --- expert labels -------------------------------------------------------------------------------


def test_expert_comparison_by_hand(tmp_path):
    expert = pd.DataFrame({
        "Image Index": [f"{i}.png" for i in range(6)],
        "Fracture": ["NO"] * 6,
        "Pneumothorax": ["YES", "YES", "NO", "NO", "NO", "NO"],
        "Airspace opacity": ["NO"] * 6,
        "Nodule or mass": ["NO", "NO", "YES", "NO", "NO", "NO"],
    })
    expert.to_csv(tmp_path / config.EXPERT_LABEL_FILE, index=False)
    # Seven split images, the last one without an expert label.
    frame = pd.DataFrame({"Image": [f"{i}.png" for i in range(7)], "Pneumothorax": [1, 0, 0, 1, 0, 0, 1],
                          "Nodule": [0, 0, 0, 0, 1, 0, 0], "Mass": [0, 0, 0, 0, 0, 1, 0]})
    labels = ("Mass", "Nodule", "Pneumothorax")
    scores = np.zeros((7, 3))
    scores[:, 2] = [0.9, 0.8, 0.1, 0.2, 0.3, 0.4, 0.0]  # ranks the expert's positives first
    scores[:, 0] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.0]
    scores[:, 1] = [0.1, 0.1, 0.9, 0.1, 0.2, 0.0, 0.0]
    table = evaluation.expert_label_comparison(frame, scores, labels, tmp_path)
    row = table.loc["Pneumothorax"]
    assert (row["images"], row["expert positives"], row["NIH positives"]) == (6, 2, 2)
    assert row["AUROC vs expert"] == 1.0
    assert row["AUROC vs NIH"] == pytest.approx(roc_auc_score([1, 0, 0, 1, 0, 0], scores[:6, 2]))
    row = table.loc["Nodule or mass"]
    assert (row["expert positives"], row["NIH positives"]) == (1, 2)
    nodule_or_mass = scores[:6, :2].max(axis=1)
    assert row["AUROC vs expert"] == pytest.approx(roc_auc_score([0, 0, 1, 0, 0, 0], nodule_or_mass))
    assert row["AUROC vs NIH"] == pytest.approx(roc_auc_score([0, 0, 0, 0, 1, 1], nodule_or_mass))


def test_expert_comparison_needs_the_scores_it_compares(tmp_path):
    frame = pd.DataFrame({"Image": ["a.png"], "Effusion": [1]})
    with pytest.raises(ValueError, match="Pneumothorax"):
        evaluation.expert_label_comparison(frame, np.zeros((1, 1)), ("Effusion",), tmp_path)


def test_expert_comparison_on_the_real_test_split(nih_dir):
    frame = data.read_split("test")
    scores = np.random.default_rng(0).random((len(frame), len(config.LABELS)))
    table = evaluation.expert_label_comparison(frame, scores, config.LABELS, nih_dir)
    expert = pd.read_csv(nih_dir / config.EXPERT_LABEL_FILE)
    expected_images = int(frame["Image"].isin(expert["Image Index"]).sum())
    assert expected_images > 0
    assert list(table.index) == ["Pneumothorax", "Nodule or mass"]
    assert (table["images"] == expected_images).all()
    for _, row in table.iterrows():
        for source, column in (("expert", "expert positives"), ("NIH", "NIH positives")):
            computable = 0 < row[column] < row["images"]
            assert np.isfinite(row[f"AUROC vs {source}"]) == computable
            assert (f"{source}: not computable" in row["note"]) == (not computable)


# --- bootstrap of a mean -------------------------------------------------------------------------


def test_bootstrap_mean_brackets_the_mean_and_resampling_patients_widens_the_interval():
    rng = np.random.default_rng(0)
    per_patient = rng.random(40)
    values = np.repeat(per_patient, 5)  # five identical values per patient: they are not independent
    patients = np.repeat(np.arange(40), 5)
    mean, low, high = evaluation.bootstrap_mean(values, patients)
    assert mean == pytest.approx(per_patient.mean()) and low < mean < high
    _, image_low, image_high = evaluation.bootstrap_mean(values)
    assert high - low > 1.8 * (image_high - image_low)  # about sqrt(5) times wider
    assert evaluation.bootstrap_mean(np.full(10, 0.25)) == (0.25, 0.25, 0.25)


@pytest.mark.parametrize("values, groups, message", [
    ([], None, "non-empty"), ([0.1, np.nan], None, "1 are not"), ([0.1, 0.2], ["a"], "1 groups for 2 values"),
])
def test_bootstrap_mean_refuses_what_it_cannot_resample(values, groups, message):
    with pytest.raises(ValueError, match=message):
        evaluation.bootstrap_mean(values, groups)
