"""Bad and unusual records, each through the dataset builder and through the public tokenizer API.

A full PTB-XL build meets broken files, and users feed the tokenizer records from other devices.
Every case must end in a correct sentence, or in an error (API) / a logged skip (builder) that
names the record; never a deep numpy traceback or a silently wrong sentence. The cases are written
here, from one bundled record, into a PTB-XL-shaped folder the builder reads as its manual_dir.
Config mistakes are covered by test_stage_configs.py.
"""

from __future__ import annotations

import csv
import logging
import pathlib
import shutil

import numpy as np
import pytest
import scipy.io
import scipy.signal
import wfdb

from heartlang_jax.data import bundled_sample_dir
from heartlang_jax.ecg import records
from heartlang_jax.ecg import tokenizer as tok
from heartlang_jax.ecg.records import STANDARD_LEADS

SOURCE_ID = 1  # bundled record every case is made from
# ecg_id -> case; ids are rows of the bundled database (their labels), the files are ours.
CASES = {
    1: "original",
    2: "corrupt_header",
    3: "truncated_dat",
    4: "all_nan",
    5: "flat_lead",
    6: "no_beat",
    7: "fs_250",
    8: "fs_500",
    9: "fs_1000",
    10: "fifteen_leads",
    11: "missing_leads",
    12: "short_6s",
    13: "long_15s",
    14: "cinc_mat",
    15: "all_flat",
}
# case -> (error class, pattern its message matches after the record name).
ERRORS = {
    "corrupt_header": (records.RecordError, "corrupt header"),
    "truncated_dat": (records.RecordError, "is truncated"),
    "all_nan": (tok.BadSignalError, "lead I contains NaN"),
    "all_flat": (tok.BadSignalError, "every lead is flat"),
    "no_beat": (tok.NoBeatsError, "found no heartbeat"),
}
# case -> (error, pattern) under the strict flat-lead rule (`reject_flat_leads=True`); by default a
# flat lead is left out like a missing one (test_api_flat_lead_is_left_out_with_a_warning).
STRICT_ERRORS = {"flat_lead": (tok.BadSignalError, "lead AVL is flat")}
ID = {case: ecg_id for ecg_id, case in CASES.items()}
KEPT_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")  # the 8 independent leads
# Validation and test each get a good and a bad record; the rest are training folds.
FOLDS = {4: 9, 12: 9, 6: 10, 13: 10}


def _name(ecg_id: int) -> str:
    return f"{ecg_id:05d}_lr"


def _path(root: pathlib.Path, ecg_id: int) -> pathlib.Path:
    return root / "records100" / "00000" / _name(ecg_id)


def _write_wfdb(folder: pathlib.Path, name: str, signal: np.ndarray, fs: float, lead_names) -> None:
    """[leads, samples] mV at 1 µV resolution, as PTB-XL stores it; NaN becomes WFDB's invalid marker."""
    wfdb.wrsamp(
        name, fs=fs, units=["mV"] * len(lead_names), sig_name=list(lead_names), p_signal=signal.T,
        fmt=["16"] * len(lead_names), adc_gain=[1000.0] * len(lead_names), baseline=[0] * len(lead_names),
        write_dir=str(folder),
    )  # fmt: skip


def _write_cinc(folder: pathlib.Path, name: str, signal: np.ndarray, fs: float) -> None:
    """The PhysioNet/CinC challenge layout: int16 'val' in a .mat, gains in a WFDB header."""
    digital = np.round(signal * 1000).astype(np.int16)
    scipy.io.savemat(folder / f"{name}.mat", {"val": digital})
    lines = [f"{name} {len(digital)} {fs:g} {digital.shape[1]} 05-Feb-2020 11:39:16"]
    lines += [f"{name}.mat 16+24 1000/mV 16 0 {digital[i, 0]} 0 0 {lead}" for i, lead in enumerate(STANDARD_LEADS)]
    (folder / f"{name}.hea").write_text("\n".join(lines + ["#Age: 56", "#Dx: 426783006"]) + "\n")


