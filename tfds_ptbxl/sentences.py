"""What every ECG-sentence builder here shares: features, info metadata, storage, build log.

Each dataset (`ptbxl`, `cpsc2018`, `csn`, `mimic_iv_ecg`) stores the same sentence features, so a
loader and a model read any of them alike, plus its own label tasks. Its info metadata holds:

  - `classes`: {task: [class names]}; its keys are the dataset's tasks, each a multi-hot feature
    named after the task ({} for an unlabelled dataset);
  - `sentence`: the sentence spec (`SentenceSpec.to_dict()`: leads, max_len, token_len, fs,
    detector, ...), so downstream code reads the sentence shape from the dataset;
  - `amplitude`: {"mean", "std", "fitted_on"}, the standardization fitted on its own train split;
  - `skipped`: {"total", "by_reason", "records"}, every record that gave no sentence, and why;
  - `flat_leads`: {"total", "by_lead", "records"}, records kept without their flat (dead) leads.

Data flows one way: records -> tokenizer -> sentence_corpus -> these builders -> the loader
(`heartlang_jax.data.input_pipeline`) -> the stages. Nothing here imports the loader or a stage.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Literal

import numpy as np
import tensorflow_datasets as tfds

from heartlang_jax.ecg import filters, sentence_corpus
from heartlang_jax.ecg import tokenizer as tokenizer_lib
from heartlang_jax.ecg.records import STANDARD_LEADS
from heartlang_jax.ecg.sentence_spec import SentenceSpec

# Examples kept in `metadata["flat_leads"]["records"]`; the counts cover every record.
MAX_LISTED_FLAT_RECORDS = 1000
DEFAULT_FILE_FORMAT = "array_record"


@dataclasses.dataclass
class BuilderConfig(tfds.core.BuilderConfig):
    """Which leads form the sentence, which QRS detector cuts the beats and which band-pass (if
    any) comes first (non-PTB-XL builders)."""

    leads: tuple[str, ...] = STANDARD_LEADS
    detector: Literal["multilead", "xqrs"] = "multilead"
    filter: filters.BandPass | None = None
    resampler: Literal["poly", "fft"] = "poly"

    @property
    def spec(self) -> SentenceSpec:
        # the spec's lengths: 256 x 96
        return SentenceSpec(leads=self.leads, detector=self.detector, filter=self.filter, resampler=self.resampler)


RELEASED_CONFIG = "released"


def released_config(dataset: str, config_class=BuilderConfig):
    """The builder config `released`: the released code's tokenization (XQRS on lead I, 12 leads)
    of records band-passed as the released preprocessing of `dataset` does (filters.RELEASED_FILTERS)."""
    band = filters.RELEASED_FILTERS[dataset]
    what = (
        "no band-pass, as released" if band is None else f"{band.low:g}-{band.high:g} Hz band-pass first, as released"
    )
    # The released MIMIC-IV, CSN and CPSC 2018 scripts resample 500 -> 100 Hz by FFT (their
    # `resample_signals`); the released PTB-XL data are its 100 Hz files, CSV data are yours.
    fft = {"resampler": "fft"} if dataset in ("mimic_iv_ecg", "csn", "cpsc2018") else {}
    return config_class(
        name=RELEASED_CONFIG,
        detector="xqrs",
        filter=band,
        **fft,
        description=f"The released code's preprocessing: all 12 leads, XQRS on lead I, {what}.",
    )


_LISTED_MISSING = 5


def check_missing_records(
    dataset: str, root: os.PathLike, missing: Sequence[str], total: int, allow_missing: bool, how: str = ""
) -> None:
    """The one rule for a partial copy of a dataset, in every builder: refuse by default, naming
    what is missing; with `allow_missing` (`data.allow_missing_records`) build what is there and
    log every missing record by name."""
    if not missing:
        return
    if not allow_missing:
        from heartlang_jax.errors import DatasetLayoutError  # the error main.py prints as one line

        listed = ", ".join(missing[:_LISTED_MISSING]) + (", ..." if len(missing) > _LISTED_MISSING else "")
        raise DatasetLayoutError(
            f"{dataset} folder {root} lacks {len(missing)} of the {total} records (e.g. {listed}); complete the "
            f"download, or build from what is there with --config.data.allow_missing_records=True. {how}".strip()
        )
    logging.warning(
        "%s folder %s lacks %d of its %d records; building without them", dataset, root, len(missing), total
    )
    for record in missing:
        logging.warning("%s: record %s is missing from %s; left out", dataset, record, root)


def with_default_file_format(kwargs: dict) -> dict:
    """array_record unless the caller names a format: TFDS's default, tfrecord, needs TensorFlow
    (which this project does not install) and fails only at the end of the first split."""
    if kwargs.get("file_format") is None:
        kwargs["file_format"] = DEFAULT_FILE_FORMAT
    return kwargs


def manual_root(dl_manager, download_config) -> pathlib.Path:
    """The manual_dir the user named (else TFDS's default, `<download_dir>/manual`), without
    `dl_manager.manual_dir`'s check, whose multi-line message names nothing of the layout: each
    builder checks the folder itself and says what is missing in one line."""
    given = download_config.manual_dir if download_config is not None else None
    return pathlib.Path(os.fspath(given or os.path.join(os.fspath(dl_manager.download_dir), "manual")))


def sentence_features(spec: SentenceSpec) -> dict:
    """The sentence features; words are stored as float16 (half the disk; the loader casts)."""
    return {
        "words": tfds.features.Tensor(shape=(spec.max_len, spec.token_len), dtype=np.float16),
        "lead_ids": tfds.features.Tensor(shape=(spec.max_len,), dtype=np.uint8),
        "time_ids": tfds.features.Tensor(shape=(spec.max_len,), dtype=np.uint8),
        "num_words": np.int32,
    }


def task_features(classes: Mapping[str, Sequence[str]]) -> dict:
    return {
        task: tfds.features.Tensor(
            shape=(len(names),),
            dtype=np.uint8,
            doc=f"Multi-hot {task} labels; class names in info.metadata['classes']['{task}'].",
        )
        for task, names in classes.items()
    }


def sentence_fields(sentence: tokenizer_lib.EcgSentence) -> dict:
    with np.errstate(over="ignore"):  # an overflow is the check below, not a warning
        words = sentence.words.astype(np.float16)
    if not np.isfinite(words).all():  # tokenize_records skips such records; never store an inf
        raise ValueError("a sentence's words overflow float16; it must be skipped before it is stored")
    return {
        "words": words,
        "lead_ids": sentence.lead_ids.astype(np.uint8),
        "time_ids": sentence.time_ids.astype(np.uint8),
        "num_words": sentence.num_words,
    }


def base_metadata(classes: Mapping[str, Sequence[str]], spec: SentenceSpec) -> tfds.core.MetadataDict:
    return tfds.core.MetadataDict(classes={t: list(c) for t, c in classes.items()}, sentence=spec.to_dict())


class BuildLog:
    """Fills `metadata["skipped"]` and `metadata["flat_leads"]` as records stream past, and logs
    one line per record naming it. `id_field` names the record key in the lists."""

    def __init__(self, metadata: dict, id_field: str = "record"):
        self._metadata = metadata
        self._id_field = id_field
        metadata["skipped"] = {"total": 0, "by_reason": {}, "records": []}
        metadata["flat_leads"] = {"total": 0, "by_lead": {}, "records": []}

    def skip(self, key: Hashable, error: sentence_corpus.SkipReason) -> None:
        logging.warning("Skipping %s=%s: %s", self._id_field, key, error.message)
        skipped = self._metadata["skipped"]
        skipped["total"] += 1
        by_reason = collections.Counter(skipped["by_reason"])
        by_reason[error.kind] += 1
        skipped["by_reason"] = dict(by_reason)
        skipped["records"].append({self._id_field: key, "kind": error.kind, "message": error.message})

    def sentence(self, key: Hashable, sentence: tokenizer_lib.EcgSentence) -> None:
        """Counts the flat leads a kept sentence was cut without."""
        if not sentence.flat_leads:
            return
        logging.warning("%s=%s: flat leads %s left out", self._id_field, key, ", ".join(sentence.flat_leads))
        flat = self._metadata["flat_leads"]
        flat["total"] += 1
        by_lead = collections.Counter(flat["by_lead"])
        by_lead.update(sentence.flat_leads)
        flat["by_lead"] = dict(by_lead)
        if len(flat["records"]) < MAX_LISTED_FLAT_RECORDS:
            flat["records"].append({self._id_field: key, "leads": list(sentence.flat_leads)})

    def merge(self, skipped: Sequence[tuple[Hashable, sentence_corpus.SkipReason]], flat: Sequence) -> None:
        """Replays a chunk's log (from a resumed build's checkpoint)."""
        for key, reason in skipped:
            self.skip(key, reason)
        for key, leads in flat:
            # Only flat_leads of a replayed sentence is read; its arrays went to the chunk file.
            self.sentence(key, tokenizer_lib.EcgSentence(None, None, None, 0, flat_leads=tuple(leads)))  # type: ignore[arg-type]
