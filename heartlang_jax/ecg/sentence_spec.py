"""The sentence spec: how a record is cut into an ECG sentence, in one frozen dataclass.

It is what a dataset's info stores (`info.metadata["sentence"]`), what a run folder's model.json
records and what `heartlang_jax.load` rebuilds its tokenizer from: `SentenceSpec.to_dict()` is the
JSON form, `SentenceSpec.from_dict` reads it back (also the forms written before every field was
stored). `QRSTokenizer` is a SentenceSpec with the methods that cut (`tokenizer.py`).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any, Literal

from heartlang_jax.ecg.filters import RELEASED_BANDPASS, BandPass
from heartlang_jax.ecg.records import STANDARD_LEADS, canonical_lead_name

Detector = Literal["multilead", "xqrs"]
DEFAULT_DETECTOR: Detector = "multilead"
DETECTORS: tuple[Detector, ...] = ("multilead", "xqrs")
# How a record at another rate is brought to `fs`: "poly" scipy.signal.resample_poly (ours, the
# default), "fft" scipy.signal.resample to int(samples x fs / rate) samples (the released
# preprocessing's `resample_signals`, MIMIC-IV/mimic_preprocess.py, CSN/make_csn_datasets.py,
# CPSC2018/make_cpsc_dataset.py; it differs from "poly" most near the record's ends, where the FFT
# treats the record as periodic, enough to change released word ids: issue 23).
Resampler = Literal["poly", "fft"]
RESAMPLERS: tuple[Resampler, ...] = ("poly", "fft")
# The QRS band-pass's upper edge (Hz); a rate must exceed twice it (tokenizer.py).
QRS_BAND_TOP_HZ = 15.0


@dataclasses.dataclass(frozen=True)
class SentenceSpec:
    """Which leads (in sentence order), how many words of how many samples at which rate, which
    QRS detector, how long a record is read, when flat leads reject a record, and the band-pass
    in front of the tokenizer (`filter`: None = none, the paper's; see `filters`), and how a record
    at another rate is resampled (`resampler`, `RESAMPLERS`). See
    `tokenizer.QRSTokenizer` for what each does. Checked when built."""

    fs: float = 100.0
    max_len: int = 256
    token_len: int = 96
    detector: Detector = DEFAULT_DETECTOR
    leads: tuple[str, ...] = STANDARD_LEADS
    max_duration_s: float = 10.0
    min_leads: int = 1
    reject_flat_leads: bool = False
    filter: BandPass | None = None
    resampler: Resampler = "poly"

    def __post_init__(self) -> None:
        # Checked here: a wrong type would otherwise fail deep in numpy/scipy, or not at all.
        what = type(self).__name__
        for field in ("fs", "max_duration_s"):
            value = getattr(self, field)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not float(value) > 0:
                raise ValueError(f"{what}.{field} must be a positive number, got {value!r}")
        if not self.fs > 2 * QRS_BAND_TOP_HZ:
            raise ValueError(f"{what}.fs must be above {2 * QRS_BAND_TOP_HZ:g} Hz (QRS band-pass), got {self.fs!r}")
        for field in ("max_len", "token_len", "min_leads"):
            value = getattr(self, field)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{what}.{field} must be a positive int, got {value!r}")
        if not isinstance(self.reject_flat_leads, bool):
            raise ValueError(f"{what}.reject_flat_leads must be a bool, got {self.reject_flat_leads!r}")
        if not isinstance(self.leads, (tuple, list)) or not all(isinstance(lead, str) for lead in self.leads):
            raise ValueError(f"{what}.leads must be a tuple of lead names, got {self.leads!r}")
        canonical = tuple(canonical_lead_name(lead) for lead in self.leads)
        if not canonical or None in canonical or len(set(canonical)) != len(canonical):
            raise ValueError(f"leads must be distinct names from {STANDARD_LEADS}, got {self.leads}")
        object.__setattr__(self, "leads", canonical)
        if self.detector not in DETECTORS:
            raise ValueError(f"unknown QRS detector {self.detector!r}; use 'multilead' or 'xqrs'")
        if isinstance(self.filter, Mapping):  # the JSON form, or dataclasses.asdict's
            object.__setattr__(self, "filter", BandPass.from_dict(self.filter))
        if self.filter is not None:
            if not isinstance(self.filter, BandPass):
                raise ValueError(f"{what}.filter must be None or a filters.BandPass, got {self.filter!r}")
            self.filter.check_rate(float(self.fs))
        if self.resampler not in RESAMPLERS:
            raise ValueError(f"{what}.resampler must be one of {RESAMPLERS}, got {self.resampler!r}")

    @property
    def spec(self) -> SentenceSpec:
        """The plain spec (a QRSTokenizer's, without its methods)."""
        return SentenceSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SentenceSpec)})

    def make_tokenizer(self):
        """The QRSTokenizer that cuts sentences by this spec."""
        from heartlang_jax.ecg.tokenizer import QRSTokenizer

        return QRSTokenizer(**dataclasses.asdict(self.spec))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in dataset info and model.json (the same keys and types as ever;
        `filter` only when there is one and `resampler` only when not "poly", so a spec without
        them reads as before)."""
        values = {
            "leads": list(self.leads),
            "max_len": int(self.max_len),
            "token_len": int(self.token_len),
            "fs": int(self.fs) if float(self.fs).is_integer() else float(self.fs),
            "detector": self.detector,
            "max_duration_s": float(self.max_duration_s),
            "min_leads": int(self.min_leads),
            "reject_flat_leads": bool(self.reject_flat_leads),
        }
        if self.filter is not None:
            values["filter"] = self.filter.to_dict()
        if self.resampler != "poly":
            values["resampler"] = self.resampler
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SentenceSpec:
        """The spec of a `to_dict` form; keys it lacks (older datasets and run folders stored only
        leads, max_len, token_len, fs and detector) take the defaults they had then, and keys it
        does not know are ignored."""
        names = {f.name for f in dataclasses.fields(SentenceSpec)}
        kwargs = {k: v for k, v in values.items() if k in names}
        if "leads" in kwargs:
            kwargs["leads"] = tuple(kwargs["leads"])
        return SentenceSpec(**kwargs)


# The released code's tokenization (QRSTokenizer.py): XQRS on lead I at 100 Hz, 256 words of 96
# samples, 12 leads.
RELEASED = SentenceSpec(detector="xqrs")
# What the released weights read: that tokenization of MIMIC-IV-ECG band-passed as its released
# preprocessing does (0.67-40 Hz, 5th-order Butterworth, filtfilt at 100 Hz; filters.RELEASED_FILTERS),
# after its FFT resampling from 500 Hz (`resampler`; with "poly" a random released-size VQ-HBR gave
# 92.2% of the released word ids on 16 raw records, with "fft" 100%: benchmarks/RESULTS.md).
RELEASED_MIMIC = SentenceSpec(detector="xqrs", filter=RELEASED_BANDPASS, resampler="fft")