def _write_case(folder: pathlib.Path, ecg_id: int, case: str, source: records.Record) -> None:
    name, x = _name(ecg_id), source.signal.astype(np.float64)
    if case == "corrupt_header":
        _write_wfdb(folder, name, x, 100, STANDARD_LEADS)
        (folder / f"{name}.hea").write_text("this is not a WFDB header\n")
    elif case == "truncated_dat":
        _write_wfdb(folder, name, x, 100, STANDARD_LEADS)
        dat = folder / f"{name}.dat"
        dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 3])
    elif case == "all_nan":
        _write_wfdb(folder, name, np.full_like(x, np.nan), 100, STANDARD_LEADS)
    elif case == "flat_lead":
        x[STANDARD_LEADS.index("AVL")] = 0.0
        _write_wfdb(folder, name, x, 100, STANDARD_LEADS)
    elif case == "all_flat":
        _write_wfdb(folder, name, np.zeros_like(x), 100, STANDARD_LEADS)
    elif case == "no_beat":
        _write_wfdb(folder, name, 0.02 * np.random.default_rng(0).standard_normal(x.shape), 100, STANDARD_LEADS)
    elif case.startswith("fs_"):
        fs = int(case[3:])
        _write_wfdb(folder, name, scipy.signal.resample_poly(x, fs, 100, axis=1), fs, STANDARD_LEADS)
    elif case == "fifteen_leads":
        frank = np.stack([x[0], x[5], -x[7]])  # stand-ins for vx, vy, vz
        names = [lead.lower() if lead.startswith("AV") else lead for lead in STANDARD_LEADS]
        _write_wfdb(folder, name, np.concatenate([x, frank]), 100, names + ["vx", "vy", "vz"])
    elif case == "missing_leads":
        _write_wfdb(folder, name, x[[STANDARD_LEADS.index(lead) for lead in KEPT_LEADS]], 100, KEPT_LEADS)
    elif case == "short_6s":
        _write_wfdb(folder, name, x[:, :600], 100, STANDARD_LEADS)
    elif case == "long_15s":
        _write_wfdb(folder, name, np.concatenate([x, x[:, :500]], axis=1), 100, STANDARD_LEADS)
    elif case == "cinc_mat":
        _write_cinc(folder, name, x, 100)
    else:
        assert case == "original"
        _write_wfdb(folder, name, x, 100, STANDARD_LEADS)


@pytest.fixture(scope="module")
def source() -> records.Record:
    return records.load_record(_path(bundled_sample_dir(), SOURCE_ID))


@pytest.fixture(scope="module")
def ptbxl_dir(tmp_path_factory, source) -> pathlib.Path:
    """A PTB-XL folder whose records are the cases (the amplitude fit must pass over the bad ones)."""
    root = tmp_path_factory.mktemp("bad_ptbxl")
    folder = root / "records100" / "00000"
    folder.mkdir(parents=True)
    bundled = bundled_sample_dir()
    shutil.copy(bundled / "scp_statements.csv", root)
    with open(bundled / "ptbxl_database.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = [row for row in reader if int(row["ecg_id"]) in CASES]
    with open(root / "ptbxl_database.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows({**row, "strat_fold": str(FOLDS.get(int(row["ecg_id"]), 1))} for row in rows)
    for ecg_id, case in CASES.items():
        _write_case(folder, ecg_id, case, source)
    return root


def _build(data_dir: pathlib.Path, ptbxl_dir: pathlib.Path):
    import tensorflow_datasets as tfds

    from tfds_ptbxl.ptbxl import ptbxl_dataset_builder

    builder = ptbxl_dataset_builder.Builder(data_dir=str(data_dir), file_format="array_record", num_workers=1)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(ptbxl_dir)))
    return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory, ptbxl_dir):
    return _build(tmp_path_factory.mktemp("tfds"), ptbxl_dir)


def _tokenize(path: pathlib.Path, mean: float = 0.0, std: float = 1.0, **tokenizer):
    """The public API: load a record, tokenize it (standardized as the builder does)."""
    record = records.load_record(path)
    signal = ((record.signal - mean) / std).astype(np.float32)
    return tok.QRSTokenizer(**tokenizer).tokenize(
        signal, record.fs, lead_names=record.lead_names, record_name=record.name
    )


def _lead_words(sentence: tok.EcgSentence, lead: str) -> np.ndarray:
    return sentence.words[: sentence.num_words][
        sentence.lead_ids[: sentence.num_words] == STANDARD_LEADS.index(lead) + 1
    ]


