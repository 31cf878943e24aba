"""Long recordings in windows, `predict_many`, and `python -m heartlang_jax.predict` on a folder or a records CSV."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import wfdb
from test_inference import CLASS_NAMES, RECORDS, write_run  # tiny run folders, see the note there

import heartlang_jax
from heartlang_jax import predict
from heartlang_jax.ecg import records
from heartlang_jax.ecg import tokenizer as tokenizer_lib
from heartlang_jax.inference import model as inference
from heartlang_jax.inference import record_files
from heartlang_jax.training import checkpointing


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run") / "finetune", "finetune")


@pytest.fixture(scope="module")
def models(run_dir, tmp_path_factory):
    return {
        "finetune": heartlang_jax.load(run_dir),
        "pretrain": heartlang_jax.load(write_run(tmp_path_factory.mktemp("run") / "pretrain", "pretrain")),
    }


def _thirty_seconds() -> tuple[np.ndarray, list[np.ndarray]]:
    """Three bundled 10 s records back to back: [12, 3000] at 100 Hz, and the three slices."""
    slices = [records.load_record(r).signal for r in RECORDS[:3]]
    return np.concatenate(slices, axis=1), slices


def _write_wfdb(path, signal: np.ndarray, fs: float) -> None:
    wfdb.wrsamp(
        path.name,
        fs=fs,
        units=["mV"] * 12,
        sig_name=list(records.STANDARD_LEADS),
        p_signal=signal.T.astype(np.float64),
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(path.parent),
    )


def test_a_30s_record_is_three_windows_and_the_mean_of_their_outputs(models):
    model = models["finetune"]
    signal, slices = _thirty_seconds()
    assert model.windows(signal, fs=100) == [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    assert model.num_windows(signal, fs=100) == 3 and model.num_windows(RECORDS[0]) == 1
    each = [model.predict(s, fs=100) for s in slices]  # every 10 s slice on its own
    whole = model.predict(signal, fs=100)
    for c in CLASS_NAMES:
        np.testing.assert_allclose(whole[c], np.mean([p[c] for p in each]), rtol=1e-6)
    per_window = model.predict(signal, fs=100, per_window=True)
    np.testing.assert_allclose(
        np.stack([per_window[c] for c in CLASS_NAMES], 1), [list(p.values()) for p in each], rtol=1e-6
    )
    # Before windows the tokenizer read only the first 10 s: the result is no longer the first slice's.
    assert not np.allclose(list(whole.values()), list(each[0].values()), rtol=1e-4)
    # Embeddings: the mean of the windows' embeddings, from any kind of run.
    encoder = models["pretrain"]
    expected = np.mean([encoder.embed(s, fs=100) for s in slices], axis=0)
    np.testing.assert_allclose(encoder.embed(signal, fs=100), expected, rtol=1e-5, atol=1e-6)
    assert encoder.embed(signal, fs=100, per_window=True).shape == (3, 16)


def test_window_length_stride_and_the_last_window(models):
    model = models["pretrain"]
    signal, _ = _thirty_seconds()
    # 25 s: two full windows, then one ending on the last sample (overlapping the second).
    assert model.windows(signal[:, :2500], fs=100) == [(0.0, 10.0), (10.0, 20.0), (15.0, 25.0)]
    assert model.windows(signal, fs=100, stride_s=5) == [(s, s + 10.0) for s in (0.0, 5.0, 10.0, 15.0, 20.0)]
    assert model.windows(signal, fs=100, window_s=7.5) == [(0.0, 7.5), (7.5, 15.0), (15.0, 22.5), (22.5, 30.0)]
    assert model.windows(signal[:, :600], fs=100) == [(0.0, 6.0)]  # shorter than a window: as before
    with pytest.raises(ValueError, match=r"window_s must be in \(0, 10\] s"):
        model.embed(signal, fs=100, window_s=20)
    with pytest.raises(ValueError, match="stride_s"):
        model.embed(signal, fs=100, stride_s=0)
    # A window without heartbeats fails its record, naming the window.
    noisy = signal.copy()
    noisy[:, 1000:2000] = np.random.default_rng(0).normal(size=(12, 1000))
    with pytest.raises(tokenizer_lib.TokenizerError, match=r"^record long@10-20s: "):
        model.embed(noisy, fs=100, name="long")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three good records, a 30 s WFDB record, and one whose .dat is truncated."""
    root = tmp_path_factory.mktemp("records")
    for record in RECORDS[:3]:
        for suffix in (".hea", ".dat"):
            shutil.copy(record.with_suffix(suffix), root / (record.name + suffix))
    _write_wfdb(root / "long30s", _thirty_seconds()[0], 100)
    shutil.copy(RECORDS[4].with_suffix(".hea"), root / "00005_lr.hea")
    (root / "00005_lr.dat").write_bytes(RECORDS[4].with_suffix(".dat").read_bytes()[:500])
    return root


