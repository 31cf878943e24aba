"""MIMIC-IV-ECG as HeartLang ECG sentences: unlabelled, for VQ-HBR and pre-training.

About 800,000 10 s, 12-lead ECGs at 500 Hz (PhysioNet `mimic-iv-ecg` 1.0), read in the dataset's
own layout: `record_list.csv` (its `path` column) and
`files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.{hea,dat}`.

Split (train / validation), as HeartLang's released preprocessing makes it: the rows of
`record_list.csv`, in file order, are cut into batches of 100,100 records; in each batch a
seeded shuffle (numpy `RandomState(seed).permutation`, seed 0, which is what scikit-learn's
`train_test_split(test_size=0.1, random_state=0)` draws) puts the first ceil(10%) in validation
and the rest in train. The released code drops a record whose file is missing before batching;
here such a record stays in place (so the split depends on `record_list.csv` alone) and is
skipped, logged and named, like any record that cannot be read.

Resumable and shardable: the build tokenizes records in chunks of `chunk_size` and checkpoints
each chunk (sentences, skips, flat leads) to `<data_dir>/downloads/mimic_iv_ecg_chunks/<key>/`
under a temporary name renamed when complete. A build interrupted after hours reruns with the
same command and tokenizes only the chunks not yet on disk; `prepare_chunks(part, num_parts)`
(CLI: `python -m tfds_ptbxl.mimic_iv_ecg.prepare_chunks`) fills every `num_parts`-th chunk, so
several processes or machines sharing the data_dir tokenize in parallel before the final
`download_and_prepare`, which then only writes the TFDS files. The key of the chunk folder hashes
the sentence spec, the amplitude standardization, the record list and the chunk size, so a
changed build never reads stale chunks. Delete the folder after the build to reclaim the disk
(about the dataset's size).

Amplitude standardization: one mean and std, fitted on a seeded sample of
`amplitude_fit_records` (20,000) training records; estimated from that many 12-lead records its
error is far below float16's resolution, and it saves reading the whole training split twice.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from heartlang_jax import atomic_file
from heartlang_jax.ecg import sentence_corpus
from heartlang_jax.errors import DatasetLayoutError
from tfds_ptbxl import sentences
from tfds_ptbxl.sentences import BuilderConfig

RELEASED_BATCH = 100_100  # records per batch of the released preprocessing
RELEASED_SEED = 0
VALIDATION_FRACTION = 0.1
SPLITS = ("train", "validation")


def released_split(num_records: int, batch: int = RELEASED_BATCH, seed: int = RELEASED_SEED) -> np.ndarray:
    """[num_records] bool, True for validation: the released 90/10 split (module docstring)."""
    validation = np.zeros(num_records, bool)
    for start in range(0, num_records, batch):
        n = min(batch, num_records - start)
        chosen = np.random.RandomState(seed).permutation(n)[: math.ceil(VALIDATION_FRACTION * n)]
        validation[start + chosen] = True
    return validation


@dataclasses.dataclass(frozen=True)
class RecordList:
    """The rows of `record_list.csv` the builder needs, as compact arrays (800,000 rows)."""

    subject_id: np.ndarray  # [N] int64
    study_id: np.ndarray  # [N] int64
    path: list[str]  # e.g. files/p1000/p10000032/s40689238/40689238 (no extension)

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.study_id.tobytes())
        h.update("\n".join(self.path).encode())
        return h.hexdigest()


def read_record_list(root: pathlib.Path) -> RecordList:
    path = root / "record_list.csv"
    subjects, studies, paths = [], [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"subject_id", "study_id", "path"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(sorted(missing))}; is this MIMIC-IV-ECG's record_list.csv?"
            )
        for line_no, row in enumerate(reader, start=2):
            try:
                subjects.append(int(row["subject_id"]))
                studies.append(int(row["study_id"]))
            except ValueError as e:
                raise ValueError(f"{path}, line {line_no}: {e}") from e
            paths.append(row["path"].strip())
    if not paths:
        raise ValueError(f"{path} lists no record")
    return RecordList(np.asarray(subjects, np.int64), np.asarray(studies, np.int64), paths)


def _tokenize(items, spec, mean, std, num_workers) -> Iterator:
    """The one call that tokenizes; a seam for tests that count or interrupt the work."""
    return sentence_corpus.tokenize_records(items, spec, mean, std, num_workers)


class Builder(tfds.core.GeneratorBasedBuilder):
    """MIMIC-IV-ECG as HeartLang ECG sentences (unlabelled), with the released 90/10 split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "ECG sentences from the QRSTokenizer, the released 90/10 split, chunked resumable build."}
    BUILDER_CONFIGS = [
        BuilderConfig(name="leads12", description="All 12 standard leads, resampled from 500 to 100 Hz."),
        BuilderConfig(
            name="leads12_xqrs",
            detector="xqrs",
            description="All 12 leads, beats found by XQRS on lead I (the paper's).",
        ),
        sentences.released_config("mimic_iv_ecg", BuilderConfig),
    ]
    DEFAULT_CONFIG_NAME = "leads12"

    @classmethod
    def tasks(cls) -> tuple[str, ...]:
        return ()  # unlabelled: for VQ-HBR and pre-training only

    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put the extracted PhysioNet MIMIC-IV-ECG 1.0 folder (https://physionet.org/content/mimic-iv-ecg/1.0/,
    credentialed access) in `manual_dir`, so that it holds record_list.csv and
    files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.hea and .dat.
    """

    def __init__(
        self,
        *,
        num_workers: int | None = None,
        chunk_size: int = 2_000,
        amplitude_fit_records: int = 20_000,
        split_batch: int = RELEASED_BATCH,
        allow_missing_records: bool = False,
        **kwargs,
    ):
        """`chunk_size`: records per checkpoint (2,000 sentences are ~100 MB in memory).
        `split_batch`: the released code's batch (keep it; smaller only for tests)."""
        self._num_workers = num_workers or os.cpu_count() or 1
        self._chunk_size = chunk_size
        self._amplitude_fit_records = amplitude_fit_records
        self._split_batch = split_batch
        self._allow_missing = allow_missing_records  # build without missing records (each logged)
        super().__init__(**sentences.with_default_file_format(kwargs))

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.builder_config.spec
        features = {**sentences.sentence_features(spec), "subject_id": np.int64, "study_id": np.int64}
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=None,
            homepage="https://physionet.org/content/mimic-iv-ecg/1.0/",
            metadata=sentences.base_metadata({}, spec),
        )

    # --- the plan: layout, split, amplitude, chunks ------------------------------------------

    def _check_layout(self, root: pathlib.Path) -> None:
        how = " ".join(self.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
        if not root.is_dir():
            raise DatasetLayoutError(f"MIMIC-IV-ECG folder {root} does not exist. {how}")
        missing = [name for name in ("record_list.csv", "files/") if not (root / name).exists()]
        if missing:
            raise DatasetLayoutError(f"MIMIC-IV-ECG folder {root} is incomplete: missing {', '.join(missing)}. {how}")

    def _plan(self, root: pathlib.Path, cache_root: pathlib.Path) -> dict:
        """Everything the chunks depend on; the amplitude fit is cached beside them."""
        self._check_layout(root)
        listing = read_record_list(root)
        # A missing record stays in its place in the split (skipped when tokenized) when allowed.
        missing = [p for p in listing.path if not (root / (p + ".hea")).is_file()]
        sentences.check_missing_records(self.name, root, missing, len(listing.path), self._allow_missing)
        is_validation = released_split(len(listing.path), self._split_batch)
        members = {"train": np.flatnonzero(~is_validation), "validation": np.flatnonzero(is_validation)}
        spec = self.builder_config.spec
        base = json.dumps(
            {"spec": spec.to_dict(), "records": listing.digest(), "split_batch": self._split_batch,
             "fit": self._amplitude_fit_records, "version": str(self.VERSION)}, sort_keys=True,
        )  # fmt: skip
        fit_file = cache_root / f"amplitude-{hashlib.sha256(base.encode()).hexdigest()[:16]}.json"
        if fit_file.is_file():
            amplitude = json.loads(fit_file.read_text())
        else:
            train = members["train"]
            sample = np.sort(
                np.random.RandomState(RELEASED_SEED).permutation(len(train))[: self._amplitude_fit_records]
            )
            paths = [root / listing.path[i] for i in train[sample]]
            mean, std = sentence_corpus.amplitude_moments(paths, spec, self._num_workers)
            amplitude = {"mean": mean, "std": std, "fitted_on": f"train, a seeded sample of {len(paths)} records"}
            atomic_file.atomic_write(fit_file, json.dumps(amplitude).encode())
        key = hashlib.sha256(f"{base}|{amplitude['mean']!r}|{amplitude['std']!r}|{self._chunk_size}".encode())
        chunk_dir = cache_root / f"{self.builder_config.name}-{key.hexdigest()[:16]}"
        chunks = [
            (split, index, idx[start : start + self._chunk_size])
            for split, idx in members.items()
            for index, start in enumerate(range(0, len(idx), self._chunk_size))
        ]
        return {"root": root, "listing": listing, "members": members, "spec": spec, "amplitude": amplitude,
                "chunk_dir": chunk_dir, "chunks": chunks}  # fmt: skip

    def _cache_root(self) -> pathlib.Path:
        return pathlib.Path(os.fspath(self.data_dir_root)) / "downloads" / "mimic_iv_ecg_chunks"

    # --- chunks ----------------------------------------------------------------------------------

    def prepare_chunks(self, manual_dir: str | os.PathLike, part: int = 0, num_parts: int = 1) -> int:
        """Tokenizes the chunks `part::num_parts` not yet on disk; returns how many it wrote."""
        if not 0 <= part < num_parts:
            raise ValueError(f"part must be in [0, {num_parts}), got {part}")
        plan = self._plan(pathlib.Path(manual_dir), self._cache_root())
        mine = [c for i, c in enumerate(plan["chunks"]) if i % num_parts == part]
        written = 0
        for _ in self._chunks(plan, mine):
            written += 1
        return written

    def _chunk_path(self, plan: dict, split: str, index: int) -> pathlib.Path:
        return plan["chunk_dir"] / f"{split}-{index:05d}.npz"

    def _chunks(self, plan: dict, chunks: Sequence) -> Iterator[dict]:
        """Yields each chunk's arrays, from its checkpoint or tokenized (and then checkpointed).

        The chunks to tokenize stream through one process pool, in order, so workers never wait
        on a chunk boundary; only one chunk's sentences are held at a time."""
        root, listing = plan["root"], plan["listing"]
        todo = [c for c in chunks if not self._chunk_path(plan, c[0], c[1]).is_file()]
        if len(todo) < len(chunks):
            logging.info(
                "Resuming: %d of %d chunks already tokenized in %s",
                len(chunks) - len(todo),
                len(chunks),
                plan["chunk_dir"],
            )
        items = ((int(i), root / listing.path[i]) for _, _, idx in todo for i in idx)
        amp = plan["amplitude"]
        results = _tokenize(items, plan["spec"], amp["mean"], amp["std"], self._num_workers) if todo else iter(())
        for split, index, idx in chunks:
            path = self._chunk_path(plan, split, index)
            if path.is_file():
                yield _load_chunk(path)
                continue
            chunk = _collect(results, len(idx), plan["spec"], listing)
            atomic_file.atomic_write(path, _chunk_bytes(chunk))
            yield chunk

    # --- TFDS ------------------------------------------------------------------------------------

    def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
        self._manual_root = sentences.manual_root(dl_manager, download_config)
        return super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager):
        plan = self._plan(self._manual_root, pathlib.Path(dl_manager.download_dir) / "mimic_iv_ecg_chunks")
        self.info.metadata["amplitude"] = plan["amplitude"]
        self._log = sentences.BuildLog(self.info.metadata, id_field="study_id")
        logging.info(
            "MIMIC-IV-ECG: %d train, %d validation records; amplitude mean=%.5f std=%.5f; chunks in %s",
            len(plan["members"]["train"]), len(plan["members"]["validation"]),
            plan["amplitude"]["mean"], plan["amplitude"]["std"], plan["chunk_dir"],
        )  # fmt: skip
        return {split: self._generate_examples(plan, split) for split in SPLITS}

    def _generate_examples(self, plan, split):
        kept = 0
        for chunk in self._chunks(plan, [c for c in plan["chunks"] if c[0] == split]):
            for study, reason in chunk["skipped"]:
                self._log.skip(study, sentence_corpus.SkipReason(**reason))
            flat = dict(chunk["flat"])  # [(study, leads), ...]
            for row, study in enumerate(chunk["study_id"]):
                study = int(study)
                if study in flat:
                    self._log.merge([], [(study, flat[study])])
                kept += 1
                yield (
                    study,
                    {
                        "words": chunk["words"][row],
                        "lead_ids": chunk["lead_ids"][row],
                        "time_ids": chunk["time_ids"][row],
                        "num_words": int(chunk["num_words"][row]),
                        "subject_id": int(chunk["subject_id"][row]),
                        "study_id": study,
                    },
                )
        if not kept:
            raise ValueError(
                f"all {len(plan['members'][split])} records of the {split} split were skipped (see the warnings above)"
            )


