"""The band-pass a sentence spec may put in front of the tokenizer (`SentenceSpec.filter`).

None (the default, the paper's) leaves the signal as it is. A `BandPass` filters every lead at the
tokenizer's rate (`SentenceSpec.fs`, 100 Hz), after resampling, before the QRS detector and the
words see it: the place the released preprocessing filters (its scripts resample 500 -> 100 Hz,
then filter at 100 Hz), so a 100 Hz spec reproduces the released coefficients exactly.

Kinds:
  - "butter_filtfilt": `scipy.signal.butter(order, [low, high], btype="band", fs=fs)`, applied
    forwards and backwards with `scipy.signal.filtfilt` (zero phase; the released
    `bandpass_filter` of `MIMIC-IV/mimic_preprocess.py` and `CSN/make_csn_datasets.py`).
  - "fir_filtfilt": a linear-phase FIR band-pass of `order + 1` taps,
    `scipy.signal.firwin(order + 1, [low, high], pass_zero=False, fs=fs)`, applied with `filtfilt`
    (the released `CPSC2018/make_cpsc_dataset.py` designs a `firwin` + `filtfilt` low-pass,
    `apply_fir_filter_to_leads`, but never calls it: its released CPSC 2018 data are unfiltered).

A band-pass has no DC gain, so filtering after the amplitude standardization `(x - mean) / std`
gives the filtered signal divided by std: the datasets fit that std on filtered signals
(`sentence_corpus.amplitude_moments`).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import scipy.signal

FilterKind = Literal["butter_filtfilt", "fir_filtfilt"]
KINDS: tuple[FilterKind, ...] = ("butter_filtfilt", "fir_filtfilt")


@dataclasses.dataclass(frozen=True)
class BandPass:
    """A zero-phase band-pass from `low` to `high` Hz of `order` (Butterworth order, or FIR taps - 1)."""

    low: float
    high: float
    order: int
    kind: FilterKind = "butter_filtfilt"

    def __post_init__(self) -> None:
        for field in ("low", "high"):
            value = getattr(self, field)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not float(value) > 0:
                raise ValueError(f"BandPass.{field} must be a positive number of Hz, got {value!r}")
        if not self.low < self.high:
            raise ValueError(f"BandPass.low must be below BandPass.high, got {self.low!r} and {self.high!r}")
        if not isinstance(self.order, numbers.Integral) or isinstance(self.order, bool) or self.order < 1:
            raise ValueError(f"BandPass.order must be a positive int, got {self.order!r}")
        if self.kind not in KINDS:
            raise ValueError(f"BandPass.kind must be one of {KINDS}, got {self.kind!r}")

    def check_rate(self, fs: float) -> None:
        if not self.high < fs / 2:
            raise ValueError(f"BandPass.high ({self.high:g} Hz) must be below half the sentence rate fs={fs:g} Hz")

    def to_dict(self) -> dict[str, Any]:
        return {"low": float(self.low), "high": float(self.high), "order": int(self.order), "kind": self.kind}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BandPass:
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


@functools.lru_cache(maxsize=16)
def coefficients(band: BandPass, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """(b, a) of the band-pass at rate `fs` (a = [1] for FIR); cached, designing costs more than using."""
    band.check_rate(fs)
    if band.kind == "butter_filtfilt":
        b, a = scipy.signal.butter(band.order, [band.low, band.high], btype="band", fs=fs)
        return b, a
    taps = scipy.signal.firwin(band.order + 1, [band.low, band.high], pass_zero=False, fs=fs)
    return taps, np.ones(1)


def apply(signal: np.ndarray, fs: float, band: BandPass | None) -> np.ndarray:
    """`signal` [..., samples] filtered along its last axis at rate `fs` (float64); itself when `band` is None.

    filtfilt pads each end by 3 x the filter length (odd extension); a record shorter than that is
    padded only as far as it reaches, so short records still filter.
    """
    if band is None:
        return signal
    b, a = coefficients(band, float(fs))
    x = np.asarray(signal, dtype=np.float64)
    padlen = min(3 * max(len(a), len(b)), x.shape[-1] - 1)
    return scipy.signal.filtfilt(b, a, x, axis=-1, padlen=max(padlen, 0))


# The released preprocessing, per dataset (shared/reference/heartlang-released/datasets/dataset_preprocess/):
#   MIMIC-IV/mimic_preprocess.py: process_batch -> bandpass_filter(reordered_data, lowcut=0.67, highcut=40,
#     fs=target_fs) after resample_signals(..., 500, 100); bandpass_filter: butter(order=5, [low/nyq, high/nyq],
#     btype="band"), filtfilt(b, a, ...) per lead.
#   CSN/make_csn_datasets.py: bandpass_filter(resample_ecg_data, 0.67, 40, 100), the same function (order=5).
#   CPSC2018/make_cpsc_dataset.py: none (apply_fir_filter_to_leads is defined, never called).
#   PTB-XL: none (the PTB-XL benchmark code's files, standardized only).
RELEASED_BANDPASS = BandPass(low=0.67, high=40.0, order=5, kind="butter_filtfilt")
RELEASED_FILTERS: dict[str, BandPass | None] = {
    "mimic_iv_ecg": RELEASED_BANDPASS,
    "csn": RELEASED_BANDPASS,
    "cpsc2018": None,
    "ptbxl": None,
    # Your own data: as the released fine-tuning recipe (PTB-XL), unfiltered.
    "csv": None,
}
