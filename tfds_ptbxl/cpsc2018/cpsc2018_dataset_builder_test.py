"""The `cpsc2018` builder on a small folder in the challenge's own layout (real PTB-XL signals)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from heartlang_jax import errors
from heartlang_jax.ecg import records, sentence_corpus
from tfds_ptbxl import labelled, testing
from tfds_ptbxl.cpsc2018 import cpsc2018_dataset_builder

PER_SPLIT = {"train": 4, "validation": 2, "test": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """TrainingSet1/2/3 of original `.mat` files; one record in the CinC 2020 form; one 15 s and
    one 6 s record (the tokenizer uses the first 10 s; a shorter record gives fewer beats)."""
    tmp = tmp_path_factory.mktemp("cpsc")
    rows = testing.subset_split_file(cpsc2018_dataset_builder.Builder.SPLIT_FILE, tmp / "splits.csv.gz", PER_SPLIT)
    root = tmp / "cpsc2018"
    for i, row in enumerate(rows):
        signal = testing.ptbxl_signal(i + 1)
        if i == 2:
            signal = np.concatenate([signal, signal[:, :2500]], axis=1)
        if i == 3:
            signal = signal[:, :3000]
        if i == 4:
            testing.write_cinc(root / "WFDB" / row.record, signal, 500)
        else:
            testing.write_cpsc_original(root / f"TrainingSet{1 + i % 3}" / row.record, signal)
    return tmp, rows


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
    tmp, _ = folder
    builder = tfds.builder(
        "cpsc2018", data_dir=str(tmp_path_factory.mktemp("tfds")), split_file=str(tmp / "splits.csv.gz"), num_workers=1
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp / "cpsc2018")))
    return builder


def test_splits_labels_and_sentence_shapes(built, folder):
    _, rows = folder
    assert {s: built.info.splits[s].num_examples for s in PER_SPLIT} == PER_SPLIT
    meta = built.info.metadata
    assert meta["classes"] == {"rhythm": ["AFIB", "VPC", "NORM", "1AVB", "CRBBB", "STE", "PAC", "CLBBB", "STD"]}
    assert meta["skipped"]["total"] == 0 and meta["flat_leads"]["total"] == 0
    assert meta["sentence"]["leads"][0] == "I" and meta["sentence"]["detector"] == "multilead"
    labels = {labelled.record_number(row.record): row.labels for row in rows}
    for source in built.as_data_source().values():
        for example in source:
            assert example["words"].shape == (256, 96) and example["num_words"] > 0
            np.testing.assert_array_equal(example["rhythm"], labels[int(example["record_id"])])


def test_long_and_short_records_follow_the_tokenizers_duration_rule(built, folder):
    tmp, rows = folder
    train = {int(e["record_id"]): e for e in built.as_data_source()["train"]}
    long, short = train[labelled.record_number(rows[2].record)], train[labelled.record_number(rows[3].record)]
    assert long["time_ids"].max() == 10
    assert short["time_ids"].max() == 6
    amp = built.info.metadata["amplitude"]
    record = records.load_record(tmp / "cpsc2018" / "TrainingSet3" / rows[2].record)
    assert record.fs == 500 and record.signal.shape == (12, 7500)
    expected = (
        sentence_corpus.SentenceSpec()
        .make_tokenizer()
        .tokenize((record.signal - amp["mean"]) / amp["std"], record.fs, lead_names=record.lead_names)
    )
    np.testing.assert_array_equal(long["time_ids"], expected.time_ids)
    np.testing.assert_allclose(long["words"].astype(np.float32), expected.words, rtol=1e-3, atol=1e-3)


def test_original_and_cinc_files_read_alike(tmp_path):
    signal = testing.ptbxl_signal(2)
    testing.write_cpsc_original(tmp_path / "A0001", signal)
    testing.write_cinc(tmp_path / "cinc" / "A0001", signal, 500)
    original, cinc = records.load_record(tmp_path / "A0001"), records.load_record(tmp_path / "cinc" / "A0001")
    assert original.lead_names == cinc.lead_names and original.fs == cinc.fs == 500
    np.testing.assert_allclose(original.signal, cinc.signal, atol=1e-3)


def test_a_foreign_mat_is_a_record_error_naming_it(tmp_path):
    import scipy.io

    scipy.io.savemat(tmp_path / "A0002.mat", {"val": np.zeros((12, 100), np.int16)})
    with pytest.raises(records.RecordError, match=r"A0002: no header .*A0002.hea, and .* is not an original CPSC 2018"):
        records.load_record(tmp_path / "A0002")


def test_missing_records_are_named_in_one_line(tmp_path, folder):
    tmp, _ = folder
    builder = tfds.builder("cpsc2018", data_dir=str(tmp_path), split_file=str(tmp / "splits.csv.gz"), num_workers=1)
    with pytest.raises(
        errors.DatasetLayoutError, match=r"lacks 8 of the 8 records .*e\.g\. A\d{4}, .*Put the CPSC 2018"
    ) as e:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))
    assert "\n" not in str(e.value)
