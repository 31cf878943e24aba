"""A trained run folder as one object: raw ECGs in, embeddings, words and predictions out.

    model = heartlang_jax.load("runs/demo/pretrain")       # a vqhbr, pretrain or finetune run
    vector = model.embed("ptb-xl/records100/00000/00001_lr")  # [hidden] float32
    vectors = model.embed_many(paths, batch_size=64)         # [N, hidden], with a progress bar
    model.predict(signal, fs=500, lead_names=names)          # {class name: probability}
    model.predict_many(paths).probabilities                  # [N, classes], decisions, window counts
    model.explain(path, "NORM")                              # integrated gradients per word, lead, beat
    model.embed(path, pool="none", layer=1)                  # per-word features of block 1

Everything the model needs to read a raw record travels in the run folder's `model.json` (see
`model_info`): the sentence spec (leads, words, samples per word, rate, QRS detector) and the
amplitude standardization of its training data. A record is standardized `(x - mean) / std` and
tokenized exactly as the dataset builder does it (`sentence_corpus`), so the model sees the same
kind of sentence it was trained on.

The embedding is what the linear probe sees: the mean of the encoder's outputs over the real
(non-padding) words, or the CLS token for an encoder with learned positions
(`EcgClassifier.features`). For a VQ-HBR run it is the mean of the VQ-HBR encoder's outputs.
`pool=` and `layer=` choose other features (see `embed`).

Long recordings are read in windows. The model was trained on sentences of at most
`max_duration_s` seconds (10 s); the tokenizer cuts anything longer to its first 10 s, so every
method here first cuts a longer record into windows of `window_s` seconds (default: the training
window, `max_duration_s`) every `stride_s` seconds (default `window_s`: no overlap), at the record's
own rate, and tokenizes each window as a record of its own. If the windows do not reach the end,
one more window ends on the record's last sample (it overlaps the one before), so no signal is
left out and every window is full length. A record no longer than one window is one window, read
as before (a shorter record gives fewer beats). Embeddings and probabilities are the mean over the
windows (`per_window=True` gives each window's); `num_windows`/`windows` and the `_many` results
report how many there were. A window that cannot be tokenized fails its record, naming the
window (`record NAME@10-20s: ...`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from heartlang_jax import errors
from heartlang_jax.ecg import records, sentence_corpus
from heartlang_jax.ecg import tokenizer as tokenizer_lib
from heartlang_jax.ecg.sentence_spec import SentenceSpec
from heartlang_jax.inference import model_info
from heartlang_jax.inference.record_files import RECORD_EXTENSIONS, record_path  # noqa: F401  # re-exported
from heartlang_jax.models import EcgClassifier
from heartlang_jax.training import checkpointing

# A pre-training (or fine-tuning) run folder "carries its vocabulary" when this subfolder is a
# complete VQ-HBR run folder (model.json + checkpoints/): then `word_ids` works on it. Pre-training
# writes it (stages/pretrain.py, `carry_vocabulary`).
VOCABULARY_DIR = model_info.VOCABULARY_DIR
# The training datasets store words as float16 (tfds_ptbxl/sentences.py, "the loader casts"), so
# every model was trained on float16-rounded words: inference rounds them the same way.
WORDS_STORAGE_DTYPE = np.float16
# Errors that mean "this record cannot be used", each naming the record.
RECORD_ERRORS = (records.RecordError, tokenizer_lib.TokenizerError)

EcgInput = Any  # a record path (str / PathLike), a records.Record, a records.ArrayFile (.npy + rate), or an array [leads, samples]
# A fine-tuning run may keep the decision thresholds it chose on the validation split here:
# {"classes": [...], "thresholds": [...], "rule": "..."} (written by stages/finetune.py).
THRESHOLDS_FILE = "thresholds.json"
DEFAULT_THRESHOLD = 0.5
POOLS = ("mean", "cls", "none")
# Integrated-gradients steps of `explain` (trapezoid rule): the error falls as 1/steps²; at 128 it was
# 0.06-0.3% of the logit change on the tiny test model (more only where that change is ~1e-4).
DEFAULT_IG_STEPS = 128
_IG_CHUNK = 16  # path points per gradient call (bounds memory for the large models)


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


class RecordOutput(NamedTuple):
    """One ECG's result from `iter_embed` / `iter_predict`.

    Attributes:
      position: the index of the ECG in the input.
      value: the embedding or probabilities (mean over windows; per window [W, ...] with
        per_window=True); None when the record was skipped.
      reason: None, or why the record was skipped (one line naming it).
      num_windows: windows the record was read in (0 when skipped).
      windows: (start_s, end_s) of each window, in seconds from the record's start.
    """

    position: int
    value: Any
    reason: str | None
    num_windows: int = 0
    windows: tuple[tuple[float, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class Predictions:
    """`predict_many`'s result, one row per input ECG.

    Attributes:
      class_names: [C] the classes, in the order of the columns.
      probabilities: [N, C] float64, the mean over each record's windows of the sigmoid of its
        logits; NaN rows for skipped records.
      num_windows: [N] int64, the windows each record was read in; 0 for skipped records.
      reasons: [N] None, or why the record was skipped.
      thresholds: [C] float64 decision thresholds (the run's `thresholds.json`, else 0.5).
      threshold_rule: how the thresholds were chosen (from `thresholds.json`), or the fallback.
    """

    class_names: tuple[str, ...]
    probabilities: np.ndarray
    num_windows: np.ndarray
    reasons: tuple[str | None, ...]
    thresholds: np.ndarray
    threshold_rule: str

    @property
    def decisions(self) -> np.ndarray:
        """[N, C] bool: probability >= threshold (False for skipped records)."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(self.probabilities, nan=-1.0) >= self.thresholds[None, :]


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Integrated-gradients attributions of one class's logit to the words of one window.

    The input is the word embeddings (the output of the ECGFormer's token convolution, before lead
    and time embeddings are added); the baseline is the zero embedding, which is exactly the
    embedding of flat words (standardized amplitude 0, the training data's mean, as the padding):
    the same sentence of leads and beat times with every heartbeat's shape removed. The token
    convolution has no bias, so this baseline needs no choice of a reference beat. Attribution of
    word i = sum over features of x_i * the path-averaged gradient (trapezoid rule over `steps`
    points from the baseline to the input). By completeness they sum to `logit - baseline_logit`
    (to the quadrature error); padding words have zero attribution unless the encoder attends to
    padding (`mask_padding=False`), then it is in `padding_attribution`.

    Attributes:
      sentence: the window's sentence (signal, beats, leads; see `Sentence`).
      target: index of the explained class; class_name its name.
      words: [num_words] attribution of each real word (in logit units).
      leads: [len(sentence.leads)] sum over each lead's words (order of `sentence.leads`).
      beats: [num_beats] sum over each beat's words in all leads.
      logit, baseline_logit: the class's logit for the input and for the baseline.
      padding_attribution: the attribution of the padding positions (0 with masked padding).
      steps: integration steps; window, num_windows: which window of the record this is.
    """

    sentence: Sentence
    target: int
    class_name: str
    words: np.ndarray
    leads: np.ndarray
    beats: np.ndarray
    logit: float
    baseline_logit: float
    padding_attribution: float
    steps: int
    window: int = 0
    num_windows: int = 1

    @property
    def completeness_error(self) -> float:
        """|sum of all attributions - (logit - baseline_logit)|, relative to |logit - baseline_logit|."""
        delta = self.logit - self.baseline_logit
        total = float(self.words.sum()) + self.padding_attribution
        return abs(total - delta) / max(abs(delta), 1e-12)


def _sentence_fields(sentences: Sequence[Any], batch: int) -> tuple[np.ndarray, ...]:
    """(words [B, L, T], lead_ids [B, L], time_ids [B, L]); rows past len(sentences) repeat the
    last sentence, so a padded batch has no all-padding row and compiles to one shape."""
    rows = list(sentences) + [sentences[-1]] * (batch - len(sentences))
    return (
        np.stack([s.words for s in rows]),
        np.stack([s.lead_ids for s in rows]).astype(np.int32),
        np.stack([s.time_ids for s in rows]).astype(np.int32),
    )


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
        self._graphdef = graphdef
        self._state = state
        self._feature_fns: dict[tuple[str, int | None], Any] = {}
        self._explain_fns: dict[int, Any] = {}
        # Decision thresholds per class and how they were chosen; thresholds_file is None when the
        # run folder has no thresholds.json (then 0.5 for every class).
        self.thresholds, self.threshold_rule, self.thresholds_file = _read_thresholds(path, info)
        merged = self._jit

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

    def _jit(self, fn):
        """fn(model, *arrays) jitted over the model's state (merged inside the trace)."""
        graphdef = self._graphdef
        return jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))

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
            ecg = records.load_record(record_path(ecg))  # whole: a long record is read in windows
        elif isinstance(ecg, records.ArrayFile):  # a `.npy` record and its rate (a records CSV's row)
            if fs is not None or lead_names is not None:
                raise ValueError(f"record {ecg.path}: an ArrayFile carries its rate; pass fs only with an array")
            ecg = records.load(ecg)
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
        return self._sentence_of(self._standardized(signal), fs, lead_names, name)

    def _sentence_of(self, standardized: np.ndarray, fs: float, lead_names, name: str) -> Sentence:
        segmentation = self.tokenizer.segment(standardized, fs, lead_names, record_name=name)
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

    # ------------------------------------------------------------------ windows

    def _window_spans(
        self, num_samples: int, fs: float, window_s: float | None, stride_s: float | None
    ) -> list[tuple[int, int]]:
        """[start, end) samples of each window of a record of `num_samples` at `fs` (module docstring)."""
        window_s, stride_s = self._window_args(window_s, stride_s)
        return sentence_corpus.window_spans(num_samples, max(1, round(window_s * fs)), max(1, round(stride_s * fs)))

    def _window_args(self, window_s: float | None, stride_s: float | None) -> tuple[float, float]:
        limit = float(self.tokenizer.max_duration_s)
        window_s = limit if window_s is None else window_s
        stride_s = window_s if stride_s is None else stride_s
        if not 0 < window_s <= limit:
            raise ValueError(
                f"window_s must be in (0, {limit:g}] s: the model reads at most {limit:g} s at once, got {window_s!r}"
            )
        if not stride_s > 0:
            raise ValueError(f"stride_s must be a positive number of seconds, got {stride_s!r}")
        return float(window_s), float(stride_s)

    def _windowed(self, ecg, fs, lead_names, name, window_s, stride_s):
        """(standardized signal, fs, lead names, name, [(start, end) samples], [(start_s, end_s)])."""
        signal, fs, lead_names, name = self._signal(ecg, fs, lead_names, name)
        spans = self._window_spans(signal.shape[-1], fs, window_s, stride_s)
        seconds = [(start / fs, end / fs) for start, end in spans]
        return self._standardized(signal), fs, lead_names, name, spans, seconds

    def windows(
        self,
        ecg: EcgInput,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        *,
        window_s: float | None = None,
        stride_s: float | None = None,
    ) -> list[tuple[float, float]]:
        """(start_s, end_s) of each window the record is read in (see the module docstring)."""
        signal, fs, _, _ = self._signal(ecg, fs, lead_names, None)
        return [(start / fs, end / fs) for start, end in self._window_spans(signal.shape[-1], fs, window_s, stride_s)]

    def num_windows(self, ecg: EcgInput, fs: float | None = None, lead_names: Sequence[str] | None = None, **kw) -> int:
        """How many windows the record is read in (`window_s=`, `stride_s=` as in `embed`)."""
        return len(self.windows(ecg, fs, lead_names, **kw))

    def _window_sentences(self, ecg, fs, lead_names, name, window_s, stride_s):
        """(the tokenized sentence of every window, their (start_s, end_s)); raises naming the window."""
        x, fs, lead_names, name, spans, seconds = self._windowed(ecg, fs, lead_names, name, window_s, stride_s)
        if len(spans) == 1:
            return [self._tokenize_standardized(x, fs, lead_names, name)], seconds
        return [
            self._tokenize_standardized(x[..., start:end], fs, lead_names, _window_name(name, t))
            for (start, end), t in zip(spans, seconds)
        ], seconds

    # ------------------------------------------------------------------ the one record-to-batch loop

    def _run(self, head, sentences: Sequence[tokenizer_lib.EcgSentence], batch: int) -> np.ndarray:
        """`head`(state, words, lead_ids, time_ids) over the sentences, `batch` at a time (one compiled
        shape; the last batch is padded with copies), as one host array [len(sentences), ...]."""
        out = []
        for start in range(0, len(sentences), batch):
            chunk = sentences[start : start + batch]
            values = jax.device_get(head(self._state, *_sentence_fields(chunk, batch)))
            out.append(np.asarray(values)[: len(chunk)])
        return np.concatenate(out)

    def _iter_outputs(
        self, ecgs, head, finish, *, batch_size, fs, lead_names, progress, total, window_s, stride_s, desc
    ):
        """The record-to-batch loop of every `_many`/`iter_` method: reads and windows each ECG,
        batches the windows of consecutive records on the device, and yields a `RecordOutput` per
        ECG with `finish(per-window values [W, ...], sentences)` as its value; never stops on a bad
        record (its reason instead). Skipped records are reported as soon as they are read, so
        `position` is not always increasing."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._window_args(window_s, stride_s)  # bad arguments raise here, not once per record
        if total is None and isinstance(ecgs, Sized):
            total = len(ecgs)
        batch = batch_size if total is None else max(1, min(batch_size, total))
        pending: list[tuple[int, list, list]] = []

        def flush():
            sentences = [s for _, group, _ in pending for s in group]
            values = self._run(head, sentences, batch)
            bar.update(len(pending))
            offset = 0
            for i, group, seconds in pending:
                yield RecordOutput(
                    i, finish(values[offset : offset + len(group)], group), None, len(group), tuple(seconds)
                )
                offset += len(group)
            pending.clear()

        with _progress(total, progress, desc) as bar:
            for i, ecg in enumerate(ecgs):
                try:
                    group, seconds = self._window_sentences(ecg, fs, lead_names, None, window_s, stride_s)
                except Exception as e:
                    bar.update(1)
                    yield RecordOutput(i, None, _reason(ecg, e))
                    continue
                pending.append((i, group, seconds))
                if sum(len(g) for _, g, _ in pending) >= batch:
                    yield from flush()
            if pending:
                yield from flush()

    def _one(self, ecg, fs, lead_names, name, head, finish, window_s, stride_s):
        """`_iter_outputs` for one ECG, raising its own error (RecordError, TokenizerError, ...)."""
        sentences, _ = self._window_sentences(ecg, fs, lead_names, name, window_s, stride_s)
        return finish(self._run(head, sentences, len(sentences)), sentences)

    # ------------------------------------------------------------------ embeddings

    def _num_blocks(self, layer: int | None) -> int | None:
        if layer is None:
            return None
        depth = int(self.model.encoder.config.num_layers)
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -depth - 1 <= layer <= depth:
            raise ValueError(
                f"layer must be an int in 0..{depth} (0 = the embeddings before the first block, k = the "
                f"output of block k, {depth} = the last; negative counts from the end), got {layer!r}"
            )
        return int(layer) % (depth + 1)

    def _feature_head(self, pool: str | None, layer: int | None):
        """The jitted features of `embed` for (pool, layer); (None, None) is what the probe reads."""
        if pool is not None and pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS} (or None: what the linear probe reads), got {pool!r}")
        has_cls = bool(self.model.encoder.has_cls)
        if pool == "cls" and not has_cls:
            raise NotSupportedError(
                f"{self.path}: pool='cls' needs an encoder with a CLS token (position='learned', the released "
                "architecture); this one has RoPE positions and no CLS: use pool='mean'"
            )
        num_blocks = self._num_blocks(layer)
        depth = int(self.model.encoder.config.num_layers)
        if num_blocks == depth:
            num_blocks = None  # the last block: the same program as today's features
        resolved = pool or ("cls" if has_cls else "mean")
        if pool is None and num_blocks is None:
            return self._features
        key = (resolved, num_blocks)
        if key not in self._feature_fns:
            prefix = int(self.model.encoder.num_prefix_tokens)

            def features(m, words, lead_ids, time_ids):
                encoder = m.encoder
                hidden = encoder.encode(encoder.embed_words(words), lead_ids, time_ids, num_blocks=num_blocks)
                if resolved == "cls":
                    return hidden[:, 0]
                hidden = hidden[:, prefix:]
                if resolved == "none":
                    return hidden
                real = (lead_ids != 0).astype(hidden.dtype)[..., None]
                return jnp.sum(hidden * real, axis=1) / jnp.maximum(jnp.sum(real, axis=1), 1.0)

            self._feature_fns[key] = self._jit(features)
        return self._feature_fns[key]

    @staticmethod
    def _embedding_finish(pool: str | None, per_window: bool):
        def finish(values: np.ndarray, sentences) -> Any:
            values = values.astype(np.float32)
            if pool == "none":  # [W, max_len, D] -> the real words of each window
                words = [v[: s.num_words] for v, s in zip(values, sentences)]
                return words if per_window else np.concatenate(words)
            return values if per_window else values.mean(axis=0)

        return finish

    def embed(
        self,
        ecg: EcgInput,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        *,
        name: str | None = None,
        pool: str | None = None,
        layer: int | None = None,
        window_s: float | None = None,
        stride_s: float | None = None,
        per_window: bool = False,
    ) -> Any:
        """The record's features, float32; by default [hidden], what the linear probe sees.

        Args:
          pool: None (default): what the linear probe reads, the CLS token for an encoder with one
            (released architecture), else the mean over the real words; "mean": the mean of the
            encoder's outputs over the real (non-padding) words, also with a CLS token (left out);
            "cls": the CLS token (only encoders with one); "none": every real word's output,
            [num_words, hidden] (no padding, no CLS), for several windows their words one window
            after the other.
          layer: None (default) or the encoder's number of layers: the last block's output.
            k in 1..num_layers: the output of block k (1-based: blocks are counted from 1); 0: the
            input of the first block (word + lead + time embeddings). Negative k counts from the end
            (-1 = the last). Every layer goes through the encoder's final LayerNorm, as the last
            block's output does, so layers are on one scale and the last equals the default.
          window_s, stride_s: the windows of a long record (module docstring); the result is the
            mean over windows (for pool="none" the concatenation).
          per_window: [windows, hidden] (pool="none": a list of [num_words, hidden]) instead.
        """
        head = self._feature_head(pool, layer)
        return self._one(ecg, fs, lead_names, name, head, self._embedding_finish(pool, per_window), window_s, stride_s)

    def iter_embed(
        self,
        ecgs: Iterable[EcgInput],
        *,
        batch_size: int = 64,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        progress: bool = True,
        total: int | None = None,
        pool: str | None = None,
        layer: int | None = None,
        window_s: float | None = None,
        stride_s: float | None = None,
        per_window: bool = False,
    ) -> Iterator[RecordOutput]:
        """Yields a `RecordOutput` `(position, embedding, None, num_windows, windows)` or `(position, None,
        reason, 0, ())` per ECG, never stopping on a bad one (arguments as in `embed`). Windows are
        batched `batch_size` at a time on the device (one compiled shape)."""
        yield from self._iter_outputs(
            ecgs,
            self._feature_head(pool, layer),
            self._embedding_finish(pool, per_window),
            batch_size=batch_size,
            fs=fs,
            lead_names=lead_names,
            progress=progress,
            total=total,
            window_s=window_s,
            stride_s=stride_s,
            desc="embedding",
        )

    def embed_many(
        self,
        ecgs: Sequence[EcgInput],
        *,
        batch_size: int = 64,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        progress: bool = True,
        pool: str | None = None,
        layer: int | None = None,
        window_s: float | None = None,
        stride_s: float | None = None,
        skip_bad: bool = False,
    ) -> np.ndarray:
        """[N, hidden] float32 embeddings (each the mean over its record's windows), batched on the
        device with a progress bar; `pool`, `layer`, `window_s`, `stride_s` as in `embed` (pool="none"
        gives a different number of words per record: use `iter_embed`).

        Raises on the first record that cannot be used, naming it; with `skip_bad=True` its row is
        NaN instead. `iter_embed` (and the `heartlang_jax.embed` command) also report the reasons
        and window counts.
        """
        if pool == "none":
            raise ValueError("embed_many returns one row per record; pool='none' gives per-word rows: use iter_embed")
        ecgs = list(ecgs)
        out = np.full((len(ecgs), self.hidden_dim), np.nan, np.float32)
        for result in self.iter_embed(
            ecgs,
            batch_size=batch_size,
            fs=fs,
            lead_names=lead_names,
            progress=progress,
            pool=pool,
            layer=layer,
            window_s=window_s,
            stride_s=stride_s,
        ):
            if result.reason is not None:
                if not skip_bad:
                    raise records.RecordError(result.reason)
                continue
            out[result.position] = result.value
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

    def _require_classifier(self) -> None:
        if self.kind != "finetune":
            raise NotSupportedError(
                f"{self.path} is a {self.kind} run; predictions need a fine-tuned run folder (python -m heartlang_jax.main "
                "--config=configs/finetune.py ...). For a pre-trained encoder, fit a probe on `embed_many` instead."
            )

    @staticmethod
    def _probability_finish(per_window: bool):
        def finish(logits: np.ndarray, sentences) -> np.ndarray:
            del sentences
            probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))  # [W, C]
            return probabilities if per_window else probabilities.mean(axis=0)

        return finish

    def predict(
        self,
        ecg: EcgInput,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        *,
        name: str | None = None,
        window_s: float | None = None,
        stride_s: float | None = None,
        per_window: bool = False,
    ) -> dict[str, Any]:
        """{class name: probability} (sigmoid of each logit: the tasks are multi-label), the mean over
        the record's windows (`window_s`, `stride_s`: module docstring); with `per_window=True`
        {class name: [windows] probabilities}. Fine-tuned runs only."""
        self._require_classifier()
        probabilities = self._one(
            ecg, fs, lead_names, name, self._logits, self._probability_finish(per_window), window_s, stride_s
        )
        if per_window:
            return {c: probabilities[:, k].copy() for k, c in enumerate(self.class_names or ())}
        return {c: float(p) for c, p in zip(self.class_names or (), probabilities)}

    def iter_predict(
        self,
        ecgs: Iterable[EcgInput],
        *,
        batch_size: int = 64,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        progress: bool = True,
        total: int | None = None,
        window_s: float | None = None,
        stride_s: float | None = None,
        per_window: bool = False,
    ) -> Iterator[RecordOutput]:
        """Yields a `RecordOutput` per ECG whose value is [C] float64 probabilities (per_window: [W, C]);
        the same loop and arguments as `iter_embed`. Fine-tuned runs only."""
        self._require_classifier()
        yield from self._iter_outputs(
            ecgs,
            self._logits,
            self._probability_finish(per_window),
            batch_size=batch_size,
            fs=fs,
            lead_names=lead_names,
            progress=progress,
            total=total,
            window_s=window_s,
            stride_s=stride_s,
            desc="predicting",
        )

    def predict_many(
        self,
        ecgs: Sequence[EcgInput],
        *,
        batch_size: int = 64,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        progress: bool = True,
        window_s: float | None = None,
        stride_s: float | None = None,
        skip_bad: bool = False,
    ) -> Predictions:
        """Probabilities, decisions at the run's thresholds and window counts of many ECGs (see
        `Predictions`), batched on the device with a progress bar; what `python -m
        heartlang_jax.predict` writes. Raises on the first record that cannot be used, naming it;
        with `skip_bad=True` its row is NaN and its reason is kept instead."""
        ecgs = list(ecgs)
        names = tuple(self.class_names or ())
        probabilities = np.full((len(ecgs), len(names)), np.nan)
        num_windows = np.zeros(len(ecgs), np.int64)
        reasons: list[str | None] = [None] * len(ecgs)
        for result in self.iter_predict(
            ecgs,
            batch_size=batch_size,
            fs=fs,
            lead_names=lead_names,
            progress=progress,
            window_s=window_s,
            stride_s=stride_s,
        ):
            if result.reason is not None:
                if not skip_bad:
                    raise records.RecordError(result.reason)
                reasons[result.position] = result.reason
                continue
            probabilities[result.position] = result.value
            num_windows[result.position] = result.num_windows
        return Predictions(names, probabilities, num_windows, tuple(reasons), self.thresholds, self.threshold_rule)

    # ------------------------------------------------------------------ explanations

    def _target_index(self, target: int | str) -> int:
        names = list(self.class_names or ())
        if isinstance(target, str):
            if target not in names:
                raise ValueError(f"target {target!r} is not a class of {self.path}: {names}")
            return names.index(target)
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < len(names):
            raise ValueError(f"target must be a class name or an index in 0..{len(names) - 1}, got {target!r}")
        return int(target)

    def _explain_fn(self, chunk: int):
        """jitted (state, path [chunk, L, D], weights [chunk], lead, time, target) -> the weighted sum of
        the target logit's gradients along the path [L, D], and logits(e) for e = path points."""
        if chunk not in self._explain_fns:
            graphdef = self._graphdef

            def logits_of(model, embeddings, lead_ids, time_ids):
                encoder = model.encoder
                batch = embeddings.shape[0]
                lead = jnp.broadcast_to(lead_ids, (batch, *lead_ids.shape))
                time = jnp.broadcast_to(time_ids, (batch, *time_ids.shape))
                hidden = encoder.encode(embeddings, lead, time)
                if encoder.has_cls:
                    pooled = hidden[:, 0]
                else:
                    real = (lead != 0).astype(hidden.dtype)[..., None]
                    pooled = jnp.sum(hidden * real, axis=1) / jnp.maximum(jnp.sum(real, axis=1), 1.0)
                return model.head(pooled)  # [batch, C]

            def fn(state, path, weights, lead_ids, time_ids, target):
                def weighted_logit(model, e):
                    logits = logits_of(model, e, lead_ids, time_ids)
                    return jnp.sum(weights * logits[:, target]), logits[:, target]

                # nnx.grad, not jax.grad: the model's variables must belong to the trace that
                # differentiates (only the embeddings, argument 1, are differentiated).
                model = nnx.merge(graphdef, state)
                grads, logits = nnx.grad(weighted_logit, argnums=1, has_aux=True)(model, path)
                return jnp.sum(grads, axis=0), logits

            self._explain_fns[chunk] = jax.jit(fn)
        return self._explain_fns[chunk]

    def explain(
        self,
        ecg: EcgInput,
        target: int | str,
        fs: float | None = None,
        lead_names: Sequence[str] | None = None,
        *,
        name: str | None = None,
        steps: int = DEFAULT_IG_STEPS,
        window: int = 0,
        window_s: float | None = None,
        stride_s: float | None = None,
    ) -> Explanation:
        """Integrated gradients of class `target`'s logit (name or index) over the words of one window
        of the record (`window`, default the first; see `Explanation` for the baseline and the sums
        per word, lead and beat). Fine-tuned runs only; computed in float32.

        Integrated gradients rather than gradient x input: it satisfies completeness (the
        attributions add up to the logit's change from the baseline), which is checkable and makes
        lead and beat sums meaningful in logit units.
        """
        self._require_classifier()
        index = self._target_index(target)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        x, fs, lead_names, name, spans, seconds = self._windowed(ecg, fs, lead_names, name, window_s, stride_s)
        if not 0 <= window < len(spans):
            raise ValueError(f"record {name}: window {window} out of range, it has {len(spans)} window(s)")
        start, end = spans[window]
        label = name if len(spans) == 1 else _window_name(name, seconds[window])
        sentence = self._sentence_of(x[..., start:end], fs, lead_names, label)

        encoder = self.model.encoder
        words, lead_ids, time_ids = (a[0] for a in _sentence_fields([sentence], 1))
        embedding = np.asarray(encoder.embed_words(jnp.asarray(words[None])), np.float32)[0]  # [L, D]
        alphas = np.linspace(0.0, 1.0, steps + 1)
        weights = np.full(steps + 1, 1.0 / steps)
        weights[[0, -1]] = 0.5 / steps  # trapezoid rule
        chunk = min(_IG_CHUNK, steps + 1)
        pad = -len(alphas) % chunk
        alphas = np.concatenate([alphas, np.zeros(pad)])
        weights = np.concatenate([weights, np.zeros(pad)])  # padded points weigh nothing
        fn = self._explain_fn(chunk)
        gradient = np.zeros_like(embedding, dtype=np.float64)
        logits = []
        for k in range(0, len(alphas), chunk):
            path = (alphas[k : k + chunk, None, None] * embedding[None]).astype(np.float32)
            g, lg = fn(self._state, path, weights[k : k + chunk].astype(np.float32), lead_ids, time_ids, index)
            gradient += np.asarray(g, np.float64)
            logits.append(np.asarray(lg, np.float64))
        path_logits = np.concatenate(logits)
        per_position = np.sum(embedding.astype(np.float64) * gradient, axis=-1)  # [L]
        n = sentence.num_words
        words_attr = per_position[:n]
        lead_of, beat_of = sentence.word_lead, sentence.word_beat
        return Explanation(
            sentence=sentence,
            target=index,
            class_name=(self.class_names or ())[index],
            words=words_attr,
            leads=np.bincount(lead_of, weights=words_attr, minlength=len(sentence.leads)),
            beats=np.bincount(beat_of, weights=words_attr, minlength=len(sentence.beats)),
            logit=float(path_logits[steps]),
            baseline_logit=float(path_logits[0]),
            padding_attribution=float(per_position[n:].sum()),
            steps=steps,
            window=window,
            num_windows=len(spans),
        )


