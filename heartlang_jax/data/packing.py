"""No compute on padding in VQ-HBR and pre-training: length-bucketed batches (issue 19).

A sentence is a suffix-padded row of max_len words; on the bundled train split 56% of the
positions were real words. Here each global batch holds sentences of similar length and is
cut to a bucket length just above its longest sentence, so the encoder and the LM head run on
~90% real words. Packing several sentences into one row was the alternative; bucketing was
chosen because it changes nothing a sentence sees: a row is still one sentence at positions
0..n-1 (RoPE, lead and time ids, the circular token conv, the per-sentence mask ratio), the
cuDNN path keeps its sequence lengths (cuDNN in JAX takes no segment ids), and the cost is one
compiled step per bucket length (max_len / bucket_step of them at most).

How the batches are grouped (`LengthGroupedOrder`, a random-access stream for grain): the stream
is the usual one (each epoch a fresh permutation of the training examples, epochs back to back),
cut into windows of `window` global batches; each window is sorted by length, split into its
global batches, and those batches are shuffled. Each window therefore has every sentence of
its span of the stream once, as before; only which sentences share a batch changes. Every host
computes the same order from (seed, lengths), so all hosts agree on each batch's bucket.

The bucket of a batch is the smallest multiple of `bucket_step` greater than its longest
sentence (so every sentence still ends with a padding word, onto which the circular token conv
wraps, as at full length), or max_len.

The functions are pure (numpy in, numpy out); the pipeline's hook is `train_dataset(...,
lengths=...)` (data/input_pipeline.py, through `BucketedBatches`), which yields each host's rows plus `bucket_len`, and the
stages' `prepare_batch`, which calls `trim`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

# Keys of a batch whose second axis is the word axis (cut by `trim`).
WORD_AXIS_KEYS = ("words", "lead_ids", "time_ids", "targets")
BUCKET_KEY = "bucket_len"


def bucket_length(longest: int, step: int, max_len: int) -> int:
    """The row length for a batch whose longest sentence has `longest` real words."""
    if step <= 0:
        return max_len
    return min(max_len, (longest // step + 1) * step)


def bucket_lengths(lengths: np.ndarray, step: int, max_len: int) -> np.ndarray:
    """Row length of each sentence bucketed alone (for the benchmark's per-sentence bound)."""
    return np.array([bucket_length(int(n), step, max_len) for n in np.asarray(lengths)])


def trim(batch: Mapping[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """The batch with its word axis cut to `length` (padding only: the caller's bucket)."""
    out = dict(batch)
    out.pop(BUCKET_KEY, None)
    for key in WORD_AXIS_KEYS:
        if key in out:
            out[key] = out[key][:, :length]
    return out


def real_lengths(source: Sequence, indices: np.ndarray | None = None, chunk: int = 4096) -> np.ndarray:
    """Real words (lead id != 0) of the examples `indices` (default: all) of a source, in order;
    read `chunk` rows at a time from a source that gathers (`gather(indices, fields)`)."""
    indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
    gather = getattr(source, "gather", None)
    if not callable(gather) or not getattr(source, "gathers", True):
        return np.array([int(np.count_nonzero(np.asarray(source[int(i)]["lead_ids"]))) for i in indices], np.int32)
    out = np.empty(len(indices), np.int32)
    for begin in range(0, len(indices), chunk):
        ids = gather(indices[begin : begin + chunk], ("lead_ids",))["lead_ids"]
        out[begin : begin + chunk] = np.count_nonzero(ids, axis=1)
    return out


class LengthGroupedOrder(Sequence):
    """Item i of the training stream as [source index, bucket length of its global batch].

    `indices` are the source indices trained on, `lengths` the real words of every source
    example (indexed by source index). The stream is `length` items long (default: about 10^12,
    for grain's random access; no run reads that far). `shard`: this order is shard `shard` of
    a split cut into host shards (`input_pipeline.HostShards`); its epochs are permuted with a
    seed of their own, while the shuffle of each window's batches is the same for every shard,
    so batch b of every shard holds the same length band of its window.
    """

    def __init__(
        self,
        indices: np.ndarray,
        lengths: np.ndarray,
        *,
        seed: int,
        global_batch: int,
        window: int,
        step: int,
        max_len: int,
        length: int = 10**12,
        shard: int | None = None,
    ):
        self.indices = np.asarray(indices, np.int64)
        self.shard = shard
        self.lengths = np.asarray(lengths)
        self.seed, self.global_batch, self.window = seed, global_batch, max(1, window)
        self.step, self.max_len, self.length = step, max_len, length

    def __len__(self) -> int:
        return self.length

    def _epoch(self, epoch: int) -> np.ndarray:
        key = [self.seed, epoch] if self.shard is None else [self.seed, epoch, self.shard]
        return np.random.default_rng(key).permutation(self.indices)

    @functools.lru_cache(maxsize=4)  # noqa: B019  # a few windows per iterator; freed with it
    def group(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Window `number`: its items in stream order [window * B] and each batch's bucket [window]."""
        size = self.window * self.global_batch
        n = len(self.indices)
        positions = np.arange(number * size, (number + 1) * size)
        epochs = positions // n
        order = np.empty(size, np.int64)
        for epoch in np.unique(epochs):
            where = epochs == epoch
            order[where] = self._epoch(int(epoch))[positions[where] % n]
        order = order[np.argsort(self.lengths[order], kind="stable")]
        batches = order.reshape(self.window, self.global_batch)
        batches = batches[np.random.default_rng([self.seed, number, 1]).permutation(self.window)]
        buckets = np.array([bucket_length(int(self.lengths[b].max()), self.step, self.max_len) for b in batches])
        return batches.reshape(-1), buckets

    def batch(self, b: int) -> np.ndarray:
        """Global batch `b` as [global batch, 2] rows (source index, bucket length of the batch)."""
        number, first = divmod(int(b), self.window)
        items, buckets = self.group(number)
        rows = items[first * self.global_batch : (first + 1) * self.global_batch]
        return np.stack([rows, np.full(len(rows), buckets[first])], axis=1)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]  # int items only
        b, row = divmod(int(i), self.global_batch)
        return self.batch(b)[row]


class BucketedBatches(Sequence):
    """Global batch b of `order` -> `order.batch(b)`: a random-access source of whole batches, as
    the unbucketed pipeline's `ShuffledBatches`."""

    def __init__(self, order: LengthGroupedOrder):
        self.order = order

    def __len__(self) -> int:
        return self.order.length // self.order.global_batch

    def __getitem__(self, b: int) -> np.ndarray:  # type: ignore[override]  # int items only
        return self.order.batch(b)


def bucketed_fraction(order: LengthGroupedOrder, num_batches: int) -> tuple[float, float, float]:
    """Over the first `num_batches` global batches of `order`: the fraction of computed encoder
    positions that are real words, the same for the LM head (round(0.5 n) masked words of
    ceil(0.5 L) rows), and the mean bucket length."""
    real = computed = masked = head = 0.0
    buckets = []
    for b in range(num_batches):
        items = order.batch(b)
        length = int(items[0, 1])
        n = order.lengths[items[:, 0]]
        real += n.sum()
        computed += length * len(n)
        masked += np.round(0.5 * n).sum()
        head += np.ceil(0.5 * length) * len(n)
        buckets.append(length)
    return real / computed, masked / head, float(np.mean(buckets))
