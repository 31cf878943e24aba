"""PTB-XL as pre-tokenized, fixed-length ECG sentences (HeartLang's QRSTokenizer).

Every example is one 10 s, 12-lead record turned into a sentence of up to 256 heartbeat "words" of
96 samples at 100 Hz, with lead and time ids, the patient and fold, and multi-hot labels of the
four PTB-XL benchmark tasks. Amplitudes are standardized with one global mean and std fitted on
the training folds, as the PTB-XL benchmark does; both are stored in the dataset info
(`info.metadata["amplitude"]`) so inference applies the same.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Literal

import numpy as np
import tensorflow_datasets as tfds

from heartlang_jax.data import bundled_sample_dir
from heartlang_jax.ecg import sentence_corpus
from heartlang_jax.ecg.filters import BandPass
from heartlang_jax.ecg.records import STANDARD_LEADS
from heartlang_jax.ecg.sentence_spec import SentenceSpec
from tfds_ptbxl import sentences
from tfds_ptbxl.ptbxl import metadata as ptbxl
from tfds_ptbxl.ptbxl import physionet


@dataclasses.dataclass
class BuilderConfig(tfds.core.BuilderConfig):
    """Which leads form the sentence, which of PTB-XL's two sampling rates is read, which QRS
    detector cuts the beats."""

    leads: tuple[str, ...] = STANDARD_LEADS
    sampling_rate: int = 100  # the files read; sentences are always at 100 Hz
    detector: Literal["multilead", "xqrs"] = "multilead"  # "xqrs": the paper's and released code's
    filter: BandPass | None = None  # a band-pass before tokenizing (heartlang_jax.ecg.filters)

    @property
    def spec(self) -> SentenceSpec:
        # the spec's lengths: 256 x 96
        return SentenceSpec(leads=self.leads, detector=self.detector, filter=self.filter)


class Builder(tfds.core.GeneratorBasedBuilder):
    """PTB-XL 1.0.3 as HeartLang ECG sentences."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "ECG sentences from the QRSTokenizer, standardized amplitudes, 4 label tasks."}

    @classmethod
    def tasks(cls) -> tuple[str, ...]:
        return ptbxl.TASKS

    BUILDER_CONFIGS = [
        BuilderConfig(name="leads12", description="All 12 standard leads, from the 100 Hz files."),
        BuilderConfig(name="leads1", leads=("I",), description="Lead I only (released code's 1-lead subset)."),
        BuilderConfig(name="leads3", leads=("I", "II", "V2"), description="Leads I, II, V2."),
        BuilderConfig(name="leads6", leads=("I", "II", "III", "AVR", "AVL", "AVF"), description="Limb leads."),
        BuilderConfig(
            name="leads12_500hz",
            sampling_rate=500,
            description="All 12 leads from the 500 Hz files, resampled to 100 Hz by the tokenizer.",
        ),
        BuilderConfig(
            name="leads12_xqrs",
            detector="xqrs",
            description="All 12 leads, beats found by XQRS on lead I (the paper's and released code's tokenization).",
        ),
        sentences.released_config("ptbxl", BuilderConfig),
    ]
    DEFAULT_CONFIG_NAME = "leads12"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Optional. Put the extracted PTB-XL {ptbxl.PTBXL_VERSION} folder ({ptbxl.DOWNLOAD_URL}) in
    `manual_dir`, so that it holds ptbxl_database.csv, scp_statements.csv and records100/ (and
    records500/ for the 500 Hz config). Without a manual_dir the builder downloads it from PhysioNet
    and checks every file against PhysioNet's SHA256SUMS.txt.
    """

    def __init__(
        self,
        *,
        download_url: str | None = None,
        num_workers: int | None = None,
        allow_missing_records: bool = False,
        **kwargs,
    ):
        """`download_url` replaces PhysioNet (a mirror, or a local copy served over http/file).
        `allow_missing_records`: build without the records the folder lacks (logged by name)."""
        self._allow_missing = allow_missing_records
        self._download_url = download_url or os.environ.get("PTBXL_DOWNLOAD_URL") or ptbxl.DOWNLOAD_URL
        self._num_workers = num_workers or os.cpu_count() or 1
        self._manual_dir_given: str | None = None
        super().__init__(**sentences.with_default_file_format(kwargs))

    def _info(self) -> tfds.core.DatasetInfo:
        labels = ptbxl.LabelSpace.from_statements(bundled_sample_dir() / "scp_statements.csv")
        classes = {t: labels.classes[t] for t in ptbxl.TASKS}
        features = {
            **sentences.sentence_features(self.builder_config.spec),
            "ecg_id": np.int32,
            "patient_id": np.int32,
            "strat_fold": np.int32,
            **sentences.task_features(classes),
        }
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=None,
            homepage="https://physionet.org/content/ptb-xl/1.0.3/",
            metadata=sentences.base_metadata(classes, self.builder_config.spec),
        )

    def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
        # TFDS gives every build a default manual_dir; only one the user named counts as "given".
        self._manual_dir_given = download_config.manual_dir and os.fspath(download_config.manual_dir)
        return super()._download_and_prepare(dl_manager, download_config)

    def _source_dir(self, dl_manager) -> pathlib.Path:
        rate = self.builder_config.sampling_rate
        if self._manual_dir_given:
            return ptbxl.check_layout(self._manual_dir_given, rate)
        return physionet.download_ptbxl(
            pathlib.Path(dl_manager.download_dir) / f"ptb-xl-{ptbxl.PTBXL_VERSION}",
            url=self._download_url,
            sampling_rate=rate,
        )

    def _split_generators(self, dl_manager):
        root = self._source_dir(dl_manager)
        rows = ptbxl.read_database(root)
        rate = self.builder_config.sampling_rate
        present = {row.ecg_id for row in rows if (root / (row.filename(rate) + ".hea")).is_file()}
        missing = [row.filename(rate) for row in rows if row.ecg_id not in present]
        sentences.check_missing_records(self.name, root, missing, len(rows), self._allow_missing)
        rows = [row for row in rows if row.ecg_id in present]
        for split, folds in ptbxl.SPLIT_FOLDS.items():  # TFDS fails obscurely on an empty split
            if not ptbxl.fold_rows(rows, split):
                raise ValueError(f"{root / 'ptbxl_database.csv'} has no record in the {split} split (folds {folds})")
        labels = ptbxl.LabelSpace.from_statements(root / "scp_statements.csv")
        if dict(labels.classes) != {t: tuple(c) for t, c in self.info.metadata["classes"].items()}:
            raise ValueError(f"{root / 'scp_statements.csv'} differs from PTB-XL {ptbxl.PTBXL_VERSION}'s class lists")
        spec = self.builder_config.spec
        rate = self.builder_config.sampling_rate
        train = ptbxl.fold_rows(rows, "train")
        mean, std = sentence_corpus.amplitude_moments(
            [root / row.filename(rate) for row in train], spec, self._num_workers
        )
        self.info.metadata["amplitude"] = {"mean": mean, "std": std, "fitted_on": "train (folds 1-8)"}
        self._log = sentences.BuildLog(self.info.metadata, id_field="ecg_id")
        logging.info(
            "Amplitude standardization fitted on %d training records: mean=%.5f std=%.5f", len(train), mean, std
        )
        return {
            split: self._generate_examples(root, ptbxl.fold_rows(rows, split), labels, spec, mean, std)
            for split in ptbxl.SPLIT_FOLDS
        }

    def _generate_examples(self, root, rows, labels, spec, mean, std):
        rate = self.builder_config.sampling_rate
        by_id = {row.ecg_id: row for row in rows}
        results = sentence_corpus.tokenize_records(
            [(row.ecg_id, root / row.filename(rate)) for row in rows], spec, mean, std, self._num_workers
        )
        kept = 0
        for ecg_id, sentence, error in results:
            if error is not None:
                self._log.skip(ecg_id, error)
                continue
            kept += 1
            self._log.sentence(ecg_id, sentence)
            row = by_id[ecg_id]
            example = {
                **sentences.sentence_fields(sentence),
                "ecg_id": row.ecg_id,
                "patient_id": row.patient_id,
                "strat_fold": row.strat_fold,
            }
            for task in ptbxl.TASKS:
                example[task] = labels.multi_hot(row.scp_codes, task)
            yield ecg_id, example
        if not kept:
            folds = sorted({row.strat_fold for row in rows})
            raise ValueError(f"all {len(rows)} records of strat_fold {folds} were skipped (see the warnings above)")
