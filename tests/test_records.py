"""Tests for heartlang_jax.ecg.records: loading WFDB and CinC `.mat` records, and clear errors."""

import pathlib
import shutil

import numpy as np
import pytest
import scipy.io
import wfdb

from heartlang_jax.ecg import records

_MINI = pathlib.Path(__file__).resolve().parents[1] / "heartlang_jax" / "data" / "ptbxl_mini"
_RECORD = _MINI / "records100" / "00000" / "00001_lr"
_SHARED_500HZ = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ptbxl-mini" / "records500"


@pytest.fixture
def record_copy(tmp_path):
    """A writable copy of bundled record 00001_lr in tmp_path; returns its path without extension."""
    for suffix in (".hea", ".dat"):
        shutil.copy(_RECORD.with_suffix(suffix), tmp_path / f"00001_lr{suffix}")
    return tmp_path / "00001_lr"


@pytest.mark.parametrize(
    "name, expected",
    [("I", "I"), ("aVR", "AVR"), ("avl", "AVL"), (" V6 ", "V6"), ("vx", None), ("VY", None), ("MLII", None)],
)
def test_canonical_lead_name(name, expected):
    assert records.canonical_lead_name(name) == expected


def test_loads_bundled_wfdb_record_in_mv():
    record = records.load_record(_RECORD)
    reference = wfdb.rdrecord(str(_RECORD))
    assert record.name == "00001_lr"
    assert record.fs == 100.0
    assert record.lead_names == records.STANDARD_LEADS
    assert record.signal.dtype == np.float32 and record.signal.shape == (12, 1000)
    np.testing.assert_allclose(record.signal, reference.p_signal.T, atol=1e-6)


def test_loads_500hz_record():
    path = _SHARED_500HZ / "00000" / "00001_hr"
    if not path.with_suffix(".hea").exists():
        pytest.skip("500 Hz sample not available")
    record = records.load_record(path)
    assert record.fs == 500.0 and record.signal.shape == (12, 5000)


def test_cinc_mat_record_equals_wfdb_original(tmp_path):
    """A challenge-style record (int16 'val' in a .mat, gains in the header) loads like WFDB."""
    original = wfdb.rdrecord(str(_RECORD), physical=False)
    digital = original.d_signal.T.astype(np.int16)  # [leads, samples]
    scipy.io.savemat(tmp_path / "A0001.mat", {"val": digital})
    lines = ["A0001 12 100 1000 05-Feb-2020 11:39:16"]
    lines += [f"A0001.mat 16+24 1000/mV 16 0 {digital[i, 0]} 0 0 {name}" for i, name in enumerate(original.sig_name)]
    lines += ["#Age: 56", "#Dx: 426783006"]
    (tmp_path / "A0001.hea").write_text("\n".join(lines) + "\n")

    loaded = records.load_record(tmp_path / "A0001")
    wfdb_loaded = records.load_record(_RECORD)
    assert loaded.name == "A0001"
    assert loaded.fs == wfdb_loaded.fs and loaded.lead_names == wfdb_loaded.lead_names
    np.testing.assert_allclose(loaded.signal, wfdb_loaded.signal, atol=1e-6)


def test_unreadable_mat_is_a_record_error(tmp_path):
    (tmp_path / "A0002.mat").write_bytes(b"this is not a MATLAB file" * 10)
    (tmp_path / "A0002.hea").write_text("A0002 1 500 10\nA0002.mat 16+24 1000/mV 16 0 0 0 0 I\n")
    with pytest.raises(records.RecordError, match=r"A0002.*cannot read 'val'"):
        records.load_record(tmp_path / "A0002")


def test_missing_header(tmp_path):
    with pytest.raises(records.RecordError, match=r"nothere.*header file .* not found"):
        records.load_record(tmp_path / "nothere")


def test_missing_dat(record_copy):
    record_copy.with_suffix(".dat").unlink()
    with pytest.raises(records.RecordError, match=r"00001_lr.*signal file .*00001_lr\.dat not found"):
        records.load_record(record_copy)


@pytest.mark.parametrize(
    "header",
    [
        "this is not a header\n",  # no 'name num_signals' record line
        "",
        "00001_lr 12 100 1000\n00001_lr.dat 16 1000.0(0)/mV\n",  # 1 of 12 signal lines
        "00001_lr 12 100 1000\n" + "00001_lr.dat sixteen gain!/mV x y z\n" * 12,  # wfdb cannot parse it
    ],
)
def test_corrupt_header(record_copy, header):
    record_copy.with_suffix(".hea").write_text(header)
    with pytest.raises(records.RecordError, match=r"00001_lr.*corrupt header"):
        records.load_record(record_copy)


@pytest.mark.parametrize("keep_bytes", [24 * 500, 24 * 500 + 7, 0])
def test_truncated_dat(record_copy, keep_bytes):
    dat = record_copy.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:keep_bytes])
    with pytest.raises(records.RecordError, match=rf"00001_lr.*truncated: {keep_bytes} bytes.*24000"):
        records.load_record(record_copy)
