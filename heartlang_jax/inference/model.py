"""A trained run folder as one object: raw ECGs in, embeddings, words and predictions out.

    model = heartlang_jax.load("runs/demo/pretrain")       # a vqhbr, pretrain or finetune run
    vector = model.embed("ptb-xl/records100/00000/00001_lr")  # [hidden] float32
    vectors = model.embed_many(paths, batch_size=64)         # [N, hidden], with a progress bar
    model.predict(signal, fs=500, lead_names=names)          # {class name: probability}

Everything the model needs to read a raw record travels in the run folder's `model.json` (see
`model_info`): the sentence spec (leads, words, samples per word, rate, QRS detector) and the
amplitude standardization of its training data. A record is standardized `(x - mean) / std` and
tokenized exactly as the dataset builder does it (`sentence_corpus`), so the model sees the same
kind of sentence it was trained on.

The embedding is what the linear probe sees: the mean of the encoder's outputs over the real
(non-padding) words, or the CLS token for an encoder with learned positions
(`EcgClassifier.features`). For a VQ-HBR run it is the mean of the VQ-HBR encoder's outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys
from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx

from heartlang_jax import errors
from heartlang_jax.ecg import records, sentence_corpus
from heartlang_jax.ecg import tokenizer as tokenizer_lib
from heartlang_jax.ecg.sentence_spec import SentenceSpec
from heartlang_jax.inference import model_info
from heartlang_jax.models import EcgClassifier
from heartlang_jax.training import checkpointing

# A pre-training (or fine-tuning) run folder "carries its vocabulary" when this subfolder is a
# complete VQ-HBR run folder (model.json + checkpoints/): then `word_ids` works on it. Pre-training
# writes it (stages/pretrain.py, `carry_vocabulary`).
VOCABULARY_DIR = model_info.VOCABULARY_DIR
# Extensions that name a record's files; the record itself is the path without them.
RECORD_EXTENSIONS = (".hea", ".dat", ".mat")
# The training datasets store words as float16 (tfds_ptbxl/sentences.py, "the loader casts"), so
# every model was trained on float16-rounded words: inference rounds them the same way.
WORDS_STORAGE_DTYPE = np.float16
# Errors that mean "this record cannot be used", each naming the record.
RECORD_ERRORS = (records.RecordError, tokenizer_lib.TokenizerError)

EcgInput = Any  # a record path (str / PathLike), a records.Record, or an array [leads, samples]


class NotSupportedError(errors.HeartLangError, ValueError):
    """The run folder's kind of model cannot do what was asked (e.g. `predict` on a VQ-HBR run)."""


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One record as the model reads it, with where each word came from.

    Attributes:
      name: the record's name (from its header, or "<array>").
      words: [max_len, token_len] float32, standardized amplitudes rounded to float16 as the
        dataset stores them; rows past num_words are 0.
      lead_ids: [max_len] int32, STANDARD_LEADS index + 1; 0 marks padding.
      time_ids: [max_len] int32, the second of the word's QRS + 1; 0 marks padding.
      num_words: real words before the padding.
      fs: the rate of `signal` and `beats` (the tokenizer's rate, 100 Hz for PTB-XL runs).
      signal: [len(leads), samples] float32, the standardized signal the words were cut from
        (resampled to `fs`, cut to the tokenizer's duration, flat leads left out).
      leads: names of the rows of `signal`, in sentence order.
      beats: [num_beats] int64 sample indices (at `fs`) of the detected QRS complexes.
      beat_spans: [num_beats, 2] int64 [start, end) samples of `signal` each beat's words cover
        (the word holds them at offsets start - q + token_len // 2, ...).
      flat_leads: leads the record has but that were flat, so gave no words.
    """

    name: str
    words: np.ndarray
    lead_ids: np.ndarray
    time_ids: np.ndarray
    num_words: int
    fs: float
    signal: np.ndarray
    leads: tuple[str, ...]
    beats: np.ndarray
    beat_spans: np.ndarray
    flat_leads: tuple[str, ...] = ()

    @property
    def word_lead(self) -> np.ndarray:
        """[num_words] row of `signal` (index into `leads`) of each real word."""
        return np.arange(self.num_words) // max(len(self.beats), 1)

    @property
    def word_beat(self) -> np.ndarray:
        """[num_words] index into `beats` of each real word."""
        return np.arange(self.num_words) % max(len(self.beats), 1)


@dataclasses.dataclass(frozen=True)
class Reconstruction:
    """VQ-HBR's reconstruction of a record's real words.

    Attributes:
      sentence: the input sentence (see `Sentence`).
      words: [num_words, token_len] float32, the input words (standardized).
      reconstruction: [num_words, token_len] float32, the decoder's output for each word.
      word_ids: [num_words] int32, the vocabulary index each word was quantized to.
    """

    sentence: Sentence
    words: np.ndarray
    reconstruction: np.ndarray
    word_ids: np.ndarray

    @property
    def mse(self) -> float:
        """Mean squared error over the real words' samples (the VQ-HBR loss's reconstruction term)."""
        return float(np.mean(np.square(self.reconstruction - self.words))) if self.words.size else 0.0


def _sentence_fields(sentences: Sequence[Any], batch: int) -> tuple[np.ndarray, ...]:
    """(words [B, L, T], lead_ids [B, L], time_ids [B, L]); rows past len(sentences) repeat the
    last sentence, so a padded batch has no all-padding row and compiles to one shape."""
    rows = list(sentences) + [sentences[-1]] * (batch - len(sentences))
    return (
        np.stack([s.words for s in rows]),
        np.stack([s.lead_ids for s in rows]).astype(np.int32),
        np.stack([s.time_ids for s in rows]).astype(np.int32),
    )


def record_path(path: str | os.PathLike) -> pathlib.Path:
    """A record's path without extension ('x/00001_lr.hea' -> 'x/00001_lr')."""
    path = pathlib.Path(path)
    return path.with_suffix("") if path.suffix.lower() in RECORD_EXTENSIONS else path


class HeartLangModel:
    """A loaded run folder (see `load`). Methods take one ECG:

      - a record path: a WFDB record (`.hea` + `.dat`), a CinC record (`.hea` + `.mat`) or an
        original CPSC 2018 `.mat`, with or without its extension;
      - a `records.Record`;
      - an array [leads, samples] in mV with `fs=` (Hz) and `lead_names=` (None: the 12 standard
        leads in order).

    A record that cannot be read or tokenized raises `records.RecordError` or
    `tokenizer.TokenizerError`, one line naming the record, as the dataset builder logs it.
    """

    def __init__(
        self, info: model_info.ModelInfo, model: Any, step: int, path: str, vocabulary: HeartLangModel | None = None
    ):
        self.info = info
        self.step = step
        self.path = path
        self.model = model
        model.eval()  # no dropout
        self._vocabulary = vocabulary
        self.tokenizer = SentenceSpec.from_dict(info.sentence).make_tokenizer()
        self.amplitude_mean = float(info.amplitude["mean"])
        self.amplitude_std = float(info.amplitude["std"])
        graphdef, state = nnx.split(model)
        self._state = state

        def merged(fn):
            return jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))

        # What the linear probe reads: EcgClassifier.features needs only `self.encoder`, which every
        # kind has, so one definition serves all three.
        self._features = merged(lambda m, w, lead, t: EcgClassifier.features(m, w, lead, t))
        if info.kind == "vqhbr":
            self._word_ids = merged(lambda m, w, lead, t: m.word_ids(w, lead, t))

            def reconstruct(m, w, lead, t):
                out = m(w, lead, t, update_codebook=False)
                return out.reconstruction, out.indices

            self._reconstruct = merged(reconstruct)
        if info.kind == "finetune":
            self._logits = merged(lambda m, w, lead, t: m(w, lead, t))

    # ------------------------------------------------------------------ description

    @property
    def kind(self) -> str:
        """'vqhbr', 'pretrain' or 'finetune'."""
        return self.info.kind

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.info.class_names

    @property
    def hidden_dim(self) -> int:
        return int(self.model.encoder.config.hidden_dim)

    @property
    def num_codes(self) -> int | None:
        """Vocabulary size: of this VQ-HBR run, of the vocabulary it carries, or the one it was
        pre-trained on; None for a fine-tuned run without a vocabulary."""
        vocabulary = self._vocabulary_model(required=False)
        if vocabulary is not None:
            return int(vocabulary.model.quantizer.num_codes)
        size = self.info.model.get("vocab_size")
        return None if size is None else int(size)

    def __repr__(self) -> str:
        extra = f", task={self.info.task!r}, classes={len(self.class_names)}" if self.class_names else ""
        return (
            f"HeartLangModel(kind={self.kind!r}, path={self.path!r}, step={self.step}, hidden={self.hidden_dim}{extra})"
        )

    # ------------------------------------------------------------------ inputs

    def _signal(self, ecg: EcgInput, fs: float | None, lead_names: Sequence[str] | None, name: str | None):
        """(signal [leads, samples] float32 mV, fs, lead names or None, record name)."""
        if isinstance(ecg, (str, os.PathLike)):
            if fs is not None or lead_names is not None:
                raise ValueError(
                    f"record {ecg}: fs and lead_names come from the record's header; pass them only with an array"
                )
            ecg = records.load_record(record_path(ecg), max_seconds=self.tokenizer.max_duration_s)
        if isinstance(ecg, records.Record):
            return ecg.signal, ecg.fs, ecg.lead_names, name or ecg.name
        name = name or "<array>"
        if fs is None:
            raise ValueError(f"record {name}: an array ECG needs its sampling rate, fs=<Hz>")
        signal = np.asarray(ecg, dtype=np.float32)  # records hold float32 mV, so arrays do too
        if signal.ndim == 1:
            signal = signal[None]
        records.check_range(signal, name)  # as every record read from a file
        return signal, fs, None if lead_names is None else tuple(lead_names), name

    def _standardized(self, signal: np.ndarray) -> np.ndarray:
        # Exactly as the dataset builders: float32 mV, Python-float mean and std.
        return sentence_corpus.standardize(signal, self.amplitude_mean, self.amplitude_std)

    def tokenize(
        self,
        ecg: EcgInput,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        *,
        name: str | None = None,
    ) -> tokenizer_lib.EcgSentence:
        """The record's `tokenizer.EcgSentence`, standardized, cut and stored as in the dataset."""
        signal, fs, lead_names, name = self._signal(ecg, fs, lead_names, name)
        return self._tokenize_standardized(self._standardized(signal), fs, lead_names, name)

    def _tokenize_standardized(
        self, standardized: np.ndarray, fs: float, lead_names, name: str
    ) -> tokenizer_lib.EcgSentence:
        return _as_stored(self.tokenizer.tokenize(standardized, fs, lead_names=lead_names, record_name=name))

    def sentence(
        self,
        ecg: EcgInput,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        *,
        name: str | None = None,
    ) -> Sentence:
        """The record's sentence with its beat positions and the signal they index (see `Sentence`)."""
        signal, fs, lead_names, name = self._signal(ecg, fs, lead_names, name)
        segmentation = self.tokenizer.segment(self._standardized(signal), fs, lead_names, record_name=name)
        sentence = _as_stored(self.tokenizer.sentence(segmentation))
        return Sentence(
            name=name,
            words=sentence.words,
            lead_ids=sentence.lead_ids,
            time_ids=sentence.time_ids,
            num_words=sentence.num_words,
            fs=float(self.tokenizer.fs),
            signal=segmentation.signal.astype(np.float32),
            leads=sentence.leads,
            beats=sentence.beats,
            beat_spans=sentence.beat_spans,
            flat_leads=sentence.flat_leads,
        )

    # ------------------------------------------------------------------ embeddings

    def embed(
        self,
        ecg: EcgInput,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        *,
        name: str | None = None,
    ) -> np.ndarray:
        """[hidden] float32: the mean of the encoder's outputs over the real words (what the linear probe sees)."""
        return self._embed_sentences([self.tokenize(ecg, fs, lead_names, name=name)], 1)[0]

    def _embed_sentences(self, sentences: Sequence[tokenizer_lib.EcgSentence], batch: int) -> np.ndarray:
        out = self._features(self._state, *_sentence_fields(sentences, batch))
        return np.asarray(jax.device_get(out), dtype=np.float32)[: len(sentences)]

    def iter_embed(
        self,
        ecgs: Iterable[EcgInput],
        *,
        batch_size: int = 64,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        progress: bool = True,
        total: int | None = None,
    ) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
        """Yields `(i, embedding, None)` or `(i, None, reason)` for the i-th ECG, never stopping on a
        bad one. Embeddings come in batches of `batch_size` (one compiled shape), so `i` is not
        always increasing: skipped records are reported as soon as they are read."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if total is None and isinstance(ecgs, Sized):
            total = len(ecgs)
        batch = batch_size if total is None else max(1, min(batch_size, total))
        pending: list[tuple[int, tokenizer_lib.EcgSentence]] = []
        with _progress(total, progress, "embedding") as bar:
            for i, ecg in enumerate(ecgs):
                try:
                    pending.append((i, self.tokenize(ecg, fs, lead_names)))
                except Exception as e:
                    bar.update(1)
                    yield i, None, _reason(ecg, e)
                    continue
                if len(pending) == batch:
                    yield from self._flush(pending, batch, bar)
                    pending = []
            if pending:
                yield from self._flush(pending, batch, bar)

    def _flush(self, pending, batch, bar):
        vectors = self._embed_sentences([s for _, s in pending], batch)
        bar.update(len(pending))
        for (i, _), vector in zip(pending, vectors):
            yield i, vector, None

    def embed_many(
        self,
        ecgs: Sequence[EcgInput],
        *,
        batch_size: int = 64,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """[N, hidden] float32 embeddings, batched on the device with a progress bar.

        Raises on the first record that cannot be used, naming it; `iter_embed` (and the
        `heartlang_jax.embed` command) skip such records instead.
        """
        ecgs = list(ecgs)
        out = np.zeros((len(ecgs), self.hidden_dim), np.float32)
        for i, vector, reason in self.iter_embed(
            ecgs, batch_size=batch_size, fs=fs, lead_names=lead_names, progress=progress
        ):
            if reason is not None:
                raise records.RecordError(reason)
            out[i] = vector
        return out

    # ------------------------------------------------------------------ vocabulary

    def _vocabulary_model(self, required: bool = True) -> HeartLangModel | None:
        if self.kind == "vqhbr":
            return self
        if self._vocabulary is None and required:
            raise NotSupportedError(
                f"{self.path} is a {self.kind} run without a vocabulary: word ids need a VQ-HBR run. Load the "
                f"VQ-HBR run folder itself, pass load(..., vocabulary=VQHBR_RUN_DIR), or copy that run folder "
                f"into {self.path}/{VOCABULARY_DIR}/"
            )
        return self._vocabulary

    def word_ids(
        self,
        ecg: EcgInput,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        *,
        name: str | None = None,
    ) -> np.ndarray:
        """[num_words] int32: the VQ-HBR vocabulary index of every real word of the record."""
        vocabulary = self._vocabulary_model()
        assert vocabulary is not None  # required=True raised otherwise
        sentence = vocabulary.tokenize(ecg, fs, lead_names, name=name)
        ids = vocabulary._word_ids(vocabulary._state, *_sentence_fields([sentence], 1))
        return np.asarray(jax.device_get(ids))[0, : sentence.num_words].astype(np.int32)

    def reconstruct(
        self,
        ecg: EcgInput,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        *,
        name: str | None = None,
    ) -> Reconstruction:
        """VQ-HBR's reconstruction of every real word (see `Reconstruction`); VQ-HBR runs only."""
        if self.kind != "vqhbr":
            raise NotSupportedError(f"{self.path} is a {self.kind} run; reconstructions need a VQ-HBR run folder")
        sentence = self.sentence(ecg, fs, lead_names, name=name)
        reconstruction, ids = self._reconstruct(self._state, *_sentence_fields([sentence], 1))
        n = sentence.num_words
        return Reconstruction(
            sentence=sentence,
            words=sentence.words[:n],
            reconstruction=np.asarray(jax.device_get(reconstruction), np.float32)[0, :n],
            word_ids=np.asarray(jax.device_get(ids))[0, :n].astype(np.int32),
        )

    # ------------------------------------------------------------------ predictions

    def predict(
        self,
        ecg: EcgInput,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        *,
        name: str | None = None,
    ) -> dict[str, float]:
        """{class name: probability} (sigmoid of each logit: the tasks are multi-label); fine-tuned runs only."""
        if self.kind != "finetune":
            raise NotSupportedError(
                f"{self.path} is a {self.kind} run; predictions need a fine-tuned run folder (python -m heartlang_jax.main "
                "--config=configs/finetune.py ...). For a pre-trained encoder, fit a probe on `embed_many` instead."
            )
        sentence = self.tokenize(ecg, fs, lead_names, name=name)
        logits = np.asarray(jax.device_get(self._logits(self._state, *_sentence_fields([sentence], 1))), np.float64)[0]
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        return {name: float(p) for name, p in zip(self.class_names or (), probabilities)}