def _assert_same_sentence(actual: tok.EcgSentence, expected: tok.EcgSentence) -> None:
    assert actual.num_words == expected.num_words
    for field in ("words", "lead_ids", "time_ids"):
        np.testing.assert_array_equal(getattr(actual, field), getattr(expected, field), err_msg=field)


@pytest.fixture(scope="module")
def reference(source) -> tok.EcgSentence:
    return tok.QRSTokenizer().tokenize(source.signal, source.fs, lead_names=source.lead_names)


@pytest.mark.parametrize("case", list(ERRORS))
def test_api_raises_an_error_naming_the_record(ptbxl_dir, case):
    error, pattern = ERRORS[case]
    with pytest.raises(error, match=rf"{_name(ID[case])}\b.*{pattern}"):
        _tokenize(_path(ptbxl_dir, ID[case]))


@pytest.mark.parametrize("case", list(STRICT_ERRORS))
def test_api_strict_flat_rule_raises_an_error_naming_the_record(ptbxl_dir, case):
    error, pattern = STRICT_ERRORS[case]
    with pytest.raises(error, match=rf"{_name(ID[case])}\b.*{pattern}"):
        _tokenize(_path(ptbxl_dir, ID[case]), reject_flat_leads=True)


def test_api_flat_lead_is_left_out_with_a_warning(ptbxl_dir, reference, caplog):
    with caplog.at_level(logging.WARNING, logger=tok.__name__):
        sentence = _tokenize(_path(ptbxl_dir, ID["flat_lead"]))
    assert f"record {_name(ID['flat_lead'])}: flat leads AVL contribute no words" in caplog.text
    assert sentence.flat_leads == ("AVL",)
    others = [lead for lead in STANDARD_LEADS if lead != "AVL"]
    assert sorted(set(sentence.lead_ids[: sentence.num_words])) == [STANDARD_LEADS.index(x) + 1 for x in others]
    _assert_same_beats(sentence, reference, others)


@pytest.mark.parametrize("case", ["fifteen_leads", "long_15s", "cinc_mat"])
def test_api_gives_the_sentence_of_the_standard_record(ptbxl_dir, reference, case):
    """Extra Frank leads are ignored, a longer record is cut to its first 10 s, a .mat record reads
    like its WFDB original: each must give exactly the original's sentence."""
    _assert_same_sentence(_tokenize(_path(ptbxl_dir, ID[case])), reference)


@pytest.mark.parametrize("case", ["fs_250", "fs_500", "fs_1000"])
def test_api_resamples_other_rates_to_the_100hz_sentence(ptbxl_dir, reference, case):
    sentence = _tokenize(_path(ptbxl_dir, ID[case]))
    assert sentence.num_words == reference.num_words
    np.testing.assert_array_equal(sentence.lead_ids, reference.lead_ids)
    np.testing.assert_array_equal(sentence.time_ids, reference.time_ids)
    n = reference.num_words
    error = np.sqrt(np.mean((sentence.words[:n] - reference.words[:n]) ** 2))
    assert error < 0.05 * np.sqrt(np.mean(reference.words[:n] ** 2))


def _assert_same_beats(sentence: tok.EcgSentence, reference: tok.EcgSentence, leads) -> None:
    """Beat for beat the reference's words of `leads`; detection pools other leads here, so a
    peak may move a sample, and words are compared by correlation."""
    for lead in leads:
        words, expected = _lead_words(sentence, lead), _lead_words(reference, lead)
        assert words.shape == expected.shape, lead
        assert np.corrcoef(words.ravel(), expected.ravel())[0, 1] > 0.95, lead


def test_api_missing_leads_give_words_of_the_present_ones_and_a_warning(ptbxl_dir, reference, caplog):
    with caplog.at_level(logging.WARNING, logger=tok.__name__):
        sentence = _tokenize(_path(ptbxl_dir, ID["missing_leads"]))
    assert f"record {_name(ID['missing_leads'])}: missing leads III, AVR, AVL, AVF contribute no words" in caplog.text
    present = [STANDARD_LEADS.index(lead) + 1 for lead in KEPT_LEADS]
    assert sorted(set(sentence.lead_ids[: sentence.num_words])) == present
    assert sentence.num_words == len(KEPT_LEADS) * len(_lead_words(reference, "I"))
    _assert_same_beats(sentence, reference, KEPT_LEADS)