def _window_name(name: str, seconds: tuple[float, float]) -> str:
    """The name a window's errors and sentence carry: `NAME@10-20s`."""
    return f"{name}@{seconds[0]:g}-{seconds[1]:g}s"


def _read_thresholds(path: str, info: model_info.ModelInfo) -> tuple[np.ndarray, str, str | None]:
    """The decision thresholds of a fine-tuned run (its `thresholds.json`), else 0.5 for every class."""
    names = tuple(info.class_names or ())
    fallback = np.full(len(names), DEFAULT_THRESHOLD)
    if info.kind != "finetune":
        return fallback, "none (not a classifier)", None
    file = epath.Path(path) / THRESHOLDS_FILE
    if not file.exists():
        return fallback, f"{DEFAULT_THRESHOLD:g} for every class (the run folder has no {THRESHOLDS_FILE})", None
    try:
        data = json.loads(file.read_text())
        classes, values, rule = tuple(data["classes"]), data["thresholds"], str(data.get("rule", "unnamed rule"))
        thresholds = np.asarray(values, np.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise checkpointing.CheckpointError(f"{file}: not a thresholds file ({type(e).__name__}: {e})") from e
    if classes != names:
        raise checkpointing.CheckpointError(f"{file}: classes {list(classes)} differ from model.json's {list(names)}")
    if thresholds.shape != (len(names),) or not np.all((thresholds >= 0) & (thresholds <= 1)):
        raise checkpointing.CheckpointError(f"{file}: thresholds must be {len(names)} numbers in [0, 1], got {values}")
    return thresholds, rule, os.fspath(file)


def _as_stored(sentence: tokenizer_lib.EcgSentence) -> tokenizer_lib.EcgSentence:
    """The sentence with its words rounded to float16, as the datasets store them."""
    return dataclasses.replace(sentence, words=sentence.words.astype(WORDS_STORAGE_DTYPE).astype(np.float32))


def _reason(ecg: EcgInput, error: Exception) -> str:
    """A one-line reason that names the record (the library's errors already do)."""
    message = " ".join(str(error).split())
    if isinstance(error, RECORD_ERRORS) and message.startswith("record "):
        return message
    if isinstance(ecg, records.ArrayFile):
        ecg = ecg.path
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
