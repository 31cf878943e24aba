"""The `csv` dataset: a CSV of the user's own records (WFDB, CinC .mat, .npy) and labels, its bad
rows, its seeded split, long records cut into windows, and a fine-tuning run through the CLI."""

import csv
import json
import pathlib
import subprocess
import sys

import csv_dataset
import numpy as np
import pytest

from heartlang_jax import errors
from heartlang_jax.ecg import records
from heartlang_jax.errors import HeartLangError
from tfds_ptbxl.csv_labels import csv_labels_dataset_builder as csv_builder

REPO = pathlib.Path(__file__).resolve().parents[1]


def _build(csv_path, data_dir, **kwargs):
    builder = csv_builder.Builder(csv_path=csv_path, data_dir=str(data_dir), num_workers=1, **kwargs)
    builder.download_and_prepare()
    return builder


def _rewrite(path: pathlib.Path, edit) -> None:
    rows = list(csv.reader(path.read_text().splitlines()))
    edit(rows)
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def test_three_formats_and_a_long_record_build_into_windows_of_their_rows(tmp_path):
    path = csv_dataset.write(tmp_path / "data", 9, long_records=1)
    builder = _build(path, tmp_path / "tfds")
    assert builder.name == "csv" and builder.builder_config.name.startswith("leads12_csv")
    meta = builder.info.metadata
    assert meta["classes"] == {"classes": list(csv_dataset.classes())}
    assert meta["records"][9] == "npy/long0.npy" and meta["records"][1] == "mat/00002.mat"
    assert meta["windows"] == {"records": 10, "windows": 12, "cut": 1}
    source = builder.as_data_source()
    by_row = {}
    for split in ("train", "validation", "test"):
        for example in source[split]:
            by_row.setdefault(int(example["record_id"]), []).append(example)
    assert sorted(by_row) == list(range(10))
    long = sorted(by_row[9], key=lambda e: int(e["window"]))
    assert [int(e["window"]) for e in long] == [0, 1, 2] and {int(e["num_windows"]) for e in long} == {3}
    # Each window is the sentence of that 10 s slice of the 30 s record, standardized as the dataset is.
    signal = records.load(records.ArrayFile(str(tmp_path / "data" / "npy" / "long0.npy"), 100.0)).signal
    amp = meta["amplitude"]
    tokenizer = builder.builder_config.spec.make_tokenizer()
    for w, example in enumerate(long):
        part = (signal[:, 1000 * w : 1000 * (w + 1)] - amp["mean"]) / amp["std"]
        want = tokenizer.tokenize(part.astype(np.float32), 100.0, lead_names=records.STANDARD_LEADS)
        assert int(example["num_words"]) == want.num_words
        np.testing.assert_allclose(example["words"], want.words.astype(np.float16))
    # The .npy stored [samples, leads] reads as the same record as [leads, samples].
    npy = records.load(records.ArrayFile(str(tmp_path / "data" / "npy" / "00003.npy"), 100.0))
    assert npy.signal.shape == (12, 1000)
    # The 500 Hz .mat reads as the 100 Hz original: the same sentence length.
    mat = next(e for e in by_row[1])
    wfdb_sentence = tokenizer.tokenize(
        (records.load_record(tmp_path / "data" / "wfdb" / "00001_lr").signal - amp["mean"]) / amp["std"], 100.0
    )
    assert int(mat["num_words"]) > 0 and wfdb_sentence.num_words > 0
    # A label fraction chooses records, each with all its windows (fine-tuning's subset).
    from heartlang_jax.data import input_pipeline
    from heartlang_jax.stages import finetune

    split = next(s for s in source if any(int(e["record_id"]) == 9 for e in source[s]))
    index = np.arange(len(source[split]))
    windows = finetune.window_records(source[split], index)
    assert sorted(windows.tolist()).count(9) == 3
    taken = {
        int(np.isin(windows[input_pipeline.label_fraction_subset(index, 0.5, seed, windows)], 9).sum())
        for seed in range(12)
    }
    assert taken == {0, 3}  # the long record's 3 windows, or none of them


