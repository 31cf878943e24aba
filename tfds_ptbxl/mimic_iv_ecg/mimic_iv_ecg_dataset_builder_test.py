"""The `mimic_iv_ecg` builder on a small folder in MIMIC-IV-ECG's layout (real PTB-XL signals)."""

from __future__ import annotations

import csv
import math
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
import wfdb

from heartlang_jax import errors
from heartlang_jax.ecg import records, sentence_corpus
from heartlang_jax.ecg.records import STANDARD_LEADS
from tfds_ptbxl import testing
from tfds_ptbxl.mimic_iv_ecg import mimic_iv_ecg_dataset_builder as mimic

NUM_RECORDS = 12
SPLIT_BATCH = 10  # batches of 10 and 2 records: validation = ceil(10%) of each = 1 + 1
MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")  # as its headers


def _write_folder(root: pathlib.Path) -> list[dict]:
    rows = []
    for i in range(NUM_RECORDS):
        subject, study = 10000032 + i, 40000000 + 17 * i
        path = f"files/p{subject // 10000:04d}/p{subject}/s{study}/{study}"
        rows.append(
            {
                "subject_id": subject,
                "study_id": study,
                "file_name": study,
                "ecg_time": "2180-07-23 08:44:00",
                "path": path,
            }
        )
        signal = testing.ptbxl_signal(i + 1)
        if i == 4:
            signal[:] = 0.0  # every lead dead: skipped and named
        order = [STANDARD_LEADS.index(lead.upper()) for lead in MIMIC_LEADS]
        (root / path).parent.mkdir(parents=True)
        wfdb.wrsamp(
            str(study), fs=500, units=["mV"] * 12, sig_name=list(MIMIC_LEADS), p_signal=signal[order].T,
            fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str((root / path).parent),
        )  # fmt: skip
    with open(root / "record_list.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic") / "mimic-iv-ecg"
    return root, _write_folder(root)


def _builder(data_dir, **kwargs):
    return tfds.builder(
        "mimic_iv_ecg", data_dir=str(data_dir), num_workers=1, chunk_size=3, split_batch=SPLIT_BATCH,
        amplitude_fit_records=6, **kwargs,
    )  # fmt: skip


def _build(data_dir, root, **kwargs):
    builder = _builder(data_dir, **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    return builder


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
    return _build(tmp_path_factory.mktemp("tfds"), folder[0])


def test_released_split_is_sklearns_train_test_split_per_batch():
    sklearn = pytest.importorskip("sklearn.model_selection")
    for n, batch in [(1000, 1000), (2503, 1000), (12, 10)]:
        validation = mimic.released_split(n, batch)
        for start in range(0, n, batch):
            ids = np.arange(start, min(start + batch, n))
            _, expected = sklearn.train_test_split(ids, test_size=0.1, random_state=0)
            assert sorted(np.flatnonzero(validation[start : start + batch]) + start) == sorted(expected)
    assert mimic.released_split(800_035).sum() == sum(
        math.ceil(0.1 * min(100_100, 800_035 - s)) for s in range(0, 800_035, 100_100)
    )


def test_splits_sentences_and_info(built, folder):
    _, rows = folder
    validation = mimic.released_split(NUM_RECORDS, SPLIT_BATCH)
    expected = {"train": int((~validation).sum()) - 1, "validation": int(validation.sum())}  # record 4 is dead
    assert not validation[4]
    assert {s: built.info.splits[s].num_examples for s in expected} == expected
    assert set(built.info.splits) == {"train", "validation"}
    meta = built.info.metadata
    assert meta["classes"] == {}
    assert meta["sentence"]["detector"] == "multilead" and meta["sentence"]["leads"] == list(STANDARD_LEADS)
    assert meta["amplitude"]["fitted_on"] == "train, a seeded sample of 6 records"
    assert meta["skipped"]["total"] == 1 and meta["skipped"]["records"][0]["study_id"] == rows[4]["study_id"]
    assert "every lead is flat" in meta["skipped"]["records"][0]["message"]
    split_of = {row["study_id"]: ("validation" if v else "train") for row, v in zip(rows, validation)}
    for split, source in built.as_data_source().items():
        for example in source:
            assert split_of[int(example["study_id"])] == split
            assert example["words"].shape == (256, 96) and example["num_words"] > 0


def test_stored_sentence_is_the_tokenizers_with_leads_by_name(built, folder):
    root, rows = folder
    amp = built.info.metadata["amplitude"]
    record = records.load_record(root / rows[0]["path"])
    assert record.lead_names == MIMIC_LEADS
    expected = (
        sentence_corpus.SentenceSpec()
        .make_tokenizer()
        .tokenize((record.signal - amp["mean"]) / amp["std"], record.fs, lead_names=record.lead_names)
    )
    stored = {int(e["study_id"]): e for e in built.as_data_source()["train"]}[rows[0]["study_id"]]
    np.testing.assert_array_equal(stored["lead_ids"], expected.lead_ids)
    np.testing.assert_allclose(stored["words"].astype(np.float32), expected.words, rtol=1e-3, atol=1e-3)


def test_interrupted_build_resumes_from_its_chunks(tmp_path, folder, built, monkeypatch):
    """A build killed after its first chunk reruns and tokenizes only what was not done, and gives
    the dataset an uninterrupted build gives; a prepared part is likewise not redone."""
    root, _ = folder
    tokenized = []
    real = mimic._tokenize

    def interrupt_after_one_chunk(items, *args):
        for n, result in enumerate(real(items, *args)):
            if n == 3:
                raise KeyboardInterrupt("killed")
            tokenized.append(result[0])
            yield result

    monkeypatch.setattr(mimic, "_tokenize", interrupt_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, root)
    assert len(tokenized) == 3
    chunk_dirs = list((tmp_path / "downloads" / "mimic_iv_ecg_chunks").glob("leads12-*"))
    assert [p.name for p in chunk_dirs[0].iterdir()] == ["train-00000.npz"]

    def count(items, *args):
        for result in real(items, *args):
            tokenized.append(result[0])
            yield result

    tokenized.clear()
    monkeypatch.setattr(mimic, "_tokenize", count)
    resumed = _build(tmp_path, root)
    assert len(tokenized) == NUM_RECORDS - 3
    for split in ("train", "validation"):
        a = {int(e["study_id"]): e for e in resumed.as_data_source()[split]}
        b = {int(e["study_id"]): e for e in built.as_data_source()[split]}
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key]["words"], b[key]["words"])
    assert resumed.info.metadata["skipped"] == built.info.metadata["skipped"]
    assert resumed.info.metadata["amplitude"] == built.info.metadata["amplitude"]


def test_parts_prepared_apart_are_not_redone(tmp_path, folder, monkeypatch):
    root, _ = folder
    assert [_builder(tmp_path).prepare_chunks(root, part, 2) for part in (0, 1)] == [3, 2]
    monkeypatch.setattr(mimic, "_tokenize", lambda *a: pytest.fail("tokenized again"))
    assert _build(tmp_path, root).info.splits["train"].num_examples == 9


def test_layout_errors_name_what_is_missing(tmp_path):
    with pytest.raises(errors.DatasetLayoutError, match=r"does not exist\. Put the extracted PhysioNet MIMIC-IV-ECG"):
        _build(tmp_path / "tfds", tmp_path / "nowhere")
    (tmp_path / "files").mkdir()
    with pytest.raises(errors.DatasetLayoutError, match=r"incomplete: missing record_list.csv\. Put") as e:
        _build(tmp_path / "tfds", tmp_path)
    assert "\n" not in str(e.value)
