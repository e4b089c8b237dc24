"""Label file parsing, label columns, stratified folds, leakage checks, class frequencies and the NIH side
files (small hand-made frames)."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import config, data

HEADER = {
    "Image Index": ["00000001_000.png", "00000002_000.png"],
    "Finding Labels": ["Cardiomegaly", "No Finding"],
    "Follow-up #": [0, 0],
    "Patient ID": [1, 2],
    "Patient Age": [58, 81],
    "View Position": ["PA", "AP"],
}


# --- read_label_file -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_read_label_file_reads_plain_and_gzipped_csv(tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    pd.DataFrame(HEADER).to_csv(path, index=False)
    table = data.read_label_file(path)
    assert list(table["Image Index"]) == HEADER["Image Index"]
    assert list(table["Patient ID"]) == [1, 2]
    assert list(table.index) == [2, 3]  # each row's line in the file, for error messages


def test_findings_of_the_label_file_name_the_line_of_an_unknown_finding(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame(HEADER).assign(**{"Finding Labels": ["Mass", "Pneumonitis"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="labels.csv line 3: unknown finding 'Pneumonitis'"):
        data.findings_to_columns(data.read_label_file(path)["Finding Labels"], source=str(path))


@pytest.mark.parametrize("column", data.LABEL_FILE_COLUMNS)
def test_label_file_without_required_column_names_column_and_file(tmp_path, column):
    path = tmp_path / "broken_labels.csv"
    pd.DataFrame({k: v for k, v in HEADER.items() if k != column}).to_csv(path, index=False)

    with pytest.raises(ValueError) as caught:
        data.read_label_file(path)

    assert repr(column) in str(caught.value)
    assert "broken_labels.csv" in str(caught.value)


def test_missing_label_file_says_to_download_it_by_hand_from_the_box_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_labels.csv") as caught:
        data.read_label_file(tmp_path / "no_such_labels.csv")
    message = str(caught.value)
    assert "Data_Entry_2017_v2020.csv by hand" in message and "https://nihcc.app.box.com/v/ChestXray-NIHCC" in message
    assert str(tmp_path) in message
    assert "download_data.py" not in message  # it cannot fetch the label file


def test_empty_patient_id_names_the_line_and_the_field(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({**HEADER, "Patient ID": [1, None]}).to_csv(path, index=False)
    with pytest.raises(ValueError) as caught:
        data.read_label_file(path)
    message = str(caught.value)
    expected = "line 3 (Image Index 00000002_000.png), column 'Patient ID': an empty cell is not a whole number"
    assert f"{path} {expected}" in message


def test_negative_patient_id_is_refused_with_the_range(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({**HEADER, "Patient ID": [1, -5]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"column 'Patient ID': -5 is not a whole number from 0 to 2,147,483,647"):
        data.read_label_file(path)


def test_patient_ids_written_as_floats_are_read_as_integers(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({**HEADER, "Patient ID": [1.0, 2.0]}).to_csv(path, index=False)  # "1.0", "2.0" in the file
    patients = data.read_label_file(path)["Patient ID"]
    assert patients.dtype == np.int64 and list(patients) == [1, 2]


def test_an_image_listed_twice_names_the_image_and_both_lines(tmp_path):
    path = tmp_path / "labels.csv"
    table = pd.DataFrame(HEADER)
    pd.concat([table, table.iloc[[0]]]).to_csv(path, index=False)
    with pytest.raises(ValueError) as caught:
        data.read_label_file(path)
    message = str(caught.value)
    assert str(path) in message and "00000001_000.png is listed on lines 2, 4" in message


def _gzipped_label_file() -> bytes:
    table = pd.DataFrame({**HEADER, "Image Index": [f"{i:08d}_000.png" for i in range(2)]})
    text = "".join(table.to_csv(index=False) for _ in range(300))  # long enough to be cut in the middle
    return gzip.compress(text.encode())


@pytest.mark.parametrize(
    "content",
    [
        lambda good: good[: len(good) // 2],
        lambda good: good[:100] + bytes(byte ^ 0xFF for byte in good[100:160]) + good[160:],
        lambda good: gzip.decompress(good),
        lambda good: b"",
    ],
    ids=["truncated", "corrupt", "not-gzip", "empty"],
)
def test_unreadable_gzipped_label_file_is_named(tmp_path, content):
    path = tmp_path / config.LABEL_FILE
    path.write_bytes(content(_gzipped_label_file()))
    with pytest.raises(ValueError, match="not a readable CSV file") as caught:
        data.read_label_file(path)
    assert str(path) in str(caught.value) and "Data_Entry_2017_v2020.csv" in str(caught.value)


def test_split_file_without_resolution_names_the_file_and_the_column(tmp_path):
    frame = pd.DataFrame({"Image": ["00000001_000.png"], "PatientId": [1], "Cardiomegaly": [1]})
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ValueError) as caught:
        data.read_split("train", tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "train.csv") in message and "'Resolution'" in message and "split_data.py" in message


def test_data_directory_without_images_says_so(tmp_path):
    pd.DataFrame(HEADER).to_csv(tmp_path / config.LABEL_FILE, index=False)
    (tmp_path / config.FULL_RESOLUTION_DIR).mkdir()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no images"):
        data.build_metadata(tmp_path)


# --- findings_to_columns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, positives",
    [
        ("Effusion|Mass", {"Effusion", "Mass"}),
        ("Hernia", {"Hernia"}),
        ("No Finding", set()),
        ("Pleural_Thickening|Pneumonia|Pneumothorax", {"Pleural_Thickening", "Pneumonia", "Pneumothorax"}),
        (" Edema | Emphysema ", {"Edema", "Emphysema"}),
    ],
)
def test_findings_set_exactly_their_columns(text, positives):
    columns = data.findings_to_columns(pd.Series([text]))
    assert list(columns.columns) == list(config.LABELS)
    row = columns.iloc[0]
    assert {label for label in config.LABELS if row[label] == 1} == positives
    assert set(row.unique()) <= {0, 1}


def test_findings_keep_the_index_of_the_label_file_rows():
    findings = pd.Series(["Mass", "No Finding", "Effusion|Mass"], index=[7, 8, 9])
    columns = data.findings_to_columns(findings)
    assert list(columns.index) == [7, 8, 9]
    assert list(columns["Mass"]) == [1, 0, 1]
    assert list(columns["Effusion"]) == [0, 0, 1]


def test_unknown_finding_names_line_name_and_source():
    findings = pd.Series(["Mass", "Effusion|Pneumonitis", "No Finding"], index=[2, 3, 4])
    with pytest.raises(ValueError) as caught:
        data.findings_to_columns(findings, source="labels.csv")
    message = str(caught.value)
    assert "labels.csv line 3" in message and "'Pneumonitis'" in message and "labels.csv" in message


@pytest.mark.parametrize("text", ["", "   ", None, np.nan], ids=["empty", "blank", "None", "NaN"])
def test_empty_findings_are_rejected(text):
    findings = pd.Series(["Mass", text], index=[2, 3], dtype=object)
    with pytest.raises(ValueError, match="line 3: empty 'Finding Labels'"):
        data.findings_to_columns(findings)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No Finding", {"No Finding": 1}),
        ("Effusion|Atelectasis", {"Effusion": 1, "Atelectasis": 1}),
        ("Mass", {}),  # a real finding outside the 4-class set: neither a column nor "No Finding"
        ("Infiltration|Mass", {"Infiltration": 1}),
    ],
)
def test_four_class_labels_make_no_finding_its_own_column(text, expected):
    columns = data.findings_to_columns(pd.Series([text]), labels=config.FOUR_CLASS_LABELS)
    assert list(columns.columns) == list(config.FOUR_CLASS_LABELS)
    assert columns.iloc[0].to_dict() == {label: expected.get(label, 0) for label in config.FOUR_CLASS_LABELS}


# --- iterative_stratification --------------------------------------------------------------------


def random_label_matrix(seed: int, rows: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prevalence = [0.01, 0.03, 0.1, 0.2, 0.35, 0.5]
    return (rng.random((rows, len(prevalence))) < prevalence).astype(int)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.5, 0.5), (0.6, 0.2, 0.1, 0.1)])
def test_stratification_assigns_every_row_with_sizes_near_fractions(seed, fractions):
    matrix = random_label_matrix(seed)
    folds = data.iterative_stratification(matrix, fractions, np.random.default_rng(seed))

    assert folds.shape == (len(matrix),)
    assert set(folds) == set(range(len(fractions)))  # every row assigned (no -1), every fold used
    sizes = np.bincount(folds, minlength=len(fractions))
    np.testing.assert_allclose(sizes, np.asarray(fractions) * len(matrix), atol=0.02 * len(matrix))
    # Each label is dealt out in proportion too.
    for label in range(matrix.shape[1]):
        positives = np.bincount(folds[matrix[:, label] > 0], minlength=len(fractions))
        np.testing.assert_allclose(positives, np.asarray(fractions) * matrix[:, label].sum(), atol=2)


@pytest.mark.parametrize("seed", range(5))
def test_rare_label_with_three_positives_goes_once_to_each_of_three_folds(seed):
    matrix = np.zeros((30, 2), dtype=int)
    matrix[[3, 10, 20], 0] = 1  # rare label
    matrix[::2, 1] = 1  # common label
    folds = data.iterative_stratification(matrix, (1 / 3, 1 / 3, 1 / 3), np.random.default_rng(seed))
    assert sorted(folds[[3, 10, 20]]) == [0, 1, 2]
    assert list(np.bincount(folds)) == [10, 10, 10]


def test_rows_without_any_label_are_assigned_too():
    matrix = np.zeros((20, 3), dtype=int)
    folds = data.iterative_stratification(matrix, (0.5, 0.25, 0.25), np.random.default_rng(0))
    assert list(np.bincount(folds)) == [10, 5, 5]


def test_stratification_is_deterministic_for_a_seed():
    matrix = random_label_matrix(0)
    first = data.iterative_stratification(matrix, (0.7, 0.15, 0.15), np.random.default_rng(42))
    again = data.iterative_stratification(matrix, (0.7, 0.15, 0.15), np.random.default_rng(42))
    other = data.iterative_stratification(matrix, (0.7, 0.15, 0.15), np.random.default_rng(43))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_placed_rows_keep_their_fold_and_new_rows_fill_what_each_fold_lacks():
    matrix = random_label_matrix(0)
    placed = np.full(len(matrix), -1)
    placed[:100] = 0  # a first batch of rows, all in fold 0 (more than its 70% share of 300 allows)
    folds = data.iterative_stratification(matrix, (0.5, 0.25, 0.25), np.random.default_rng(0), placed)
    np.testing.assert_array_equal(folds[:100], 0)
    # Fold 0 wants 150 rows and holds 100: the 200 new rows go 50 / 75 / 75.
    np.testing.assert_allclose(np.bincount(folds[100:], minlength=3), [50, 75, 75], atol=3)


def write_png(path, side):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side), 128, np.uint8)).save(path)


def test_metadata_reads_each_files_real_size_and_prefers_images_over_images_64(tmp_path):
    names = ["00000001_000.png", "00000002_000.png", "00000003_000.png"]
    table = pd.DataFrame({**HEADER, "Image Index": names[:2]})
    table = pd.concat([table, table.iloc[[0]].assign(**{"Image Index": names[2], "Patient ID": 3})])
    table.to_csv(tmp_path / config.LABEL_FILE, index=False)
    write_png(tmp_path / config.FULL_RESOLUTION_DIR / names[0], 96)
    write_png(tmp_path / config.FULL_RESOLUTION_DIR / names[1], 80)
    write_png(tmp_path / config.LOW_RESOLUTION_DIR / names[1], 8)  # also at full size: images/ wins
    write_png(tmp_path / config.LOW_RESOLUTION_DIR / names[2], 8)

    metadata = data.build_metadata(tmp_path)

    assert list(metadata["Image"]) == names
    assert list(metadata["Resolution"]) == [96, 80, 8]
    assert data.image_path(metadata.iloc[2], tmp_path) == tmp_path / config.LOW_RESOLUTION_DIR / names[2]
    assert data.image_path(metadata.iloc[1], tmp_path) == tmp_path / config.FULL_RESOLUTION_DIR / names[1]


# --- leakage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids1, ids2, expected",
    [
        ([1, 2, 3], [3, 4], True),
        ([1, 2, 3], [4, 5], False),
        ([7, 7, 8], [9, 9], False),
        ([1, 2], [2, 1, 1], True),
        ([], [1], False),
    ],
)
def test_check_for_leakage_returns_python_bool(ids1, ids2, expected):
    df1 = pd.DataFrame({"PatientId": ids1})
    df2 = pd.DataFrame({"PatientId": ids2})
    result = data.check_for_leakage(df1, df2, "PatientId")
    assert type(result) is bool
    assert result is expected


def test_check_for_leakage_uses_the_given_column():
    df1 = pd.DataFrame({"PatientId": [1, 2], "Other": [5, 6]})
    df2 = pd.DataFrame({"PatientId": [3, 4], "Other": [6, 7]})
    assert data.check_for_leakage(df1, df2, "PatientId") is False
    assert data.check_for_leakage(df1, df2, "Other") is True


@pytest.mark.parametrize(
    "ids1, ids2, expected",
    [([1, 2, 3], [3, 3, 2, 5], 2), ([1, 1, 1], [1], 1), ([1, 2], [3], 0)],
)
def test_count_shared_patients_counts_patients_not_rows(ids1, ids2, expected):
    df1, df2 = pd.DataFrame({"p": ids1}), pd.DataFrame({"p": ids2})
    assert data.count_shared_patients(df1, df2, "p") == expected
    assert data.count_shared_patients(df2, df1, "p") == expected


# --- class frequencies and label matrices --------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_class_frequencies_match_numpy_mean(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((50, 14)) < rng.random(14)).astype(int)
    positive, negative = data.compute_class_freqs(labels)
    assert positive.shape == negative.shape == (14,)
    np.testing.assert_allclose(positive, labels.mean(axis=0))
    np.testing.assert_allclose(negative, 1 - labels.mean(axis=0))
    np.testing.assert_allclose(positive + negative, 1)


def test_class_frequencies_of_constant_classes():
    labels = np.array([[0, 1], [0, 1], [0, 1]])
    positive, negative = data.compute_class_freqs(labels)
    np.testing.assert_array_equal(positive, [0, 1])
    np.testing.assert_array_equal(negative, [1, 0])


def small_split_frame() -> pd.DataFrame:
    findings = pd.Series(["No Finding", "Effusion|Atelectasis", "Mass", "Infiltration"])
    frame = data.findings_to_columns(findings)
    frame.insert(0, "Image", [f"0000000{i}_000.png" for i in range(4)])
    frame["PatientId"] = [1, 2, 3, 4]
    return frame


def test_label_matrix_derives_no_finding_from_the_14_findings():
    matrix = data.label_matrix(small_split_frame(), config.FOUR_CLASS_LABELS)
    assert matrix.dtype == np.float32 and matrix.shape == (4, 4)
    # Columns: Effusion, Atelectasis, Infiltration, No Finding.
    np.testing.assert_array_equal(
        matrix,
        [[0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]],
    )


def test_label_matrix_of_14_labels_follows_label_order():
    frame = small_split_frame()
    matrix = data.label_matrix(frame)
    assert matrix.shape == (4, 14) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, frame[list(config.LABELS)].to_numpy())


def test_label_matrix_uses_an_existing_no_finding_column():
    frame = small_split_frame().assign(**{"No Finding": [0, 0, 0, 1]})  # deliberately not derived
    matrix = data.label_matrix(frame, (config.NO_FINDING,))
    np.testing.assert_array_equal(matrix[:, 0], [0, 0, 0, 1])


def test_label_matrix_without_a_label_column_raises():
    frame = small_split_frame().drop(columns="Mass")
    with pytest.raises(ValueError, match="'Mass'"):
        data.label_matrix(frame)


# --- side files: bounding boxes and expert labels ------------------------------------------------


def test_load_boxes_reads_the_real_file(nih_dir):
    boxes = data.load_boxes(nih_dir)
    assert list(boxes.columns) == ["Image", "Finding", "x", "y", "w", "h"]
    assert len(boxes) == 984 and boxes[["x", "y", "w", "h"]].notna().all().all()
    assert set(boxes["Finding"]) <= set(config.LABELS)
    assert boxes[["x", "y"]].to_numpy().max() < 1024


def test_load_boxes_parses_the_odd_header(tmp_path):
    text = "Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Infiltrate,10.5,20,30,40\nb.png,Mass,1,2,3,4,,,\n"
    (tmp_path / config.BBOX_FILE).write_bytes(gzip.compress(text.encode()))
    boxes = data.load_boxes(tmp_path)
    assert boxes.to_dict("records") == [
        {"Image": "a.png", "Finding": "Infiltration", "x": 10.5, "y": 20.0, "w": 30.0, "h": 40.0},
        {"Image": "b.png", "Finding": "Mass", "x": 1.0, "y": 2.0, "w": 3.0, "h": 4.0},
    ]


def test_read_expert_labels_gives_one_row_per_image_of_0_1_columns(tmp_path):
    pd.DataFrame({
        "Image Index": ["a.png", "a.png", "b.png"],
        "Fracture": ["NO", "NO", "YES"],
        "Pneumothorax": ["YES", "YES", "NO"],
        "Airspace opacity": ["NO", "NO", "NO"],
        "Nodule or mass": ["NO", "NO", "YES"],
    }).to_csv(tmp_path / config.EXPERT_LABEL_FILE, index=False)
    expert = data.read_expert_labels(tmp_path)
    assert list(expert.columns) == ["Image", *data.EXPERT_FINDINGS]
    assert expert.to_dict("records") == [
        {"Image": "a.png", "Fracture": 0, "Pneumothorax": 1, "Airspace opacity": 0, "Nodule or mass": 0},
        {"Image": "b.png", "Fracture": 1, "Pneumothorax": 0, "Airspace opacity": 0, "Nodule or mass": 1},
    ]


def test_read_expert_labels_names_the_file_and_the_unexpected_values(tmp_path):
    expert = {"Image Index": ["a.png"], "Fracture": ["MAYBE"], "Pneumothorax": ["NO"], "Airspace opacity": ["NO"],
              "Nodule or mass": ["NO"]}
    pd.DataFrame(expert).to_csv(tmp_path / config.EXPERT_LABEL_FILE, index=False)
    with pytest.raises(ValueError, match=r"google2019.*MAYBE"):
        data.read_expert_labels(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="Expert label file"):
        data.read_expert_labels(tmp_path / "empty")


@pytest.mark.parametrize(
    "column, value, expected",
    [("Cardiomegaly", "yes", "0 or 1"), ("Cardiomegaly", "", "0 or 1"), ("Cardiomegaly", "2", "0 or 1"),
     ("Resolution", "512px", "a whole number"), ("PatientId", "", "a whole number"),
     ("PatientId", "inf", "a whole number"), ("PatientId", "1e25", "a whole number"),
     ("PatientId", "2.5", "a whole number")],
)
def test_split_file_with_a_bad_value_names_the_line_and_the_column(tmp_path, column, value, expected):
    frame = pd.DataFrame({"Image": ["00000001_000.png", "00000002_000.png"], "PatientId": ["1", "2"],
                          "Resolution": ["512", "320"], "Cardiomegaly": ["1", "0"]})
    frame.loc[1, column] = value
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ValueError) as caught:
        data.read_split("train", tmp_path)
    message = str(caught.value)
    assert f"train.csv line 3 (Image 00000002_000.png), column {column!r}: " in message and expected in message
    assert ("an empty cell" in message) == (value == "")
    if value == "2":  # a number read as such is shown as written, not as a NumPy scalar
        assert "column 'Cardiomegaly': 2 is not 0 or 1" in message


def test_split_file_values_are_read_as_integers(tmp_path):
    frame = pd.DataFrame({"Image": ["00000001_000.png"], "PatientId": [1.0], "Resolution": [512.0],
                          "Cardiomegaly": [1.0]})  # as a tool that writes floats would save it
    frame.to_csv(tmp_path / "train.csv", index=False)
    table = data.read_split("train", tmp_path)
    assert table[["PatientId", "Resolution", "Cardiomegaly"]].dtypes.map(pd.api.types.is_integer_dtype).all()
    assert table.loc[0, ["PatientId", "Resolution", "Cardiomegaly"]].tolist() == [1, 512, 1]
