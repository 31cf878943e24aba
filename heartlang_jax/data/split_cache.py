"""A decoded, memory-mapped copy of a TFDS split's columns, so batches are gathered, not decoded.

Reading a TFDS example decodes its proto (about 1.3 ms of CPU for a 256 x 96 sentence); a
global batch of 256 then costs a third of a second, far below what one accelerator consumes.
`ColumnSource` decodes a split once into one `.npy` file per fixed-shape feature (words stay
float16, ids uint8, labels uint8) and serves rows by fancy indexing a memory map (about 5 ms
for 256 rows). It is also an ordinary source: `len()` and `source[i]` (a dict of the row's
columns) work as the TFDS source's do, so code that reads examples one by one keeps working.

The TFDS dataset stays the source of truth. The cache folder's name is a hash of the dataset's
name, builder config, version and split and of its files (names, sizes, modification times)
and `dataset_info.json`, so a rebuilt or changed dataset is never read from a stale cache.
Each column is written to a temporary name and renamed, and a manifest written last marks a
complete cache; hosts that share a disk may build the same cache at once (they write the same
bytes). The cache lives beside the dataset's files when they are local, else (a `gs://`
dataset) under the local temporary directory, since a memory map needs a local file.

The cache is built on first use (a split that is never read is never decoded). A source may
hold a range of its split's rows only (`restricted(lo, hi)`): its cache folder carries the
range and holds those rows alone. That is how each host caches only its shards of a large
training split (`input_pipeline.host_shards`); otherwise a host caches whole splits, since every
host draws its rows from one global permutation (see README, "Input pipeline").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

FORMAT = 1  # bumped when the layout of a cache folder changes
CACHE_DIR = "columns"
MANIFEST = "manifest.json"
# Evaluation batches are kept in memory after their first assembly when a host's share of them
# is under this size; larger splits are gathered again at each evaluation (still a memory map).
EVAL_MEMO_BYTES = 1 << 30
_BUILD_CHUNK = 512  # examples decoded per read while building


def _fixed_columns(example: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of the numeric features of one decoded example (strings are left out)."""
    columns = {}
    for name, value in example.items():
        value = np.asarray(value)
        if value.dtype.kind in "biuf":
            columns[name] = (value.shape, value.dtype)
    return columns


def row_bytes(spec: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """Bytes of one cached row, from `_fixed_columns`' {name: (shape, dtype)}."""
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in spec.values())


def dataset_fingerprint(data_dir: str | os.PathLike, name: str, config: str, version: str, split: str) -> str:
    """A hash of what identifies a split's contents: the dataset's identity and its files' stats."""
    directory = epath.Path(data_dir)
    files = sorted(p for p in directory.iterdir() if f"-{split}." in p.name or p.name == "dataset_info.json")
    stats = []
    for path in files:
        stat = path.stat()
        stats.append([path.name, int(stat.length), int(stat.mtime)])
    key = json.dumps({"format": FORMAT, "dataset": [name, config, version], "split": split, "files": stats})
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def cache_root(data_dir: str | os.PathLike) -> epath.Path:
    """Where a dataset's column caches live: beside its files when local, else in the local temp dir."""
    text = os.fspath(data_dir)
    if "://" in text:
        return (
            epath.Path(tempfile.gettempdir()) / "heartlang_jax_columns" / hashlib.sha1(text.encode()).hexdigest()[:12]
        )
    return epath.Path(text) / CACHE_DIR