def test_editing_the_csv_rebuilds_and_an_unchanged_one_is_reused(tmp_path):
    path = csv_dataset.write(tmp_path / "data", 9)
    first = csv_builder.Builder(csv_path=path, data_dir=str(tmp_path / "tfds")).builder_config.name
    assert csv_builder.Builder(csv_path=path, data_dir=str(tmp_path / "tfds")).builder_config.name == first
    _rewrite(path, lambda rows: rows[1].__setitem__(3, "1"))  # a label of row 1
    assert csv_builder.Builder(csv_path=path, data_dir=str(tmp_path / "tfds")).builder_config.name != first
    windowed = csv_builder.Builder(csv_path=path, data_dir=str(tmp_path / "tfds"), window_s=5.0)
    assert windowed.builder_config.name not in (first,)


@pytest.mark.parametrize(
    "edit,expected",
    [
        (
            lambda rows: rows[2].__setitem__(0, "wfdb/missing"),
            r"row 2 \(line 3\), field 'record': record .*missing not found",
        ),
        (lambda rows: rows[3].__setitem__(2, "valid"), r"row 3 \(line 4\), field 'split': 'valid' is not one of"),
        (lambda rows: rows[4].__setitem__(4, "2"), r"row 4 \(line 5\), field 'HYP': label '2' is not 0 or 1"),
        (lambda rows: rows[6].__setitem__(1, ""), r"row 6 \(line 7\), field 'record': a .npy record needs its rate"),
    ],
)
def test_a_bad_row_is_one_line_naming_row_and_field(tmp_path, edit, expected):
    path = csv_dataset.write(tmp_path / "data", 9)
    assert next(csv.reader(path.read_text().splitlines()))[:5] == ["record", "fs", "split", "CD", "HYP"]
    _rewrite(path, edit)
    with pytest.raises(csv_builder.CsvRowError, match=expected) as e:
        csv_builder.read_table(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert isinstance(e.value, HeartLangError) and isinstance(e.value, errors.DatasetLayoutError)


def test_a_bad_row_through_the_command_line_is_one_error_line(tmp_path):
    """`python -m heartlang_jax.main` on a CSV with two bad rows: exit 2, one error line per bad row
    (the first is main's, naming the exception), no traceback."""
    path = csv_dataset.write(tmp_path / "data", 3)
    _rewrite(path, lambda rows: (rows[2].__setitem__(0, "wfdb/missing"), rows[3].__setitem__(2, "valid")))
    result = subprocess.run(
        [
            sys.executable, "-m", "heartlang_jax.main", "--config=configs/finetune.py:tiny", f"--workdir={tmp_path / 'ft'}",
            "--config.data.dataset=csv", f"--config.data.csv={path}", "--config.task=classes",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    errors_printed = [line for line in result.stderr.splitlines() if line[:1] == "E" and line[1:5].isdigit()]
    assert len(errors_printed) == 2, result.stderr[-3000:]
    first = next(line for line in errors_printed if "CsvRowError: " in line)
    assert "row 2 (line 3), field 'record': record " in first and "(and 1 more bad rows, each logged above)" in first
    other = next(line for line in errors_printed if line != first)
    assert "row 3 (line 4), field 'split': 'valid' is not one of" in other and "row 2 " not in other
    assert all(str(path) in line for line in errors_printed) and "Traceback" not in result.stderr


def test_a_records_csv_lists_npy_rows_at_their_rate(tmp_path):
    """`predict --records=<the dataset CSV>` reads a .npy row at its `fs`; a bad `fs` is one line."""
    from heartlang_jax.inference import record_files

    path = csv_dataset.write(tmp_path / "data", 3)
    listed = record_files.find_records(path)
    assert [record_id for record_id, _ in listed] == ["wfdb/00001_lr", "mat/00002", "npy/00003"]
    assert listed[2][1] == records.ArrayFile(str(tmp_path / "data" / "npy" / "00003.npy"), 100.0)
    assert records.load(listed[2][1]).signal.shape == (12, 1000)
    _rewrite(path, lambda rows: rows[3].__setitem__(1, ""))
    assert record_files.find_records(path)[2][1].fs == 0.0  # read, it fails naming the record (no rate)
    _rewrite(path, lambda rows: rows[3].__setitem__(1, "fast"))
    with pytest.raises(
        record_files.NoRecordsError, match=r"row 3 \(line 4\): field 'fs': 'fast' is not a positive rate"
    ):
        record_files.find_records(path)


def test_labels_column_gives_the_same_labels_as_class_columns(tmp_path):
    path = csv_dataset.write(tmp_path / "data", 12, labels_column=True)
    table = csv_builder.read_table(path)
    want = csv_builder.read_table(csv_dataset.write(tmp_path / "cols", 12))
    named = [c for c in want.classes if any(r.labels[want.classes.index(c)] for r in want.rows)]
    assert table.classes == tuple(sorted(named))
    for got, ref in zip(table.rows, want.rows):
        assert {table.classes[i] for i in np.flatnonzero(got.labels)} == {
            want.classes[i] for i in np.flatnonzero(ref.labels)
        }
    _rewrite(path, lambda rows: rows[8].__setitem__(3, "NORM;labels"))
    with pytest.raises(
        csv_builder.CsvRowError, match=r"row 8 \(line 9\), field 'labels': 'labels' is not a class name"
    ):
        csv_builder.read_table(path)


def test_without_a_split_column_the_split_is_seeded_and_stratified(tmp_path):
    path = csv_dataset.write(tmp_path / "data", 60, split=False)
    first = csv_builder.read_table(path)
    again = csv_builder.read_table(path)
    assert [r.split for r in first.rows] == [r.split for r in again.rows]
    counts = {s: sum(r.split == s for r in first.rows) for s in csv_builder.SPLITS}
    assert counts == {"train": 48, "validation": 6, "test": 6}, counts
    # Each rarest-class group is cut 80/10/10 on its own: NORM's rows (the largest group) too.
    labels = np.stack([r.labels for r in first.rows])
    totals = labels.sum(axis=0)
    for c in np.flatnonzero(totals >= 10):
        group = [
            r
            for r in first.rows
            if r.labels.any() and np.flatnonzero(r.labels)[np.argmin(totals[np.flatnonzero(r.labels)])] == c
        ]
        in_train = sum(r.split == "train" for r in group) / len(group)
        assert abs(in_train - 0.8) <= 1 / len(group) + 1e-9


def test_csv_config_is_judged_in_one_line_each():
    from heartlang_jax.configs import finetune as finetune_config
    from heartlang_jax.configs import schema

    config = finetune_config.get_config("tiny")
    config.data.dataset = "csv"
    with pytest.raises(errors.ConfigError) as e:
        schema.validate(config)
    message = str(e.value)
    assert "data.csv: is empty; data.dataset='csv' reads the CSV it names" in message
    config.data.csv = "x.csv"
    assert schema.validate(config).task == "classes"  # the default task is the dataset's own
    config.task = "superdiagnostic"
    with pytest.raises(errors.ConfigError, match="task: a csv dataset has one task, 'classes'.*got 'superdiagnostic'"):
        schema.validate(config)
    config.task = "classes"
    assert schema.validate(config).data.csv == "x.csv"
    config.data.dataset, config.data.csv = "ptbxl", ""
    config.task = "default"
    assert schema.validate(config).task == "superdiagnostic"


@pytest.mark.slow
def test_fine_tuning_on_a_csv_through_the_cli_writes_per_class_metrics_and_thresholds(tmp_path, make_pretrain_run):
    """60 bundled records in three formats plus a 30 s record, a tiny pre-trained run, a linear
    probe with balanced positive weights through `python -m heartlang_jax.main`."""
    path = csv_dataset.write(tmp_path / "data", 60, long_records=1)
    pretrain_dir, _ = make_pretrain_run()
    workdir = tmp_path / "ft"
    result = subprocess.run(
        [
            sys.executable, "-m", "heartlang_jax.main", "--config=configs/finetune.py:tiny", f"--workdir={workdir}",
            "--config.data.dataset=csv", f"--config.data.csv={path}",  # the default task: the CSV's classes
            f"--config.init_workdir={pretrain_dir}", "--config.model.pos_weight=balanced",
            "--config.num_train_steps=6", "--config.batch_size=16", "--config.dtype=float32", "--config.data.num_workers=1",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "windows: " in result.stderr and "1 records longer than one window were cut" in result.stderr
    summary = json.loads((workdir / "result.json").read_text())
    classes = list(csv_dataset.classes())
    assert summary["task"] == "classes" and summary["dataset"].startswith("csv/leads12_csv")
    assert set(summary["per_class"]["test"]) == set(classes)
    for figures in summary["per_class"]["test"].values():
        assert set(figures) == {"auroc", "auprc", "f1", "sensitivity", "specificity", "threshold", "positives"}
    assert set(summary["pos_weight"]) == set(classes)
    thresholds = json.loads((workdir / "thresholds.json").read_text())
    assert thresholds["classes"] == classes and len(thresholds["thresholds"]) == len(classes)
    assert thresholds["rule"].startswith("max F1 on the validation split")
    # The test split is scored per record: the 30 s record's 3 windows are one row.
    scores = np.load(workdir / "test_scores.npz")
    assert summary["num_test_windows"] == summary["num_test_records"] + 2 == len(scores["index"]) + 2
    assert len(set(scores["index"].tolist())) == len(scores["index"]) and 60 in scores["index"]
    # The per-class test figures are scikit-learn's on the saved per-record scores.
    from sklearn.metrics import average_precision_score, roc_auc_score

    probabilities = 1 / (1 + np.exp(-scores["logits"].astype(np.float64)))
    for c, name in enumerate(classes):
        figures, y = summary["per_class"]["test"][name], scores["labels"][:, c]
        if 0 < y.sum() < len(y):
            assert figures["auroc"] == pytest.approx(roc_auc_score(y, probabilities[:, c]), abs=1e-9)
            assert figures["auprc"] == pytest.approx(average_precision_score(y, probabilities[:, c]), abs=1e-9)
    model_json = json.loads((workdir / "model.json").read_text())
    assert model_json["class_names"] == classes

    # Predicting the CSV's records (all three formats, .npy at its `fs`) with the run: `predict`
    # writes what `predict_many` returns, and the test rows are the run's own per-record test scores.
    import heartlang_jax
    from heartlang_jax import predict
    from heartlang_jax.inference import record_files

    out = tmp_path / "predictions.csv"
    summary_of_predict = predict.run(workdir, path, out, progress=False)
    assert summary_of_predict["predicted"] == 61 and summary_of_predict["skipped"] == 0
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    listed = record_files.find_records(path)
    assert [r["record"] for r in rows] == [record_id for record_id, _ in listed] and rows[60]["record"] == "npy/long0"
    written = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    model = heartlang_jax.load(workdir)
    many = model.predict_many([p for _, p in listed], progress=False)
    np.testing.assert_array_equal(written, many.probabilities)
    np.testing.assert_array_equal([int(r["num_windows"]) for r in rows], many.num_windows)
    np.testing.assert_array_equal([[int(r[f"pred_{c}"]) for c in classes] for r in rows], many.decisions)
    np.testing.assert_array_equal(many.thresholds, thresholds["thresholds"])
    # The run scored its test split on float16-stored words, as inference rounds them: the same to
    # the float32 rounding of the stored scores and of the batch math (measured 2.8e-8; with
    # unrounded float32 words it was 9.9e-7, which this bound catches).
    test_rows = scores["index"]
    difference = np.abs(written[test_rows] - scores["probabilities"].astype(np.float64))
    assert difference.max() < 1e-7, (difference.max(), test_rows[np.argmax(difference.max(axis=1))])
    # The 30 s record: 3 windows in the CSV, its probability the mean of its windows'.
    assert [int(r["num_windows"]) for r in rows].count(3) == 1 and int(rows[60]["num_windows"]) == 3
    # Per window (the same batches of windows, so the same numbers): its three windows 0-10-20-30 s.
    predict.run(workdir, path, tmp_path / "windows.csv", progress=False, per_window=True)
    with (tmp_path / "windows.csv").open(newline="") as f:
        windows = [r for r in csv.DictReader(f) if r["record"] == "npy/long0"]
    assert [(r["window"], float(r["start_s"]), float(r["end_s"])) for r in windows] == [
        ("0", 0.0, 10.0),
        ("1", 10.0, 20.0),
        ("2", 20.0, 30.0),
    ]
    per_window = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in windows])
    np.testing.assert_allclose(written[60], per_window.mean(axis=0), rtol=0, atol=1e-15)
    assert not np.allclose(per_window[0], per_window[1], rtol=0, atol=1e-9)  # three different windows
    # One window alone through `predict` agrees to the float32 rounding of a different batch shape.
    alone = model.predict(listed[60][1], per_window=True)
    np.testing.assert_allclose(np.stack([alone[c] for c in classes], axis=1), per_window, rtol=0, atol=1e-6)