def _as_stored(sentence: tokenizer_lib.EcgSentence) -> tokenizer_lib.EcgSentence:
    """The sentence with its words rounded to float16, as the datasets store them."""
    return dataclasses.replace(sentence, words=sentence.words.astype(WORDS_STORAGE_DTYPE).astype(np.float32))


def _reason(ecg: EcgInput, error: Exception) -> str:
    """A one-line reason that names the record (the library's errors already do)."""
    message = " ".join(str(error).split())
    if isinstance(error, RECORD_ERRORS) and message.startswith("record "):
        return message
    label = os.fspath(ecg) if isinstance(ecg, (str, os.PathLike)) else getattr(ecg, "name", "<array>")
    return f"record {label}: {type(error).__name__}: {message}"


@contextlib.contextmanager
def _progress(total: int | None, enabled: bool, desc: str):
    from tqdm import tqdm  # progress and ETA on a terminal and in notebooks (as text)

    bar = tqdm(total=total, desc=desc, unit="record", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


# ---------------------------------------------------------------------- loading


def load(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    vocabulary: str | os.PathLike | None = None,
) -> HeartLangModel:
    """Loads a finished VQ-HBR, pre-training or fine-tuning run folder (local or gs://).

    Args:
      path: the run folder (its `model.json` and `checkpoints/`).
      dtype: compute dtype: "float32" (default), or "bfloat16" for speed on a GPU/TPU (on CPU
        bfloat16 matmuls are emulated, so slower). Parameters are float32 either way.
      vocabulary: a VQ-HBR run folder whose vocabulary `word_ids` reports, for a pre-training or
        fine-tuning run; default: `<path>/vocabulary/` if the folder carries one.
    """
    address = os.fspath(path)
    info, model, step = model_info.load_model(address, dtype=dtype)
    vocabulary_model = None
    if info.kind != "vqhbr":
        if vocabulary is None and (epath.Path(address) / VOCABULARY_DIR / model_info.MODEL_INFO_FILE).exists():
            vocabulary = epath.Path(address) / VOCABULARY_DIR
        if vocabulary is not None:
            vocabulary_model = load(vocabulary, dtype=dtype)
            _check_vocabulary(info, vocabulary_model, address)
    return HeartLangModel(info, model, step, address, vocabulary_model)


def _check_vocabulary(info: model_info.ModelInfo, vocabulary: HeartLangModel, path: str) -> None:
    if vocabulary.kind != "vqhbr":
        raise checkpointing.CheckpointError(
            f"the vocabulary of {path} ({vocabulary.path}) holds a {vocabulary.kind} run, not a vqhbr run"
        )
    size = info.model.get("vocab_size")
    if size is not None and int(size) != vocabulary.num_codes:
        raise checkpointing.CheckpointError(
            f"{path} was pre-trained on a vocabulary of {size} words; {vocabulary.path} has {vocabulary.num_codes}"
        )
    if SentenceSpec.from_dict(vocabulary.info.sentence) != SentenceSpec.from_dict(info.sentence):
        raise checkpointing.CheckpointError(
            f"{path} and its vocabulary {vocabulary.path} read different sentences: {dict(info.sentence)} vs {dict(vocabulary.info.sentence)}"
        )
