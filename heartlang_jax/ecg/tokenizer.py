"""QRSTokenizer: an ECG record becomes an ECG sentence of heartbeat words (SPEC §2).

Beats are found once per record, on all leads together, and the same beat borders cut every
lead, so word k of lead I and word k of lead V1 show the same heartbeat.

The paper detects beats with XQRS on lead I (`detector="xqrs"`). On PTB-XL that over-detects
(T waves and noise count as beats in ~16% of records), so the default, `"multilead"`, pools the
QRS energy of all leads: a beat that is small or noisy in one lead is clear in others.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import numbers
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import scipy.signal
import wfdb.processing

from heartlang_jax import errors
from heartlang_jax.ecg import filters
from heartlang_jax.ecg.records import STANDARD_LEADS, canonical_lead_name
from heartlang_jax.ecg.sentence_spec import DEFAULT_DETECTOR, QRS_BAND_TOP_HZ, Detector, SentenceSpec

__all__ = ["DEFAULT_DETECTOR", "Detector", "EcgSentence", "QRSTokenizer", "Segmentation", "detect_qrs"]

# A lead whose peak-to-peak range is below this fraction of the record's largest one carries no
# ECG (a disconnected electrode); 1e-3 is ~1 quantization step of a 2 mV lead at 1 µV resolution.
_FLAT_RELATIVE = 1e-3

# Multilead detector. QRS energy sits at 5-15 Hz, P/T waves and baseline wander below 5 Hz.
_BAND_HZ = (5.0, QRS_BAND_TOP_HZ)
_EDGE_PAD_S = 0.5  # edge-value padding so that a QRS at the record's border still peaks
_SMOOTH_S = 0.10  # moving average over about one QRS width
_REFRACTORY_S = 0.25  # no two beats closer than this (240 bpm)
_THRESHOLD_WINDOW_S = 5.0  # the adaptive threshold looks at >= 3 beats even at 40 bpm
_THRESHOLD_FRACTION = 0.3
_GLOBAL_FRACTION = 0.05  # floor relative to the whole record, for pauses longer than the window
_T_WAVE_S = 0.36  # a peak this soon after a beat and ...
_T_WAVE_RATIO = 0.5  # ... this much weaker than it is that beat's T wave
_REFINE_S = 0.05
# The median beat must exceed this multiple of the median envelope, else the record has no
# detectable beat (noise or baseline only). 12-lead PTB-XL: >= 4.5; 12-lead white noise: <= 1.4.
_MIN_BEAT_CONTRAST = 2.0

log = logging.getLogger(__name__)


class TokenizerError(errors.HeartLangError, ValueError):
    """A record that cannot become a sentence; the message names the record (and the lead)."""


class BadSignalError(TokenizerError):
    """Wrong shape, empty, non-finite or flat signal, or a bad sampling rate."""


class LeadError(TokenizerError):
    """The rows of the signal cannot be matched to standard lead names."""


class NoBeatsError(TokenizerError):
    """The detector found no heartbeat."""


@dataclasses.dataclass(frozen=True)
class EcgSentence:
    """One record as words, padded to `max_len`.

    Attributes:
      words: [max_len, token_len] float32, one heartbeat of one lead per row, in the input's units.
      lead_ids: [max_len] int32, STANDARD_LEADS index + 1; 0 marks padding.
      time_ids: [max_len] int32, the second holding the beat's QRS, q // fs + 1; 0 marks padding.
      num_words: rows before the padding.
      flat_leads: leads of the tokenizer's `leads` that the record has but that were flat, so
        contributed no words (see QRSTokenizer's `min_leads` and `reject_flat_leads`).
      leads: the leads that gave words, in sentence order (word k is from leads[k // len(beats)]).
      beats: [num_beats] int64 QRS sample indices at the tokenizer's rate.
      beat_spans: [num_beats, 2] int64 [start, end) samples each beat's words cover (the word holds
        them from offset start - beat + token_len // 2).
    """

    words: np.ndarray  # [max_len, token_len] float32
    lead_ids: np.ndarray  # [max_len] int32
    time_ids: np.ndarray  # [max_len] int32
    num_words: int
    flat_leads: tuple[str, ...] = ()  # leads left out because they were flat (dead electrodes)
    leads: tuple[str, ...] = ()
    beats: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    beat_spans: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.int64))


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """A record as the tokenizer cut it, before the words are copied out.

    Attributes:
      signal: [len(leads), samples] float64 at the tokenizer's rate, cut to its duration, flat
        leads left out: the samples the words are cut from.
      leads: the names of `signal`'s rows, in sentence order.
      beats: [num_beats] int64 QRS indices into `signal`.
      beat_spans: [num_beats, 2] int64 [start, end) of each beat's words (see `beat_spans`).
      flat_leads: leads the record has that were flat, so give no words.
    """

    signal: np.ndarray
    leads: tuple[str, ...]
    beats: np.ndarray
    beat_spans: np.ndarray
    flat_leads: tuple[str, ...] = ()


def beat_spans(beats: np.ndarray, n: int, token_len: int) -> np.ndarray:
    """[num_beats, 2] [start, end) of each beat's word in a signal of n samples: the window
    [q - h, q - h + token_len), h = token_len // 2, cut to the record and at the midpoints
    between beats (the rule of QRSTokenizer's docstring)."""
    half = token_len // 2
    mids = (beats[:-1] + beats[1:]) // 2
    starts = np.maximum(beats - half, 0)
    starts[1:] = np.maximum(starts[1:], mids)
    ends = np.minimum(beats - half + token_len, n)
    ends[:-1] = np.minimum(ends[:-1], mids)
    return np.stack([starts, ends], axis=1).astype(np.int64)


def detect_qrs(
    ecg: np.ndarray, fs: float, method: Detector = DEFAULT_DETECTOR, record_name: str = "<array>"
) -> np.ndarray:
    """Returns the sorted, unique sample indices of the QRS complexes in `ecg`.

    Args:
      ecg: [leads, samples] or [samples]; every row is used by "multilead", only the first row
        (lead I in standard order) by "xqrs", as in the paper.
      fs: sampling rate of `ecg` in Hz; the indices are at this rate.
      method: "multilead" (default, see `_detect_multilead`) or "xqrs" (`wfdb.processing`).
      record_name: used in error messages.
    """
    x = np.asarray(ecg, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    _check_shape(x, fs, record_name)
    if not np.isfinite(x).all():
        raise BadSignalError(f"record {record_name}: signal contains NaN or inf")
    if method == "multilead":
        beats = _detect_multilead(x, fs)
    elif method == "xqrs":
        try:
            beats = wfdb.processing.xqrs_detect(sig=x[0], fs=fs, verbose=False)
        except ValueError as e:  # e.g. a record shorter than XQRS's filter padding
            raise BadSignalError(f"record {record_name}: XQRS cannot process the first lead: {e}") from e
    else:
        raise ValueError(f"unknown QRS detector {method!r}; use 'multilead' or 'xqrs'")
    return np.unique(np.asarray(beats, dtype=np.int64))


def _detect_multilead(x: np.ndarray, fs: float) -> np.ndarray:
    """Band-pass energy pooled over leads, peak-picked with an adaptive threshold.

    1. Band-pass each lead at 5-15 Hz (zero phase), square it, and divide by its median so that
       each lead counts by its QRS-to-background ratio, not its amplitude; sum over leads.
    2. Smooth with a 100 ms moving average; its local maxima at least 250 ms apart are
       candidates.
    3. Keep a candidate above 0.3x the second-largest candidate within the surrounding 5 s (the
       second-largest, so one artifact cannot mask beats; local, so amplitude drift is followed)
       and above 0.05x the largest such reference (a pause longer than the window is not a beat),
       unless it comes < 360 ms after the previous beat at < half its height (a T wave).
       If the median beat is not twice the median envelope, nothing stands out: no beats.
    4. Move each beat to the maximum of the unsmoothed energy within +-50 ms.
    """
    n = x.shape[1]
    pad = round(_EDGE_PAD_S * fs)
    band = scipy.signal.sosfiltfilt(_qrs_band(fs), np.pad(x, ((0, 0), (pad, pad)), mode="edge"), axis=1)
    band = band[:, pad : pad + n]
    power = np.square(band)
    energy = (power / (np.median(power, axis=1, keepdims=True) + 1e-12)).sum(axis=0)  # [n]
    width = max(1, round(_SMOOTH_S * fs))
    envelope = np.convolve(energy, np.ones(width) / width, mode="same")

    # Zero padding lets a maximum on the first or last sample count as a peak.
    refractory = max(1, round(_REFRACTORY_S * fs))
    peaks = scipy.signal.find_peaks(np.pad(envelope, 1), distance=refractory)[0] - 1
    if peaks.size == 0:
        return peaks
    heights = envelope[peaks]

    # Window of each candidate, shifted to stay inside the record: [K, K] membership.
    span = round(_THRESHOLD_WINDOW_S * fs)
    lo = np.clip(peaks - span // 2, 0, max(n - span, 0))
    inside = (peaks[None, :] >= lo[:, None]) & (peaks[None, :] < lo[:, None] + span)
    ranked = -np.sort(-np.where(inside, heights[None, :], -np.inf), axis=1)
    reference = np.where(inside.sum(axis=1) >= 2, ranked[:, min(1, ranked.shape[1] - 1)], ranked[:, 0])
    above = heights > np.maximum(_THRESHOLD_FRACTION * reference, _GLOBAL_FRACTION * reference.max())

    t_wave = round(_T_WAVE_S * fs)
    beats: list[int] = []
    for peak, height, ok in zip(peaks, heights, above):
        if not ok:
            continue
        if beats and peak - beats[-1] < t_wave and height < _T_WAVE_RATIO * envelope[beats[-1]]:
            continue
        beats.append(int(peak))
    if not beats or np.median(envelope[beats]) < _MIN_BEAT_CONTRAST * np.median(envelope):
        return np.zeros(0, dtype=np.int64)

    # Refinement may pull two beats closer than the refractory period: keep the stronger one.
    reach = round(_REFINE_S * fs)
    refined: list[int] = []
    for beat in beats:
        start = max(beat - reach, 0)
        beat = start + int(np.argmax(energy[start : beat + reach + 1]))
        if refined and beat - refined[-1] < refractory:
            if energy[beat] > energy[refined[-1]]:
                refined[-1] = beat
            continue
        refined.append(beat)
    return np.asarray(refined, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _qrs_band(fs: float) -> np.ndarray:
    """Second-order sections of the QRS band-pass; cached, as designing it costs more than using it."""
    return scipy.signal.butter(2, _BAND_HZ, btype="bandpass", fs=fs, output="sos")


def _check_shape(x: np.ndarray, fs: float, name: str) -> None:
    if x.ndim != 2:
        raise BadSignalError(f"record {name}: ECG must be [leads, samples], got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise BadSignalError(f"record {name}: ECG is empty, shape {x.shape}")
    if isinstance(fs, bool) or not isinstance(fs, numbers.Real) or not (np.isfinite(fs) and fs > 2 * _BAND_HZ[1]):
        raise BadSignalError(f"record {name}: sampling rate must be a number above {2 * _BAND_HZ[1]:g} Hz, got {fs!r}")


@dataclasses.dataclass(frozen=True)
class QRSTokenizer(SentenceSpec):
    """Cuts an ECG into heartbeat words (SPEC §2), at the tokenizer's rate `fs`.

    Segmentation, with q_1 < ... < q_N the beats at `fs` and h = token_len // 2 (48):
      - Beat i spans [b_i, b_{i+1}) where b_i = (q_{i-1} + q_i) // 2 (floor: a midpoint sample
        belongs to the later beat, as in the released code); b_1 = q_1 - h and
        b_{N+1} = q_N + token_len - h (the t/2 taken on the open sides).
      - The span is cut to the window [q_i - h, q_i - h + token_len) and to the record [0, n), and
        written into a zero word so that q_i lands on sample h: word[h + k - q_i] = x[k].
        A beat near the record's ends is thus zero-padded where the record has no samples, and
        no word crosses a midpoint. The released code differs in two corner cases: it replaces a
        span longer than t by the whole window (crossing the nearer midpoint), and it left-aligns
        a shorter span whose left part exceeds h (so q_i is not at h).
    Sentence: all beats of `leads[0]`, then of `leads[1]`, ... (in the order of `leads`), cut to
    `max_len` words, then zero words with lead id 0 and time id 0. Lead ids are the
    STANDARD_LEADS index + 1 whatever `leads` holds; time ids are q_i // fs + 1.

    Duration and rate: input at another rate is resampled to `fs` first (polyphase,
    scipy.signal.resample_poly; `resampler="fft"`: scipy.signal.resample, as the released
    preprocessing). A record longer than `max_duration_s` (10 s) is cut to its first
    `max_duration_s` seconds; a shorter one is used as it is, not padded or stretched: it simply
    gives fewer beats (fewer words, more padding), and its time ids stop at its last second. So time
    ids stay in 1..ceil(max_duration_s) for any record length.

    Filter: a spec with a `filter` band-passes every lead after resampling, at `fs`, before the
    detector and the words (`filters`; None, the default, leaves the signal as it is).

    Flat leads: a lead whose peak-to-peak range is below 1e-3 of the record's widest lead carries
    no ECG (a disconnected electrode; Ningbo and CinC 2021 store such all-zero leads). By default it
    is treated as a missing lead: its words are left out, a warning names the record and the lead,
    and `EcgSentence.flat_leads` lists it. The record is rejected (BadSignalError) only when fewer
    than `min_leads` usable leads remain (default 1: a record is rejected when every lead is flat).
    `reject_flat_leads=True` restores the strict rule: any flat lead rejects the record.

    For many records, `sentence_corpus.tokenize_records` spreads the work over processes; the
    tokenizer is a frozen dataclass, so it pickles to the workers as is.

    Its fields are the `SentenceSpec`'s (checked when built): `spec.make_tokenizer()` builds one,
    `tokenizer.spec` gives the plain spec back.
    """

    def tokenize(
        self,
        ecg: np.ndarray,
        fs: float,
        lead_names: Sequence[str] | None = None,
        record_name: str | None = None,
    ) -> EcgSentence:
        """Returns the sentence of one record.

        Args:
          ecg: [leads, samples], any units (words keep them).
          fs: sampling rate of `ecg` in Hz.
          lead_names: name of each row; matched to `self.leads` case-insensitively. Rows with
            other names (e.g. Frank leads) are ignored; a lead of `self.leads` that is absent
            contributes no words (logged). None means exactly the 12 standard leads in order.
          record_name: used in error and log messages.
        Raises:
          TokenizerError (BadSignalError, LeadError, NoBeatsError) naming the record and lead.
        """
        return self.sentence(self.segment(ecg, fs, lead_names, record_name))

    def segment(
        self,
        ecg: np.ndarray,
        fs: float,
        lead_names: Sequence[str] | None = None,
        record_name: str | None = None,
    ) -> Segmentation:
        """The record's leads at the tokenizer's rate, its beats and their spans (see `tokenize`)."""
        name = "<array>" if record_name is None else record_name
        x = np.asarray(ecg, dtype=np.float64)
        _check_shape(x, fs, name)
        leads, rows = self._match_leads(x.shape[0], lead_names, name)
        x = x[rows, : max(1, round(self.max_duration_s * fs))]

        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            raise BadSignalError(f"record {name}: lead {leads[int(np.argmin(finite))]} contains NaN or inf")
        x, leads, flat_leads = self._drop_flat_leads(x, leads, name)

        x = self.at_rate(x, fs)
        beats = detect_qrs(x, self.fs, self.detector, name)
        if beats.size == 0:
            raise NoBeatsError(f"record {name}: the {self.detector} detector found no heartbeat on leads {leads}")
        return Segmentation(x, leads, beats, beat_spans(beats, x.shape[1], self.token_len), flat_leads)

    def _drop_flat_leads(
        self, x: np.ndarray, leads: tuple[str, ...], name: str
    ) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
        """Leaves out flat leads (see the class docstring); raises when too few leads remain."""
        spread = np.ptp(x, axis=1)
        flat = spread <= _FLAT_RELATIVE * spread.max()
        if not flat.any():
            return x, leads, ()
        first = int(np.argmax(flat))
        detail = f"peak-to-peak {spread[first]:.3g} vs {spread.max():.3g} on the widest lead"
        if self.reject_flat_leads:
            raise BadSignalError(f"record {name}: lead {leads[first]} is flat ({detail})")
        flat_leads = tuple(lead for lead, is_flat in zip(leads, flat) if is_flat)
        usable = len(leads) - len(flat_leads)
        if usable < self.min_leads:
            which = "every lead is flat" if usable == 0 else f"only {usable} usable lead(s) remain"
            raise BadSignalError(f"record {name}: {which} (flat: {', '.join(flat_leads)}); min_leads={self.min_leads}")
        log.warning("record %s: flat leads %s contribute no words", name, ", ".join(flat_leads))
        keep = ~flat
        return x[keep], tuple(lead for lead, k in zip(leads, keep) if k), flat_leads

    def _match_leads(
        self, num_rows: int, lead_names: Sequence[str] | None, name: str
    ) -> tuple[tuple[str, ...], list[int]]:
        """Returns the leads of `self.leads` the record has, in that order, and their rows."""
        if lead_names is None:
            if num_rows != len(STANDARD_LEADS):
                raise LeadError(
                    f"record {name}: {num_rows} leads but no lead_names; without names the rows must "
                    f"be the {len(STANDARD_LEADS)} standard leads {STANDARD_LEADS} in order"
                )
            lead_names = STANDARD_LEADS
        if len(lead_names) != num_rows:
            raise LeadError(f"record {name}: {len(lead_names)} lead_names for {num_rows} signal rows")
        canonical = [canonical_lead_name(lead) for lead in lead_names]
        row_of: dict[str, int] = {}
        for row, lead in enumerate(canonical):
            if lead is None:
                continue
            if lead in row_of:
                raise LeadError(f"record {name}: lead {lead} appears twice in {tuple(lead_names)}")
            row_of[lead] = row
        present = tuple(lead for lead in self.leads if lead in row_of)
        missing = [lead for lead in self.leads if lead not in row_of]
        if missing:
            log.warning("record %s: missing leads %s contribute no words", name, ", ".join(missing))
        if not present:
            raise LeadError(f"record {name}: none of the leads {self.leads} is in {tuple(lead_names)}")
        return present, [row_of[lead] for lead in present]

    def at_rate(self, x: np.ndarray, fs: float) -> np.ndarray:
        """[leads, samples] at the tokenizer's rate, cropped to `max_duration_s`, band-passed by the
        spec's `filter` (if any): the signal the detector and the words see."""
        return filters.apply(self._resample(x, fs), self.fs, self.filter)

    def _resample(self, x: np.ndarray, fs: float) -> np.ndarray:
        """Resamples [leads, samples] from `fs` to `self.fs` and crops to `max_duration_s`."""
        ratio = Fraction(self.fs / fs).limit_denominator(1000)
        if ratio != 1 and self.resampler == "fft":
            # The released `resample_signals`: the whole record, to int(samples x target / rate).
            x = scipy.signal.resample(x, int(x.shape[1] * (self.fs / fs)), axis=1)
        elif ratio != 1:
            x = scipy.signal.resample_poly(x, ratio.numerator, ratio.denominator, axis=1, padtype="line")
        return x[:, : max(1, round(self.max_duration_s * self.fs))]

    def sentence(self, segmentation: Segmentation) -> EcgSentence:
        """The sentence of a record's `segment`: its words, padded to max_len."""
        x, leads, beats = segmentation.signal, segmentation.leads, segmentation.beats
        num_leads = x.shape[0]
        half = self.token_len // 2
        starts, ends = segmentation.beat_spans.T

        words = np.zeros((num_leads, beats.size, self.token_len), dtype=np.float32)  # [L, N, t]
        for i, (q, start, end) in enumerate(zip(beats, starts, ends)):
            words[:, i, half + start - q : half + end - q] = x[:, start:end]
        lead_ids = np.repeat([STANDARD_LEADS.index(lead) + 1 for lead in leads], beats.size)
        time_ids = np.tile(np.floor(beats / self.fs).astype(np.int64) + 1, num_leads)

        num_words = min(num_leads * beats.size, self.max_len)
        sentence = EcgSentence(
            words=np.zeros((self.max_len, self.token_len), dtype=np.float32),
            lead_ids=np.zeros(self.max_len, dtype=np.int32),
            time_ids=np.zeros(self.max_len, dtype=np.int32),
            num_words=num_words,
            flat_leads=segmentation.flat_leads,
            leads=leads,
            beats=beats,
            beat_spans=segmentation.beat_spans,
        )
        sentence.words[:num_words] = words.reshape(-1, self.token_len)[:num_words]
        sentence.lead_ids[:num_words] = lead_ids[:num_words]
        sentence.time_ids[:num_words] = time_ids[:num_words]
        return sentence
