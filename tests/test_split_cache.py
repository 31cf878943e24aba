"""The memory-mapped column cache: same rows and batches as the TFDS source, never stale."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from heartlang_jax.data import input_pipeline, split_cache


@pytest.fixture(scope="module")
def cached(bundled_builder):
    return split_cache.cached_sources(bundled_builder)


def test_rows_equal_the_tfds_rows(bundled_sources, cached):
    for split in ("train", "validation"):
        assert len(cached[split]) == len(bundled_sources[split])
        for i in (0, 7, len(bundled_sources[split]) - 1):
            want, got = bundled_sources[split][i], cached[split][i]
            for name, value in got.items():
                assert np.asarray(want[name]).dtype == value.dtype, name
                np.testing.assert_array_equal(value, want[name])
            assert {"words", "lead_ids", "time_ids", "rhythm"} <= set(got)
    assert cached["train"].column("words").dtype == np.float16


def test_gathered_batches_equal_example_by_example_batches(bundled_sources, cached):
    for task in (None, "rhythm"):
        slow = input_pipeline.train_dataset(bundled_sources["train"], global_batch=16, seed=5, task=task)
        fast = input_pipeline.train_dataset(cached["train"], global_batch=16, seed=5, task=task)
        for b in (0, 3, 40):  # 40 is past the first epoch
            x, y = slow[b], fast[b]
            assert x.keys() == y.keys()
            for key in x:
                assert x[key].dtype == y[key].dtype, key
                np.testing.assert_array_equal(x[key], y[key])
        assert fast[0]["words"].dtype == np.float16 and fast[0]["lead_ids"].dtype == np.uint8


def test_eval_batches_are_the_same_and_assembled_once(bundled_sources, cached, monkeypatch):
    slow = list(input_pipeline.eval_batches(bundled_sources["validation"], global_batch=32, task="superdiagnostic"))
    first = list(input_pipeline.eval_batches(cached["validation"], global_batch=32, task="superdiagnostic"))
    monkeypatch.setattr(input_pipeline, "_eval_batches", lambda *a: pytest.fail("assembled again"))
    second = list(input_pipeline.eval_batches(cached["validation"], global_batch=32, task="superdiagnostic"))
    assert len(slow) == len(first) == len(second) == 3  # 81 records, padded to 3 x 32
    for x, y, z in zip(slow, first, second):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
            np.testing.assert_array_equal(y[key], z[key])
    second[0]["targets"] = 1  # a caller's copy: the memo is untouched
    assert "targets" not in next(
        input_pipeline.eval_batches(cached["validation"], global_batch=32, task="superdiagnostic")
    )


def test_a_built_cache_is_reopened_and_a_changed_dataset_gets_a_new_one(bundled_builder, tmp_path, monkeypatch):
    data_dir = tmp_path / "dataset"
    shutil.copytree(bundled_builder.data_dir, data_dir, ignore=shutil.ignore_patterns(split_cache.CACHE_DIR))
    info = bundled_builder.info
    key = split_cache.dataset_fingerprint(data_dir, info.name, "leads12", str(info.version), "test")
    tfds_test = bundled_builder.as_data_source()["test"]
    built = split_cache.ColumnSource(tfds_test, split_cache.cache_root(data_dir) / f"test-{key}")
    words = np.array(built.column("words"))
    assert (built.directory / split_cache.MANIFEST).exists()
    assert not [p for p in os.listdir(built.directory) if ".tmp" in p]  # temporary names renamed

    monkeypatch.setattr(split_cache.ColumnSource, "_build", lambda self: pytest.fail("rebuilt"))
    again = split_cache.ColumnSource(tfds_test, built.directory)
    np.testing.assert_array_equal(again.column("words"), words)

    train_key = split_cache.dataset_fingerprint(data_dir, info.name, "leads12", str(info.version), "train")
    shard = next(p for p in data_dir.iterdir() if "-test." in p.name)
    os.utime(shard, (shard.stat().st_atime, shard.stat().st_mtime + 5))
    assert split_cache.dataset_fingerprint(data_dir, info.name, "leads12", str(info.version), "test") != key
    # another split's files are its own: its cache stays valid
    assert split_cache.dataset_fingerprint(data_dir, info.name, "leads12", str(info.version), "train") == train_key
    assert split_cache.cache_root("gs://bucket/tfds/ptbxl").is_relative_to(split_cache.tempfile.gettempdir())