def _collect(results: Iterator, count: int, spec: sentence_corpus.SentenceSpec, listing: RecordList) -> dict:
    """The next `count` results as one chunk of arrays."""
    rows, skipped, flat = [], [], []
    for _ in range(count):
        index, sentence, error = next(results)
        study = int(listing.study_id[index])
        if error is not None:
            skipped.append((study, {"kind": error.kind, "message": error.message}))
            continue
        if sentence.flat_leads:
            flat.append((study, list(sentence.flat_leads)))
        rows.append((index, sentence))
    n = len(rows)
    chunk: dict[str, Any] = {
        "words": np.zeros((n, spec.max_len, spec.token_len), np.float16),
        "lead_ids": np.zeros((n, spec.max_len), np.uint8),
        "time_ids": np.zeros((n, spec.max_len), np.uint8),
        "num_words": np.zeros(n, np.int32),
        "subject_id": np.asarray([listing.subject_id[i] for i, _ in rows], np.int64),
        "study_id": np.asarray([listing.study_id[i] for i, _ in rows], np.int64),
        "skipped": skipped,
        "flat": flat,
    }
    for row, (_, sentence) in enumerate(rows):
        fields = sentences.sentence_fields(sentence)
        for name in ("words", "lead_ids", "time_ids", "num_words"):
            chunk[name][row] = fields[name]
    return chunk


def _chunk_bytes(chunk: dict) -> bytes:
    buf = io.BytesIO()
    log = json.dumps({"skipped": chunk["skipped"], "flat": chunk["flat"]})
    arrays = {k: v for k, v in chunk.items() if isinstance(v, np.ndarray)}
    np.savez(buf, log=np.frombuffer(log.encode(), np.uint8), **arrays)  # type: ignore[arg-type]  # stub: **arrays as allow_pickle
    return buf.getvalue()


def _load_chunk(path: pathlib.Path) -> dict:
    with np.load(path) as data:
        chunk = {k: data[k] for k in data.files if k != "log"}
        log = json.loads(data["log"].tobytes().decode())
    return {**chunk, "skipped": [tuple(x) for x in log["skipped"]], "flat": [tuple(x) for x in log["flat"]]}
