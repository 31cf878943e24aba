"""Host shards: each host caches and reads only its shards of a training split, and the global
batches are the same for 1, 2 or 4 hosts (simulated here by each host's rows of a global batch;
tests/test_multihost.py runs 2 real processes with `train_shards=2`)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from heartlang_jax.data import input_pipeline, packing, split_cache

BATCH = 16
SHARDS = 4  # 4 rows of every global batch per shard


@pytest.fixture(scope="module")
def train(bundled_builder, tmp_path_factory):
    """The bundled train split (353 examples) in a data_dir of its own, so its caches are this test's."""
    data_dir = tmp_path_factory.mktemp("sharded") / "ptbxl"
    shutil.copytree(bundled_builder.data_dir, data_dir, ignore=shutil.ignore_patterns(split_cache.CACHE_DIR))
    return split_cache.cached_sources(tfds.builder_from_directory(str(data_dir)))["train"]


def _rows(host: int, hosts: int) -> slice:
    return slice(host * BATCH // hosts, (host + 1) * BATCH // hosts)


def _global_batches(train, hosts: int, batches, **kwargs) -> list[dict]:
    """Each global batch as the hosts' rows put back together in process order."""
    per_host = []
    for host in range(hosts):
        shards = input_pipeline.host_shards(train, SHARDS, BATCH, _rows(host, hosts))
        dataset = input_pipeline.train_dataset(shards, global_batch=BATCH, seed=7, **kwargs)
        per_host.append([dataset[b] for b in batches])
    out = []
    for i in range(len(batches)):
        parts = [host[i] for host in per_host]
        out.append(
            {key: np.concatenate([p[key] for p in parts]) if parts[0][key].ndim else parts[0][key] for key in parts[0]}
        )
        if packing.BUCKET_KEY in parts[0]:  # every host cuts the batch to the same length
            assert len({int(p[packing.BUCKET_KEY]) for p in parts}) == 1
    return out


def test_one_two_and_four_hosts_see_the_same_batches_each_reading_its_own_shards(train):
    batches = (0, 1, 5, 30)  # 30 is past every shard's first epoch (88 or 89 examples, 4 a batch)
    one = _global_batches(train, 1, batches)
    bounds = input_pipeline.shard_bounds(len(train), SHARDS)
    for hosts in (2, 4):
        many = _global_batches(train, hosts, batches)
        for x, y in zip(one, many):
            assert x.keys() == y.keys()
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{hosts} hosts: {key}")
    for batch in one:  # rows [4s, 4s + 4) come from shard s
        shard_of_row = np.searchsorted(bounds, batch["index"], side="right") - 1
        np.testing.assert_array_equal(shard_of_row, np.repeat(np.arange(SHARDS), BATCH // SHARDS))
        np.testing.assert_array_equal(batch["words"], train.gather(batch["index"], ("words",))["words"])

    # the first 22 batches hold 22 x 4 distinct examples of every shard (an epoch of the smallest)
    seen = np.stack([b["index"] for b in _global_batches(train, 1, range(22))])
    for s in range(SHARDS):
        shard = seen[:, 4 * s : 4 * s + 4].ravel()
        assert len(np.unique(shard)) == 88 and shard.min() >= bounds[s] and shard.max() < bounds[s + 1]


def test_a_host_caches_only_its_rows_and_cannot_read_the_others(train):
    bounds = input_pipeline.shard_bounds(len(train), SHARDS)
    shards = input_pipeline.host_shards(train, SHARDS, BATCH, _rows(1, 2))  # host 1 of 2: shards 2 and 3
    assert shards.owned == range(2, 4)
    lo, hi = int(bounds[2]), int(bounds[4])
    _ = input_pipeline.train_dataset(shards, global_batch=BATCH, seed=0)[0]
    cached = shards.source
    assert cached.rows == (lo, hi) and cached.directory != train.directory
    words = np.load(cached.directory / "words.npy")
    assert words.shape[0] == hi - lo  # its rows only, on disk
    whole = train.gather(np.arange(lo, hi), ("words",))["words"]
    np.testing.assert_array_equal(words, whole)
    with pytest.raises(IndexError, match="outside the cached"):
        shards.gather(np.array([lo - 1]), ("words",))
    # a single row outside is read from the TFDS split itself (shapes), equal to the cached one
    np.testing.assert_array_equal(shards[0]["words"], train[0]["words"])
    assert input_pipeline.cached_bytes(cached) == (hi - lo) * input_pipeline.cached_bytes(train) // len(train)


def test_length_buckets_agree_across_hosts_and_cover_each_batch(train):
    lengths = packing.real_lengths(train)
    np.testing.assert_array_equal(  # the gathered count equals the count row by row
        lengths[:40], [np.count_nonzero(train[i]["lead_ids"]) for i in range(40)]
    )
    kwargs = dict(lengths=lengths, bucket_step=16, bucket_window=4)
    batches = range(12)
    one = _global_batches(train, 1, batches, **kwargs)
    two = _global_batches(train, 2, batches, **kwargs)
    for x, y in zip(one, two):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
        longest = int(lengths[x["index"]].max())
        assert x[packing.BUCKET_KEY] == packing.bucket_length(longest, 16, 256)
    assert len({int(b[packing.BUCKET_KEY]) for b in one}) > 1  # batches of several lengths
    whole = input_pipeline.host_shards(train, SHARDS, BATCH, slice(0, BATCH))
    np.testing.assert_array_equal(whole.real_lengths(), lengths)  # one process: its rows are all


def test_evaluation_covers_the_split_once_and_is_the_same_on_two_hosts(train):
    def one_pass(hosts):
        per_host = []
        for host in range(hosts):
            shards = input_pipeline.host_shards(train, SHARDS, BATCH, _rows(host, hosts))
            per_host.append(list(input_pipeline.eval_batches(shards, global_batch=BATCH)))
        return [
            {k: np.concatenate([h[i][k] for h in per_host]) for k in per_host[0][i]} for i in range(len(per_host[0]))
        ]

    one, two = one_pass(1), one_pass(2)
    assert len(one) == len(two) == 23  # ceil(89 / 4)
    for x, y in zip(one, two):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    real = np.concatenate([b["index"][b["mask"]] for b in one])
    np.testing.assert_array_equal(np.sort(real), np.arange(len(train)))


def test_shard_counts_a_host_cannot_read_whole_are_refused(train):
    with pytest.raises(ValueError, match="train_shards=3 must divide the global batch of 16"):
        input_pipeline.host_shards(train, 3, BATCH)
    with pytest.raises(ValueError, match="whole shards of 4 rows.*multiple of the process count"):
        input_pipeline.host_shards(train, SHARDS, BATCH, slice(0, 6))
    with pytest.raises(ValueError, match="shards of 22, fewer than the 32 rows"):
        input_pipeline.host_shards(train, 16, 512, slice(0, 512))


def test_automatic_shards_only_for_a_cache_too_large_to_copy_to_every_host(train, monkeypatch):
    assert input_pipeline.auto_shards(train, 256) == 1  # 353 examples: 17 MB
    monkeypatch.setattr(input_pipeline, "WHOLE_CACHE_BYTES", 1 << 20)
    assert input_pipeline.auto_shards(train, 256) == 64
    assert input_pipeline.auto_shards(train, 96) == 32  # the largest power of two dividing it