class ColumnSource:
    """A TFDS split served from its memory-mapped column cache (built on first use).

    Indices are the split's. With `rows=(lo, hi)` only that range is cached and gathered
    (`gather` of a row outside it is an IndexError); `source[i]` of such a row is decoded from
    the TFDS source, for the few single rows read to learn a shape.
    """

    def __init__(
        self,
        tfds_source: Sequence,
        directory: str | os.PathLike,
        *,
        description: str = "",
        rows: tuple[int, int] | None = None,
    ):
        self._tfds = tfds_source
        self.directory = epath.Path(directory)
        self.description = description or os.fspath(directory)
        lo, hi = rows if rows is not None else (0, len(tfds_source))
        if not 0 <= lo <= hi <= len(tfds_source):
            raise ValueError(f"{self.description}: rows [{lo}, {hi}) are not within the split's {len(tfds_source)}")
        self.rows = (int(lo), int(hi))
        self._columns: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._memo: dict = {}

    @classmethod
    def of(cls, builder, split: str, tfds_source: Sequence | None = None) -> ColumnSource:
        """The cached split of a TFDS builder (its `as_data_source()[split]` by default)."""
        data_dir = builder.data_dir
        info = builder.info
        config = builder.builder_config.name if builder.builder_config else ""
        key = dataset_fingerprint(data_dir, info.name, config, str(info.version), split)
        source = tfds_source if tfds_source is not None else builder.as_data_source()[split]
        return cls(source, cache_root(data_dir) / f"{split}-{key}", description=f"{info.name}/{config} {split}")

    def restricted(self, lo: int, hi: int) -> ColumnSource:
        """This split with only rows [lo, hi) cached (in a folder of their own); itself when that is all."""
        if (lo, hi) == (0, len(self._tfds)):
            return self
        return ColumnSource(
            self._tfds,
            self.directory.parent / f"{self.directory.name}-rows{lo}-{hi}",
            description=f"{self.description} rows [{lo}, {hi})",
            rows=(lo, hi),
        )

    def __len__(self) -> int:
        return len(self._tfds)

    def cached_bytes(self) -> int:
        """Bytes of its cache (built or not: from one decoded example)."""
        lo, hi = self.rows
        return 0 if hi == lo else (hi - lo) * row_bytes(_fixed_columns(self._tfds[lo]))

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        lo, hi = self.rows
        index = int(index)
        if not lo <= index < hi:
            example = self._tfds[index]
            return {name: np.asarray(example[name]) for name in _fixed_columns(example)}
        columns = self.columns()
        return {name: column[index - lo] for name, column in columns.items()}

    def columns(self) -> dict[str, np.ndarray]:
        """{feature: memory-mapped array [N, ...]}, building the cache first if needed."""
        if self._columns is None:
            with self._lock:
                if self._columns is None:
                    self._columns = self._open() or self._build()
        return self._columns

    def column(self, name: str) -> np.ndarray:
        return self.columns()[name]

    def gather(self, indices: np.ndarray, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """The rows `indices` of each of `fields`, stacked, in their stored dtypes."""
        indices = np.asarray(indices, np.int64)
        lo, hi = self.rows
        if len(indices) and (indices.min() < lo or indices.max() >= hi):
            raise IndexError(f"{self.description}: rows outside the cached [{lo}, {hi}) asked for")
        columns = self.columns()
        return {name: np.asarray(columns[name][indices - lo]) for name in fields}

    def memo(self, key, make):
        """`make()` once per `key` for this source (e.g. its evaluation batches)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def _open(self) -> dict[str, np.ndarray] | None:
        manifest = self.directory / MANIFEST
        if not manifest.exists():
            return None
        spec = json.loads(manifest.read_text())
        lo, hi = self.rows
        if (
            spec.get("format") != FORMAT
            or spec.get("num_examples") != len(self._tfds)
            or spec.get("rows", [0, len(self._tfds)]) != [lo, hi]
        ):
            return None
        columns = {name: np.load(os.fspath(self.directory / f"{name}.npy"), mmap_mode="r") for name in spec["columns"]}
        if any(len(c) != hi - lo for c in columns.values()):
            return None
        return columns

    def _build(self) -> dict[str, np.ndarray]:
        """Decodes each example of its rows once into one `.npy` per column (temporary names, then renamed)."""
        start = time.perf_counter()
        lo, hi = self.rows
        n = hi - lo
        if n == 0:
            raise ValueError(f"{self.description}: no examples to cache")
        self.directory.mkdir(parents=True, exist_ok=True)
        spec = _fixed_columns(self._tfds[lo])
        suffix = f".tmp{os.getpid()}.{threading.get_ident()}"
        tmp_paths = {name: self.directory / f"{name}.npy{suffix}" for name in spec}
        arrays = {
            name: np.lib.format.open_memmap(os.fspath(tmp_paths[name]), mode="w+", dtype=dtype, shape=(n, *shape))
            for name, (shape, dtype) in spec.items()
        }
        read_many = getattr(self._tfds, "__getitems__", None)
        for begin in range(0, n, _BUILD_CHUNK):
            stop = min(begin + _BUILD_CHUNK, n)
            wanted = list(range(lo + begin, lo + stop))
            examples = read_many(wanted) if read_many else [self._tfds[i] for i in wanted]
            for name, array in arrays.items():
                array[begin:stop] = np.stack([np.asarray(e[name]) for e in examples])
        for name, array in arrays.items():
            array.flush()
            del array
            os.replace(os.fspath(tmp_paths[name]), os.fspath(self.directory / f"{name}.npy"))
        manifest = {
            "format": FORMAT,
            "num_examples": len(self._tfds),
            "rows": [lo, hi],
            "columns": sorted(spec),
            "source": self.description,
        }
        tmp = self.directory / f"{MANIFEST}{suffix}"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(os.fspath(tmp), os.fspath(self.directory / MANIFEST))
        logging.info(
            "cached the decoded columns of %s (%d examples, %.2f GB) in %s in %.1f s",
            self.description,
            n,
            n * row_bytes(spec) / 1e9,
            self.directory,
            time.perf_counter() - start,
        )
        columns = self._open()
        assert columns is not None
        return columns


def cached_sources(builder, sources: Mapping[str, Sequence] | None = None) -> dict[str, ColumnSource]:
    """{split: ColumnSource} of a TFDS builder (from its `as_data_source()` unless given)."""
    sources = builder.as_data_source() if sources is None else sources
    return {split: ColumnSource.of(builder, split, source) for split, source in sources.items()}