def _read(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_folder_equals_predict_many_with_reasons_and_windows(models, run_dir, folder, tmp_path, caplog):
    out = tmp_path / "out" / "predictions.csv"
    with caplog.at_level(logging.WARNING):
        summary = predict.run(run_dir, folder, out, batch_size=2, progress=False)
    assert "0.5 for every class (the run folder has no thresholds.json)" in caplog.text
    assert summary["predicted"] == 4 and summary["skipped"] == 1 and summary["windows"] == 6
    rows = _read(out)
    assert [r["record"] for r in rows] == ["00001_lr", "00002_lr", "00003_lr", "00005_lr", "long30s"]
    assert [int(r["num_windows"]) for r in rows] == [1, 1, 1, 0, 3]
    bad = rows[3]
    assert "00005_lr" in bad["reason"] and "truncated" in bad["reason"] and bad["prob_NORM"] == ""
    assert all(r["reason"] == "" for i, r in enumerate(rows) if i != 3)

    paths = [folder / r["record"] for r in rows]
    expected = models["finetune"].predict_many(paths, batch_size=2, progress=False, skip_bad=True)
    assert expected.reasons[3] is not None and np.isnan(expected.probabilities[3]).all()
    got = np.asarray([[float(r[f"prob_{c}"] or "nan") for c in CLASS_NAMES] for r in rows])
    np.testing.assert_array_equal(got, expected.probabilities)  # exact: the CSV keeps every digit
    np.testing.assert_array_equal(expected.num_windows, [1, 1, 1, 0, 3])
    decisions = np.asarray([[int(r[f"pred_{c}"] or 0) for c in CLASS_NAMES] for r in rows], bool)
    np.testing.assert_array_equal(decisions, expected.probabilities >= 0.5)
    np.testing.assert_array_equal(decisions, expected.decisions)
    # The 30 s record's row is the mean of its windows.
    per_window = models["finetune"].predict(folder / "long30s", per_window=True)
    np.testing.assert_allclose(got[4], [per_window[c].mean() for c in CLASS_NAMES], rtol=1e-6)
    with pytest.raises(records.RecordError, match="00005_lr"):
        models["finetune"].predict_many(paths, progress=False)

    # Deterministic: a second run (another batch size too) writes the same bytes; no temporary left.
    again = tmp_path / "again.csv"
    predict.run(run_dir, folder, again, batch_size=2, progress=False)
    assert again.read_bytes() == out.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv"]


def test_per_window_rows(run_dir, folder, tmp_path):
    out = tmp_path / "windows.csv"
    predict.run(run_dir, folder, out, progress=False, per_window=True)
    rows = [r for r in _read(out) if r["record"] == "long30s"]
    assert [(r["window"], float(r["start_s"]), float(r["end_s"])) for r in rows] == [
        ("0", 0.0, 10.0),
        ("1", 10.0, 20.0),
        ("2", 20.0, 30.0),
    ]


def test_the_runs_thresholds_and_a_records_csv(run_dir, folder, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    thresholds = [0.1, 0.9, 0.5, 0.4999, 0.0]
    (run / "thresholds.json").write_text(
        json.dumps({"classes": list(CLASS_NAMES), "thresholds": thresholds, "rule": "max F1 on validation"})
    )
    model = heartlang_jax.load(run)
    assert model.threshold_rule == "max F1 on validation" and model.thresholds_file is not None
    # A records CSV: paths relative to it, its own order, other columns ignored.
    table = tmp_path / "list" / "records.csv"
    table.parent.mkdir()
    table.write_text(f"age,record\n61,{folder}/long30s.hea\n40,{folder}/00002_lr\n")
    (table.parent / "mine").mkdir()
    for suffix in (".hea", ".dat"):
        shutil.copy(RECORDS[0].with_suffix(suffix), table.parent / "mine" / (RECORDS[0].name + suffix))
    with table.open("a") as f:
        f.write("33,mine/00001_lr.hea\n")
    out = tmp_path / "p.csv"
    with caplog.at_level(logging.INFO):
        predict.run(run, table, out, progress=False)
    assert "max F1 on validation" in caplog.text
    rows = _read(out)
    assert [r["record"] for r in rows] == [f"{folder}/long30s", f"{folder}/00002_lr", "mine/00001_lr"]
    assert [r["num_windows"] for r in rows] == ["3", "1", "1"]
    probabilities = np.asarray([[float(r[f"prob_{c}"]) for c in CLASS_NAMES] for r in rows])
    decisions = np.asarray([[int(r[f"pred_{c}"]) for c in CLASS_NAMES] for r in rows], bool)
    np.testing.assert_array_equal(decisions, probabilities >= np.asarray(thresholds))
    np.testing.assert_allclose(probabilities[2], list(model.predict(RECORDS[0]).values()), rtol=1e-6)

    (run / "thresholds.json").write_text(json.dumps({"classes": ["a"], "thresholds": [0.5], "rule": "x"}))
    with pytest.raises(checkpointing.CheckpointError, match="thresholds.json: classes"):
        heartlang_jax.load(run)
    table.write_text("path\nx\n")
    with pytest.raises(record_files.NoRecordsError, match="no 'record' column"):
        predict.run(run_dir, table, out, progress=False)


@pytest.mark.slow
def test_command_line(run_dir, folder, tmp_path):
    out = tmp_path / "cli.csv"
    command = [sys.executable, "-m", "heartlang_jax.predict", f"--checkpoint={run_dir}", f"--records={folder}"]
    done = subprocess.run(command + [f"--out={out}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "predicted 4 of 5 record(s) (1 skipped)" in done.stderr and "5/5" in done.stderr  # progress bar
    assert "skipped record" in done.stderr and "00005_lr" in done.stderr
    assert len(_read(out)) == 5
    # A run that cannot predict is one line, before anything is written (exit status 2 in main).
    pretrain = write_run(tmp_path / "pretrain", "pretrain")
    with pytest.raises(inference.NotSupportedError, match="predictions need a fine-tuned run"):
        predict.run(pretrain, folder, tmp_path / "x.csv", progress=False)
    assert not (tmp_path / "x.csv").exists()
