"""The `csn` builder on a small folder in PhysioNet's ecg-arrhythmia layout (real PTB-XL signals)."""

from __future__ import annotations

import gzip
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from heartlang_jax import errors
from heartlang_jax.ecg import records, sentence_corpus
from heartlang_jax.ecg.records import STANDARD_LEADS
from tfds_ptbxl import labelled, testing
from tfds_ptbxl.csn import csn_dataset_builder

PER_SPLIT = {"train": 5, "validation": 2, "test": 2}
FLAT = ("III", "AVL", "V2")  # dead leads of the second training record


def _write_folder(root: pathlib.Path, split_file: pathlib.Path) -> list:
    rows = testing.subset_split_file(csn_dataset_builder.Builder.SPLIT_FILE, split_file, PER_SPLIT)
    for i, row in enumerate(rows):
        signal = testing.ptbxl_signal(i + 1)
        if i == 1:
            signal[[STANDARD_LEADS.index(lead) for lead in FLAT]] = 0.0
        testing.write_cinc(root / row.record, signal, 500)
    # A record of every flat lead, added to the training split: skipped and named.
    dead = "WFDBRecords/99/990/JS99001"
    testing.write_cinc(root / dead, np.zeros((12, 5000)), 500)
    with open(split_file, "ab") as f:  # a second gzip member; readers see one file
        f.write(gzip.compress(f"train,{dead},{','.join(['0'] * 37 + ['1'])}\n".encode()))
    return rows


def _build(tmp_path, manual_dir, split_file, **kwargs):
    builder = tfds.builder("csn", data_dir=str(tmp_path / "tfds"), split_file=str(split_file), num_workers=1, **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("csn")
    rows = _write_folder(tmp / "ecg-arrhythmia", tmp / "splits.csv.gz")
    return tmp, rows


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
    tmp, _ = folder
    return _build(tmp_path_factory.mktemp("tfds"), tmp / "ecg-arrhythmia", tmp / "splits.csv.gz")


def test_splits_labels_and_sentence_shapes(built, folder):
    _, rows = folder
    assert {s: built.info.splits[s].num_examples for s in PER_SPLIT} == PER_SPLIT
    meta = built.info.metadata
    assert list(meta["classes"]) == ["diagnosis"] and len(meta["classes"]["diagnosis"]) == 38
    assert meta["classes"]["diagnosis"][:3] == ["AQW", "UW", "SR"]
    assert meta["sentence"]["max_len"] == 256 and meta["sentence"]["token_len"] == 96 and meta["sentence"]["fs"] == 100
    labels = {labelled.record_number(row.record): row.labels for row in rows}
    for source in built.as_data_source().values():
        for example in source:
            assert example["words"].shape == (256, 96)
            assert example["lead_ids"].shape == example["time_ids"].shape == (256,)
            assert example["num_words"] > 0
            np.testing.assert_array_equal(example["diagnosis"], labels[int(example["record_id"])])


def test_flat_leads_are_left_out_and_an_all_flat_record_is_skipped(built, folder):
    _, rows = folder
    meta = built.info.metadata
    assert meta["flat_leads"]["by_lead"] == dict.fromkeys(FLAT, 1)
    assert meta["flat_leads"]["records"] == [{"record": rows[1].record, "leads": list(FLAT)}]
    assert meta["skipped"]["total"] == 1
    (skip,) = meta["skipped"]["records"]
    assert skip["record"] == "WFDBRecords/99/990/JS99001" and "every lead is flat" in skip["message"]
    train = {int(e["record_id"]): e for e in built.as_data_source()["train"]}
    example = train[labelled.record_number(rows[1].record)]
    used = set(example["lead_ids"][: example["num_words"]].tolist())
    assert used == {STANDARD_LEADS.index(lead) + 1 for lead in STANDARD_LEADS if lead not in FLAT}


def test_stored_sentence_is_the_tokenizers(built, folder):
    tmp, rows = folder
    amp = built.info.metadata["amplitude"]
    record = records.load_record(tmp / "ecg-arrhythmia" / rows[0].record)
    assert record.fs == 500
    expected = (
        sentence_corpus.SentenceSpec()
        .make_tokenizer()
        .tokenize((record.signal - amp["mean"]) / amp["std"], record.fs, lead_names=record.lead_names)
    )
    stored = {int(e["record_id"]): e for e in built.as_data_source()["train"]}[labelled.record_number(rows[0].record)]
    np.testing.assert_array_equal(stored["lead_ids"], expected.lead_ids)
    np.testing.assert_array_equal(stored["time_ids"], expected.time_ids)
    np.testing.assert_allclose(stored["words"].astype(np.float32), expected.words, rtol=1e-3, atol=1e-3)


def test_mat_record_and_the_same_signal_as_wfdb_dat_give_the_same_sentence(tmp_path):
    signal = testing.ptbxl_signal(3)
    testing.write_cinc(tmp_path / "JS00003", signal, 500)
    testing.write_wfdb(tmp_path / "JS00003_dat", signal, 500)
    mat, dat = records.load_record(tmp_path / "JS00003"), records.load_record(tmp_path / "JS00003_dat")
    np.testing.assert_array_equal(mat.signal, dat.signal)
    tokenizer = sentence_corpus.SentenceSpec().make_tokenizer()
    a = tokenizer.tokenize(mat.signal, mat.fs, lead_names=mat.lead_names)
    b = tokenizer.tokenize(dat.signal, dat.fs, lead_names=dat.lead_names)
    for field in ("words", "lead_ids", "time_ids"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_missing_folder_and_records_are_named_in_one_line(tmp_path, folder):
    tmp, _ = folder
    with pytest.raises(errors.DatasetLayoutError, match=r"missing WFDBRecords/\. Put the extracted PhysioNet") as e:
        _build(tmp_path, tmp_path, tmp / "splits.csv.gz")
    assert "\n" not in str(e.value)
    (tmp_path / "WFDBRecords").mkdir()
    with pytest.raises(errors.DatasetLayoutError, match=r"lacks 10 of the 10 records .*e\.g\. WFDBRecords/") as e:
        _build(tmp_path, tmp_path, tmp / "splits.csv.gz")
    assert "\n" not in str(e.value)


def test_a_folder_that_does_not_exist_is_named_in_one_line(tmp_path, folder):
    tmp, _ = folder
    with pytest.raises(
        errors.DatasetLayoutError, match=r"CSN folder .*nowhere does not exist\. Put the extracted"
    ) as e:
        _build(tmp_path, tmp_path / "nowhere", tmp / "splits.csv.gz")
    assert "\n" not in str(e.value)
