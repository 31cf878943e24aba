"""The `ptbxl` builder on `dummy_data/` (7 good records, 5 bad ones), from a folder and by download.

TFDS's own `DatasetBuilderTestCase` imports TensorFlow, which this project does not install, so
these are plain pytest tests with the same intent: build for real, then read every split back.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import pathlib
import shutil
import threading

import numpy as np
import pytest

from heartlang_jax import errors
from heartlang_jax.data import bundled_sample_dir
from heartlang_jax.ecg import sentence_corpus
from heartlang_jax.ecg.records import load_record
from tfds_ptbxl.ptbxl import metadata as ptbxl
from tfds_ptbxl.ptbxl import physionet, ptbxl_dataset_builder

DUMMY = pathlib.Path(__file__).parent / "dummy_data"
EXPECTED_SPLITS = {"train": 5, "validation": 1, "test": 1}
EXPECTED_SKIPS = {6: "RecordError", 7: "RecordError", 8: "BadSignalError", 9: "BadSignalError", 10: "NoBeatsError"}


def _build(tmp_path, **kwargs):
    builder = ptbxl_dataset_builder.Builder(
        data_dir=str(tmp_path / "tfds"), file_format="array_record", num_workers=1, **kwargs.pop("builder", {})
    )
    import tensorflow_datasets as tfds

    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(**kwargs))
    return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("manual"), manual_dir=str(DUMMY))


def test_splits_and_skipped_records(built):
    assert {s: built.info.splits[s].num_examples for s in EXPECTED_SPLITS} == EXPECTED_SPLITS
    skipped = built.info.metadata["skipped"]
    assert skipped["total"] == len(EXPECTED_SKIPS)
    assert {r["ecg_id"]: r["kind"] for r in skipped["records"]} == EXPECTED_SKIPS
    for record in skipped["records"]:  # every message names its record
        assert f"{record['ecg_id']:05d}_lr" in record["message"]


def test_examples_match_direct_tokenization(built):
    source = built.as_data_source()["train"]
    meta = built.info.metadata
    mean, std = meta["amplitude"]["mean"], meta["amplitude"]["std"]
    tokenizer = sentence_corpus.SentenceSpec().make_tokenizer()
    by_id = {int(source[i]["ecg_id"]): source[i] for i in range(len(source))}
    assert sorted(by_id) == [1, 2, 3, 4, 5]
    record = load_record(DUMMY / "records100/00000/00003_lr")
    expected = tokenizer.tokenize((record.signal - mean) / std, record.fs, lead_names=record.lead_names)
    stored = by_id[3]
    assert stored["words"].dtype == np.float16
    np.testing.assert_array_equal(stored["lead_ids"], expected.lead_ids)
    np.testing.assert_array_equal(stored["time_ids"], expected.time_ids)
    assert stored["num_words"] == expected.num_words
    # float16 storage: relative error of standardized amplitudes stays below 1e-3.
    np.testing.assert_allclose(stored["words"].astype(np.float32), expected.words, rtol=1e-3, atol=1e-3)


def test_amplitude_fit_uses_training_records_only(built):
    signals = [load_record(DUMMY / f"records100/00000/{i:05d}_lr").signal.astype(np.float64) for i in (1, 2, 3, 4, 5)]
    flat = np.concatenate([s.ravel() for s in signals])
    amp = built.info.metadata["amplitude"]
    assert amp["mean"] == pytest.approx(flat.mean(), rel=1e-6, abs=1e-9)
    assert amp["std"] == pytest.approx(flat.std(), rel=1e-6)


def test_labels_follow_scp_statements(built):
    labels = ptbxl.LabelSpace.from_statements(DUMMY / "scp_statements.csv")
    classes = built.info.metadata["classes"]
    assert {t: len(c) for t, c in classes.items()} == {
        "superdiagnostic": 5,
        "subdiagnostic": 23,
        "form": 19,
        "rhythm": 12,
    }
    source = built.as_data_source()["train"]
    rows = {row.ecg_id: row for row in ptbxl.read_database(DUMMY)}
    for i in range(len(source)):
        example = source[i]
        for task in ptbxl.TASKS:
            np.testing.assert_array_equal(example[task], labels.multi_hot(rows[int(example["ecg_id"])].scp_codes, task))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served_copy(tmp_path):
    """dummy_data served over HTTP on loopback, with PhysioNet's SHA256SUMS.txt and LICENSE.txt."""
    root = tmp_path / "physionet"
    shutil.copytree(DUMMY, root)
    shutil.copy(bundled_sample_dir() / "LICENSE.txt", root)
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    (root / physionet.CHECKSUM_FILE).write_text("\n".join(lines) + "\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_path_with_checksums(tmp_path, served_copy):
    _, url = served_copy
    builder = _build(tmp_path, builder={"download_url": url})
    assert {s: builder.info.splits[s].num_examples for s in EXPECTED_SPLITS} == EXPECTED_SPLITS
    downloaded = tmp_path / "tfds" / "downloads" / f"ptb-xl-{ptbxl.PTBXL_VERSION}"
    assert (downloaded / "records100/00000/00001_lr.dat").is_file()
    assert not list(downloaded.rglob("*.tmp"))


def test_download_rejects_a_corrupted_file(tmp_path, served_copy):
    root, url = served_copy
    (root / "records100/00000/00002_lr.dat").write_bytes(b"tampered")
    with pytest.raises(physionet.DownloadError, match="checksum mismatch.*00002_lr.dat"):
        physionet.download_ptbxl(tmp_path / "dl", url=url)
    assert not (tmp_path / "dl/records100/00000/00002_lr.dat").exists()


@pytest.mark.parametrize("remove", ["ptbxl_database.csv", "records100"])
def test_incomplete_folder_says_what_to_put_where(tmp_path, remove):
    folder = tmp_path / "ptbxl"
    shutil.copytree(DUMMY, folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(errors.DatasetLayoutError, match=f"missing {remove}.*Put the extracted PTB-XL"):
        _build(tmp_path, manual_dir=str(folder))


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(errors.DatasetLayoutError, match="does not exist"):
        _build(tmp_path, manual_dir=str(tmp_path / "nowhere"))


def test_info_declares_tasks_and_sentence_spec(built):
    meta = built.info.metadata
    assert list(meta["classes"]) == list(ptbxl.TASKS)
    for task, names in meta["classes"].items():
        assert built.info.features[task].shape == (len(names),)
    assert meta["sentence"] == sentence_corpus.SentenceSpec().to_dict()
    assert meta["sentence"]["detector"] == "multilead"
    assert built.info.features["words"].shape == (meta["sentence"]["max_len"], meta["sentence"]["token_len"])
    assert set(meta["amplitude"]) == {"mean", "std", "fitted_on"}
    assert meta["flat_leads"] == {"total": 0, "by_lead": {}, "records": []}


def test_plain_tfds_call_registers_and_builds_array_record_without_tensorflow(tmp_path):
    """`import tfds_ptbxl.ptbxl` registers the builder, and TFDS's plain calls (no file_format)
    build array_record: tfrecord, TFDS's default, would need TensorFlow at the end of a split."""
    import subprocess
    import sys

    script = f"""
import sys
import tensorflow_datasets as tfds
import tfds_ptbxl.ptbxl
builder = tfds.builder("ptbxl", data_dir={str(tmp_path)!r})
builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir={str(DUMMY)!r}))
assert "tensorflow" not in sys.modules, "TensorFlow was imported"
assert str(builder.info.file_format.value) == "array_record", builder.info.file_format
source = tfds.data_source("ptbxl", data_dir={str(tmp_path)!r}, split="train")
print(len(source), sorted(builder.info.metadata["sentence"]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-1].split()[0] == str(EXPECTED_SPLITS["train"])


def test_xqrs_config_tokenizes_with_the_papers_detector(tmp_path):
    builder = _build(tmp_path, manual_dir=str(DUMMY), builder={"config": "leads12_xqrs"})
    meta = builder.info.metadata
    assert meta["sentence"]["detector"] == "xqrs"
    source = builder.as_data_source()["train"]
    stored = {int(source[i]["ecg_id"]): source[i] for i in range(len(source))}
    record = load_record(DUMMY / "records100/00000/00003_lr")
    tokenizer = sentence_corpus.SentenceSpec(detector="xqrs").make_tokenizer()
    expected = tokenizer.tokenize(
        (record.signal - meta["amplitude"]["mean"]) / meta["amplitude"]["std"], record.fs, lead_names=record.lead_names
    )
    np.testing.assert_array_equal(stored[3]["time_ids"], expected.time_ids)
    np.testing.assert_allclose(stored[3]["words"].astype(np.float32), expected.words, rtol=1e-3, atol=1e-3)
