"""The bundled sample's splits and labels, and the grain pipeline's determinism and resumability."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from heartlang_jax.data import bundled_sample_dir, input_pipeline
from tfds_ptbxl.ptbxl import metadata as ptbxl


def test_bundled_sample_splits_and_label_dims(bundled_builder):
    splits = {s: bundled_builder.info.splits[s].num_examples for s in ("train", "validation", "test")}
    assert splits == {"train": 353, "validation": 81, "test": 66}
    example = bundled_builder.as_data_source()["train"][0]
    dims = {task: example[task].shape for task in ptbxl.TASKS}
    assert dims == {"superdiagnostic": (5,), "subdiagnostic": (23,), "form": (19,), "rhythm": (12,)}
    assert example["words"].shape == (256, 96)
    assert bundled_builder.info.metadata["skipped"]["total"] == 0


def _rhythm_codes_from_csv():
    with open(bundled_sample_dir() / "scp_statements.csv", newline="") as f:
        rows = list(csv.reader(f))
    column = rows[0].index("rhythm")
    return {row[0] for row in rows[1:] if row[column] == "1.0"}


def test_task_filter_keeps_exactly_the_labelled_records(bundled_sources):
    rhythm = _rhythm_codes_from_csv()
    expected = sum(
        1 for row in ptbxl.read_database(bundled_sample_dir()) if row.strat_fold <= 8 and rhythm & set(row.scp_codes)
    )
    kept = input_pipeline.labelled_indices(bundled_sources["train"], "rhythm")
    assert len(kept) == expected
    assert all(bundled_sources["train"][int(i)]["rhythm"].any() for i in kept)
    assert len(input_pipeline.labelled_indices(bundled_sources["train"], None)) == 353


def _first_batches(dataset, n):
    it = iter(dataset.to_iter_dataset())
    return [next(it) for _ in range(n)]


def test_same_seed_same_batches_and_other_seed_differs(bundled_sources):
    src = bundled_sources["train"]
    a = _first_batches(input_pipeline.train_dataset(src, global_batch=8, seed=3), 3)
    b = _first_batches(input_pipeline.train_dataset(src, global_batch=8, seed=3), 3)
    c = _first_batches(input_pipeline.train_dataset(src, global_batch=8, seed=4), 3)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a[0]["index"], c[0]["index"])


def test_iterator_state_resumes_the_same_batches(bundled_sources):
    dataset = input_pipeline.train_dataset(bundled_sources["train"], global_batch=16, seed=0)
    it = iter(dataset.to_iter_dataset())
    for _ in range(30):  # past the first epoch (353 // 16 = 22 batches)
        next(it)
    state = it.get_state()
    expected = [next(it)["index"] for _ in range(3)]
    resumed = iter(dataset.to_iter_dataset())
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["index"], want)


def test_epochs_are_reshuffled_and_cover_every_example(bundled_sources):
    dataset = input_pipeline.train_dataset(bundled_sources["train"], global_batch=1, seed=0)
    it = iter(dataset.to_iter_dataset())
    first = [int(next(it)["index"][0]) for _ in range(353)]
    second = [int(next(it)["index"][0]) for _ in range(353)]
    assert sorted(first) == sorted(second) == list(range(353))
    assert first != second


def test_label_fractions_are_seeded_subsets():
    indices = np.arange(1000)
    one = input_pipeline.label_fraction_subset(indices, 0.1, seed=0)
    assert len(one) == 100 and set(one) <= set(indices)
    np.testing.assert_array_equal(one, input_pipeline.label_fraction_subset(indices, 0.1, seed=0))
    assert not np.array_equal(one, input_pipeline.label_fraction_subset(indices, 0.1, seed=1))
    assert len(input_pipeline.label_fraction_subset(indices, 0.01, seed=0)) == 10
    with pytest.raises(ValueError, match="label_fraction"):
        input_pipeline.label_fraction_subset(indices, 0.0, seed=0)


def test_a_label_fraction_of_windowed_records_chooses_records_with_all_their_windows():
    indices = np.arange(100, 400)  # 300 windows of 120 records (1 to 4 windows each), records interleaved
    records = np.random.default_rng(0).integers(0, 120, 300)
    records[:120] = np.arange(120)  # every record appears
    chosen = input_pipeline.label_fraction_subset(indices, 0.1, seed=3, records=records)
    kept = set(records[np.isin(indices, chosen)])
    assert len(kept) == 12  # 10% of the records
    np.testing.assert_array_equal(chosen, indices[np.isin(records, list(kept))])  # each with all its windows
    # one window per record: exactly the plain choice (the released protocol's)
    plain = indices[np.sort(np.random.default_rng(3).choice(300, size=30, replace=False))]
    np.testing.assert_array_equal(input_pipeline.label_fraction_subset(indices, 0.1, seed=3), plain)
    np.testing.assert_array_equal(input_pipeline.label_fraction_subset(indices, 0.1, 3, np.arange(300) + 7), plain)


def test_hosts_get_disjoint_shards(bundled_sources):
    """Two hosts each read their half of every global batch of 4: one epoch (88 batches) covers
    352 of the 353 records, each read by exactly one host."""
    src = bundled_sources["train"]
    seen = []
    for host in range(2):
        ds = input_pipeline.train_dataset(src, global_batch=4, seed=0, rows=slice(2 * host, 2 * host + 2))
        it = iter(ds.to_iter_dataset())
        seen.append({int(i) for _ in range(352 // 4) for i in next(it)["index"]})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 352


def test_eval_batches_cover_each_labelled_example_once(bundled_sources):
    src = bundled_sources["validation"]
    batches = list(input_pipeline.eval_batches(src, global_batch=16, task="superdiagnostic"))
    assert {b["words"].shape for b in batches} == {(16, 256, 96)}
    real = np.concatenate([b["index"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(np.sort(real), input_pipeline.labelled_indices(src, "superdiagnostic"))
    assert batches[-1]["labels"][~batches[-1]["mask"]].sum() == 0
