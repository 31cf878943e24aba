"""Reading ECG records from disk into one in-memory form.

Three layouts are supported because they cover the datasets HeartLang is used with: WFDB
(`.hea` + `.dat`, e.g. PTB-XL, MIMIC-IV-ECG), the PhysioNet/CinC challenge layout (`.hea` +
`.mat`, e.g. Chapman-Shaoxing-Ningbo, CPSC2018 as CinC 2020 republished it), where the header is
WFDB but the samples sit in a MATLAB file under 'val', and the original CPSC 2018 challenge files
(a `.mat` alone, holding a struct 'ECG' with 'sex', 'age' and 'data', 12 x samples in mV at 500 Hz
in the standard lead order).
wfdb reads such a `.mat` as raw bytes at the header's byte offset, which is only right for
MAT v4 files, so `.mat` samples are read with scipy instead.

Every failure surfaces as a `RecordError` naming the record, so that a dataset builder can skip
a bad file with a useful log line instead of a deep wfdb/numpy traceback.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import numpy as np
import scipy.io
import wfdb

from heartlang_jax import errors

STANDARD_LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")

# Bytes per sample of the WFDB storage formats, to tell a truncated `.dat` apart when wfdb fails
# with "Samples were not loaded correctly". FLAC formats (508/516/524) are absent: their size
# says nothing about the sample count.
_BYTES_PER_SAMPLE = {
    "8": 1.0,
    "16": 2.0,
    "24": 3.0,
    "32": 4.0,
    "61": 2.0,
    "80": 1.0,
    "160": 2.0,
    "212": 1.5,
    "310": 4 / 3,
    "311": 4 / 3,
}


# No surface ECG comes near this: QRS amplitudes are a few mV, pacing spikes and baseline wander
# stay well inside it. A sample beyond it is a unit error (µV read as mV), a wrong gain or a hostile
# file, and a record holding one would dominate the amplitude fit and the words cut from it.
MAX_ABS_MV = 50.0


def check_range(signal: np.ndarray, name: object) -> None:
    """RecordError naming the record if a sample (NaN, the file's "invalid", aside) is beyond
    ±MAX_ABS_MV mV or infinite: the physiological range check every record passes before use."""
    with np.errstate(invalid="ignore"):
        peak = float(np.nanmax(np.abs(signal))) if signal.size and not np.isnan(signal).all() else 0.0
    if not peak <= MAX_ABS_MV:
        raise RecordError(
            f"record {name}: |signal| reaches {peak:.4g} mV, beyond the physiological bound of {MAX_ABS_MV:g} mV "
            "(wrong units or gain in the header, or a corrupt file)"
        )


def canonical_lead_name(name: str) -> str | None:
    """Returns the STANDARD_LEADS spelling of a lead name ('aVR' -> 'AVR'), None if not one."""
    upper = name.strip().upper()
    return upper if upper in STANDARD_LEADS else None


class RecordError(errors.HeartLangError, ValueError):
    """A record that cannot be read; the message names the record and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One ECG recording.

    Attributes:
      name: the record name from the header (e.g. '00001_lr').
      signal: [leads, samples] float32, in mV. Samples the file marks invalid are NaN.
      fs: sampling frequency in Hz.
      lead_names: lead names as written in the header (see `canonical_lead_name`).
    """

    name: str
    signal: np.ndarray  # [leads, samples] float32, mV
    fs: float
    lead_names: tuple[str, ...]


def load_record(path: str | os.PathLike, max_seconds: float | None = None) -> Record:
    """Loads a WFDB or CinC-style `.mat` record; `path` is the record path without extension.

    `max_seconds`: read only the first round(max_seconds x fs) samples (what the tokenizer uses; a
    WFDB `.dat` is then read only that far, wfdb's `sampto`)."""
    path = Path(path)
    header_path = path.with_name(path.name + ".hea")
    if not header_path.is_file() and path.with_name(path.name + ".mat").is_file():
        return _cut(_read_cpsc2018(path), max_seconds)
    if not header_path.is_file():
        raise RecordError(f"record {path}: header file {header_path} not found (give the path without extension)")
    data_files, sampto = _signal_files(path, header_path, max_seconds)
    for file_name in sorted(set(data_files)):
        if not (path.parent / file_name).is_file():
            raise RecordError(f"record {path}: signal file {path.parent / file_name} not found")

    if all(f.endswith(".mat") for f in data_files):
        header = _read_header(path)
        signal = _read_mat(path, header)
    else:
        if sampto is None:  # read whole: a header declaring more than its files hold is refused first
            _check_dat_sizes(path, _read_header(path))
        header, signal = _read_wfdb(path, sampto)

    try:
        fs = float(header.fs)
    except (TypeError, ValueError):
        fs = math.nan
    if not (math.isfinite(fs) and fs > 0):  # NaN passes `fs <= 0`: wfdb misreads some headers so
        raise RecordError(f"record {path}: bad sampling rate {header.fs!r} Hz in the header {header_path}")
    expected = header.sig_len if sampto is None or header.sig_len is None else min(sampto, header.sig_len)
    if header.sig_len is not None and signal.shape != (header.n_sig, expected):
        raise RecordError(
            f"record {path}: signal has shape {signal.shape} (leads, samples), header declares "
            f"({header.n_sig}, {header.sig_len}); the signal file is truncated or corrupt"
        )
    if max_seconds is not None:  # a .mat is read whole; keep what a WFDB read would have
        signal = signal[:, : max(1, round(max_seconds * fs))]
    signal = signal.astype(np.float32)
    check_range(signal, path)  # after the cast: a float64 beyond float32's range is inf here
    return Record(
        name=header.record_name,
        signal=signal,
        fs=float(header.fs),
        lead_names=tuple(name or "" for name in header.sig_name),
    )


def _cut(record: Record, max_seconds: float | None) -> Record:
    if max_seconds is None:
        return record
    return dataclasses.replace(record, signal=record.signal[:, : max(1, round(max_seconds * record.fs))])


def _signal_files(path: Path, header_path: Path, max_seconds: float | None = None) -> tuple[list[str], int | None]:
    """The signal file of each lead, and the `sampto` of `max_seconds` (None: read all), from a
    light read of the header.

    wfdb's own header parser costs as much as reading the samples, so this routes the record
    (WFDB or `.mat`) and checks the files exist without a second full parse.
    """
    try:
        text = header_path.read_text(encoding="latin-1")
    except OSError as e:
        raise RecordError(f"record {path}: cannot read header {header_path}: {e}") from e
    lines = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines or len(lines[0]) < 2 or not lines[0][1].isdigit():
        raise RecordError(f"record {path}: corrupt header {header_path}: no 'name num_signals ...' record line")
    if "/" in lines[0][0]:
        raise RecordError(f"record {path}: multi-segment records are not supported")
    num_signals = int(lines[0][1])
    if num_signals == 0 or len(lines) < 1 + num_signals:
        raise RecordError(
            f"record {path}: corrupt header {header_path}: declares {num_signals} signals, "
            f"has {len(lines) - 1} signal lines"
        )
    files = [fields[0] for fields in lines[1 : 1 + num_signals]]
    # wfdb reads a sampling rate it cannot parse ("-100", "nan") as its default 250 Hz, silently.
    if len(lines[0]) >= 3 and not re.match(r"^(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?(/|\(|$)", lines[0][2]):
        raise RecordError(f"record {path}: bad sampling rate {lines[0][2]!r} in the header {header_path}")
    if len(lines[0]) >= 3 and not float(re.match(r"^[\d.eE+-]+", lines[0][2]).group()) > 0:  # type: ignore[union-attr]
        raise RecordError(f"record {path}: bad sampling rate {lines[0][2]!r} in the header {header_path}")
    sampto = None
    if max_seconds is not None and len(lines[0]) >= 4:  # name n_sig fs[/counter][(base)] sig_len ...
        fs_match = re.match(r"^\d+(?:\.\d*)?", lines[0][2])
        if fs_match and lines[0][3].isdigit() and float(fs_match.group()) > 0:
            sampto = min(max(1, round(max_seconds * float(fs_match.group()))), int(lines[0][3]))
    return files, sampto


def _read_header(path: Path) -> wfdb.Record:
    try:
        return wfdb.rdheader(str(path))
    except Exception as e:  # wfdb raises assorted parse errors (IndexError, HeaderSyntaxError...)
        raise RecordError(f"record {path}: corrupt header {path}.hea: {e}") from e


def _read_wfdb(path: Path, sampto: int | None = None) -> tuple[wfdb.Record, np.ndarray]:
    """Returns the record and its physical signal [leads, samples] (the first `sampto` samples)."""
    try:
        record = wfdb.rdrecord(str(path), physical=True, sampto=sampto)
    except Exception as e:
        # Say why if we can: a header wfdb cannot parse, or a `.dat` shorter than it declares.
        _check_dat_sizes(path, _read_header(path))
        raise RecordError(f"record {path}: cannot read the signal: {e}") from e
    return record, np.asarray(record.p_signal, dtype=np.float64).T


def _check_dat_sizes(path: Path, header: wfdb.Record) -> None:
    """Raises RecordError if a `.dat` file is shorter than the header's sample count implies."""
    if header.sig_len is None:
        return
    files: dict[str, list[int]] = {}
    for channel, file_name in enumerate(header.file_name):
        files.setdefault(file_name, []).append(channel)
    for file_name, channels in files.items():
        fmts = {header.fmt[c] for c in channels}
        if len(fmts) != 1 or (fmt := fmts.pop()) not in _BYTES_PER_SAMPLE:
            continue
        spf = sum((header.samps_per_frame[c] or 1) if header.samps_per_frame else 1 for c in channels)
        offset = (header.byte_offset[channels[0]] or 0) if header.byte_offset else 0
        expected = offset + math.ceil(spf * header.sig_len * _BYTES_PER_SAMPLE[fmt])
        actual = (path.parent / file_name).stat().st_size
        if actual < expected:
            raise RecordError(
                f"record {path}: signal file {file_name} is truncated: {actual} bytes, the header "
                f"implies {expected} ({len(channels)} leads x {header.sig_len} samples, format {fmt})"
            )


def _read_mat(path: Path, header: wfdb.Record) -> np.ndarray:
    """Returns the physical signal of a CinC record: ('val' - baseline) / gain per lead."""
    mat_path = path.parent / header.file_name[0]
    try:
        digital = np.asarray(scipy.io.loadmat(str(mat_path))["val"], dtype=np.float64)
    except Exception as e:  # scipy raises ValueError/TypeError/KeyError on bad or foreign files
        raise RecordError(f"record {path}: cannot read 'val' from {mat_path}: {e}") from e
    if digital.ndim != 2 or digital.shape[0] != header.n_sig:
        raise RecordError(
            f"record {path}: 'val' in {mat_path} has shape {digital.shape}, expected "
            f"({header.n_sig}, samples) as declared in the header"
        )
    gain = np.array([g or 200.0 for g in header.adc_gain], dtype=np.float64)[:, None]  # WFDB default gain
    baseline = np.array([b or 0 for b in header.baseline], dtype=np.float64)[:, None]
    return (digital - baseline) / gain


@dataclasses.dataclass(frozen=True)
class ArrayFile:
    """A `.npy` record (a plain array has no header, so its rate comes with it): a 2-D array in
    mV, [leads, samples] or [samples, leads] (the shorter axis is the leads), of the 12 standard
    leads in STANDARD_LEADS order, or one lead, read as lead I."""

    path: str
    fs: float


def load(source: str | os.PathLike | ArrayFile, max_seconds: float | None = None) -> Record:
    """`load_record` of a record path, or `load_array` of an `ArrayFile`; `max_seconds` as in
    `load_record` (an array is cut after it is read)."""
    if not isinstance(source, ArrayFile):
        return load_record(source, max_seconds=max_seconds)
    record = load_array(source)
    if max_seconds is not None:
        record = dataclasses.replace(record, signal=record.signal[:, : max(1, round(max_seconds * record.fs))])
    return record


def load_array(source: ArrayFile) -> Record:
    path = Path(source.path)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # OSError, ValueError (not an .npy, or a pickled object array)
        raise RecordError(f"record {path}: cannot read the array: {e}") from e
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.number) or data.size == 0:
        raise RecordError(
            f"record {path}: expected a 2-D numeric array [leads, samples], got {data.dtype} {data.shape}"
        )
    signal = data if data.shape[0] <= data.shape[1] else data.T
    if signal.shape[0] not in (1, len(STANDARD_LEADS)):
        raise RecordError(
            f"record {path}: {signal.shape[0]} leads; a .npy record holds the 12 standard leads (I, II, III, aVR, aVL, "
            f"aVF, V1-V6, in that order) or one lead (read as I), as [leads, samples] or [samples, leads]"
        )
    if not source.fs or not source.fs > 0:
        raise RecordError(f"record {path}: no sampling frequency (an `fs` column, or data.csv_fs)")
    leads = STANDARD_LEADS if signal.shape[0] == len(STANDARD_LEADS) else ("I",)
    return Record(name=path.stem, signal=signal.astype(np.float32), fs=float(source.fs), lead_names=leads)


CPSC2018_FS = 500.0  # the original CPSC 2018 files carry no header: 500 Hz, the 12 standard leads


def _read_cpsc2018(path: Path) -> Record:
    """An original CPSC 2018 record: `<name>.mat` with a struct 'ECG' whose 'data' is [12, n] mV."""
    mat_path = path.with_name(path.name + ".mat")
    try:
        ecg = scipy.io.loadmat(str(mat_path))["ECG"][0, 0]
        data = np.asarray(ecg["data"], dtype=np.float64)
    except Exception as e:  # a CinC 'val' file without its header, or not a MATLAB file at all
        raise RecordError(
            f"record {path}: no header {path}.hea, and {mat_path} is not an original CPSC 2018 file "
            f"(a struct 'ECG' with a 'data' field): {e!r}"
        ) from e
    if data.ndim != 2 or data.shape[0] != len(STANDARD_LEADS) or data.shape[1] == 0:
        raise RecordError(f"record {path}: 'ECG.data' in {mat_path} has shape {data.shape}, expected (12, samples)")
    signal = data.astype(np.float32)
    check_range(signal, path)
    return Record(name=path.name, signal=signal, fs=CPSC2018_FS, lead_names=STANDARD_LEADS)