def test_api_short_record_gives_the_beats_of_its_six_seconds(ptbxl_dir, reference):
    sentence = _tokenize(_path(ptbxl_dir, ID["short_6s"]))
    n = sentence.num_words
    assert sentence.time_ids[:n].max() == 6
    beats = reference.time_ids[reference.lead_ids == 1]
    assert n == 12 * np.sum(beats <= 6)
    # The words away from the cut are those of the full record; the last beat's peak (and its
    # border with the one before) may move a sample at the record's new end.
    for lead in STANDARD_LEADS:
        words = _lead_words(sentence, lead)
        np.testing.assert_array_equal(words[:-2], _lead_words(reference, lead)[: len(words) - 2], err_msg=lead)


@pytest.mark.parametrize(
    "field, value", [("fs", "100"), ("max_len", 2.5), ("token_len", 0), ("max_duration_s", None), ("leads", "II")]
)
def test_api_tokenizer_config_of_wrong_type_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"QRSTokenizer\.{field} must be"):
        tok.QRSTokenizer(**{field: value})


def test_api_unknown_tokenizer_field_is_named():
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_length'"):
        tok.QRSTokenizer(max_length=256)


def test_builder_keeps_the_good_records_and_names_every_skip(built, ptbxl_dir):
    skipped = built.info.metadata["skipped"]
    assert {r["ecg_id"]: r["kind"] for r in skipped["records"]} == {
        i: ERRORS[c][0].__name__ for i, c in CASES.items() if c in ERRORS
    }
    for entry in skipped["records"]:
        assert _name(entry["ecg_id"]) in entry["message"]
    stored = {int(e["ecg_id"]): e for split in built.as_data_source().values() for e in split}
    assert sorted(stored) == [i for i, c in CASES.items() if c not in ERRORS]
    assert built.info.metadata["flat_leads"] == {
        "total": 1,
        "by_lead": {"AVL": 1},
        "records": [{"ecg_id": ID["flat_lead"], "leads": ["AVL"]}],
    }

    # Each kept record is the API's sentence of the standardized record (float16 storage).
    amplitude = built.info.metadata["amplitude"]
    for ecg_id, example in stored.items():
        expected = _tokenize(_path(ptbxl_dir, ecg_id), mean=amplitude["mean"], std=amplitude["std"])
        assert example["num_words"] == expected.num_words, CASES[ecg_id]
        np.testing.assert_array_equal(example["lead_ids"], expected.lead_ids, err_msg=CASES[ecg_id])
        np.testing.assert_array_equal(example["time_ids"], expected.time_ids, err_msg=CASES[ecg_id])
        np.testing.assert_allclose(example["words"].astype(np.float32), expected.words, rtol=1e-3, atol=1e-3)


def test_builder_amplitude_fit_passes_over_unreadable_and_nan_records(built, ptbxl_dir):
    """One NaN record in the fit would make every sentence NaN."""
    signals = []
    for ecg_id, case in CASES.items():
        if FOLDS.get(ecg_id, 1) <= 8 and case not in ("corrupt_header", "truncated_dat", "all_nan"):
            record = records.load_record(_path(ptbxl_dir, ecg_id))
            standard = [i for i, lead in enumerate(record.lead_names) if records.canonical_lead_name(lead)]
            signals.append(record.signal[standard])
    flat = np.concatenate([s.astype(np.float64).ravel() for s in signals])
    amplitude = built.info.metadata["amplitude"]
    assert amplitude["mean"] == pytest.approx(flat.mean(), rel=1e-6)
    assert amplitude["std"] == pytest.approx(flat.std(), rel=1e-6)


@pytest.mark.parametrize(
    "keep, message",
    [
        ({1, 4, 13}, r"all 1 records of strat_fold \[9\] were skipped"),  # validation: the NaN record only
        ({1, 12}, r"ptbxl_database.csv has no record in the test split"),
    ],
)
def test_builder_split_without_a_usable_record_is_a_clear_error(tmp_path, ptbxl_dir, keep, message):
    """TFDS itself fails with "No examples were yielded" and names no split or record."""
    root = tmp_path / "ptbxl"
    shutil.copytree(ptbxl_dir, root)
    database = root / "ptbxl_database.csv"
    header, *lines = database.read_text().splitlines()
    database.write_text("\n".join([header] + [line for line in lines if int(line.split(",")[0]) in keep]) + "\n")
    with pytest.raises(ValueError, match=message):
        _build(tmp_path / "tfds", root)
