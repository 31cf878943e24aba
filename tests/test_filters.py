"""The sentence spec's band-pass: the released preprocessing's coefficients, computed here as its
scripts do, applied where the builders and `load` read records; no filter leaves tokens as they were."""

from __future__ import annotations

import csv
import dataclasses
import pathlib

import numpy as np
import pytest
import scipy.signal
import tensorflow_datasets as tfds
import wfdb

from heartlang_jax.ecg import filters, records, sentence_corpus
from heartlang_jax.ecg.records import STANDARD_LEADS
from heartlang_jax.ecg.sentence_spec import RELEASED, RELEASED_MIMIC, SentenceSpec
from tfds_ptbxl import catalog, testing

MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")  # its headers' order
BUNDLED = pathlib.Path(__file__).parents[1] / "heartlang_jax" / "data" / "ptbxl_mini" / "records100" / "00000"
# Tokens of the bundled record 00001_lr with the default spec, recorded before the filter field existed.
TOKENS_FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "default_spec_tokens.npz"


def _released_bandpass_filter(data: np.ndarray, lowcut: float, highcut: float, fs: float, order: int = 5):
    """The released `bandpass_filter` (MIMIC-IV/mimic_preprocess.py, CSN/make_csn_datasets.py), reimplemented:
    normalized edges over the Nyquist rate, butter(order, ..., btype="band"), filtfilt per lead with its defaults."""
    nyq = 0.5 * fs
    b, a = scipy.signal.butter(order, [lowcut / nyq, highcut / nyq], btype="band")
    return np.stack([scipy.signal.filtfilt(b, a, lead) for lead in data])


def _write_mimic_record(directory: pathlib.Path, study: int, ecg_id: int) -> pathlib.Path:
    signal = testing.ptbxl_signal(ecg_id)  # [12, 5000] at 500 Hz, standard order
    order = [STANDARD_LEADS.index(lead.upper()) for lead in MIMIC_LEADS]
    directory.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        str(study), fs=500, units=["mV"] * 12, sig_name=list(MIMIC_LEADS), p_signal=signal[order].T,
        fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(directory),
    )  # fmt: skip
    return directory / str(study)


def test_filtered_500hz_mimic_record_is_filtfilt_on_the_released_coefficients(tmp_path):
    path = _write_mimic_record(tmp_path, 40000000, 1)
    record = records.load_record(path)
    assert record.fs == 500 and record.lead_names == MIMIC_LEADS
    ours = RELEASED_MIMIC.make_tokenizer().segment(record.signal, record.fs, record.lead_names).signal
    unfiltered_spec = dataclasses.replace(RELEASED, resampler=RELEASED_MIMIC.resampler)
    unfiltered = unfiltered_spec.make_tokenizer().segment(record.signal, record.fs, record.lead_names).signal
    assert ours.shape == unfiltered.shape == (12, 1000)
    # The released order: resample to 100 Hz, reorder the leads to the standard order, then filter at 100 Hz.
    np.testing.assert_allclose(ours, _released_bandpass_filter(unfiltered, 0.67, 40, fs=100), rtol=0, atol=1e-12)
    assert np.abs(ours - unfiltered).max() > 0.05  # the filter does something (baseline wander, mV)

    # The whole released chain, its FFT resampling included (signal.resample, RELEASED_MIMIC.resampler
    # "fft"), to float32 rounding; the polyphase resampler differs most near the record's ends (issue 23).
    raw, _ = wfdb.rdsamp(str(path))
    released = scipy.signal.resample(raw.T, 1000, axis=1)
    released = released[[[lead.upper() for lead in MIMIC_LEADS].index(lead) for lead in STANDARD_LEADS]]
    released = _released_bandpass_filter(released, 0.67, 40, fs=100)
    np.testing.assert_allclose(ours, released, rtol=0, atol=1e-6)  # our records are float32
    poly_spec = dataclasses.replace(RELEASED_MIMIC, resampler="poly")
    poly = poly_spec.make_tokenizer().segment(record.signal, record.fs, record.lead_names).signal
    assert np.abs(poly - released)[:, :10].max() > 10 * np.abs(poly - released)[:, 100:-100].max()


def test_default_spec_leaves_todays_tokens_unchanged():
    record = records.load_record(BUNDLED / "00001_lr")
    sentence = SentenceSpec().make_tokenizer().tokenize(record.signal, record.fs, record.lead_names)
    want = np.load(TOKENS_FIXTURE)
    assert sentence.num_words == int(want["num_words"])
    np.testing.assert_array_equal(sentence.lead_ids, want["lead_ids"])
    np.testing.assert_array_equal(sentence.time_ids, want["time_ids"])
    np.testing.assert_allclose(sentence.words, want["words"], rtol=0, atol=1e-6)
    assert "filter" not in SentenceSpec().to_dict()  # datasets and model.json read as before


def test_filter_json_round_trips_and_is_checked():
    spec = SentenceSpec.from_dict(RELEASED_MIMIC.to_dict())
    assert spec == RELEASED_MIMIC and spec.filter == filters.RELEASED_BANDPASS
    assert RELEASED_MIMIC.to_dict()["resampler"] == spec.resampler == "fft"
    assert "resampler" not in RELEASED.to_dict() and SentenceSpec.from_dict(RELEASED.to_dict()).resampler == "poly"
    with pytest.raises(ValueError, match="SentenceSpec.resampler"):
        SentenceSpec(resampler="linear")  # type: ignore[arg-type]
    assert RELEASED_MIMIC.make_tokenizer().spec == RELEASED_MIMIC
    with pytest.raises(ValueError, match="below half the sentence rate"):
        SentenceSpec(filter=filters.BandPass(0.5, 60.0, 4))
    with pytest.raises(ValueError, match="BandPass.kind"):
        filters.BandPass(0.5, 40.0, 4, kind="bessel")  # type: ignore[arg-type]


def test_fir_kind_is_firwin_filtfilt():
    x = np.random.default_rng(0).normal(size=(2, 800))
    band = filters.BandPass(1.0, 30.0, 40, kind="fir_filtfilt")
    taps = scipy.signal.firwin(41, [1.0 / 50, 30.0 / 50], pass_zero=False)  # normalized to Nyquist
    np.testing.assert_allclose(filters.apply(x, 100.0, band), scipy.signal.filtfilt(taps, [1.0], x), atol=1e-12)


def test_released_builder_configs_carry_each_datasets_released_filter():
    for dataset in catalog.DATASETS:
        config = catalog.builder_class(dataset).builder_configs["released"]
        assert config.spec.detector == "xqrs"
        assert config.spec.filter == filters.RELEASED_FILTERS[dataset]
        assert config.spec.resampler == ("fft" if dataset in ("mimic_iv_ecg", "csn", "cpsc2018") else "poly")
    assert filters.RELEASED_FILTERS["mimic_iv_ecg"] == filters.RELEASED_FILTERS["csn"] == filters.RELEASED_BANDPASS
    assert filters.RELEASED_FILTERS["ptbxl"] is None and filters.RELEASED_FILTERS["cpsc2018"] is None


def test_mimic_released_build_filters_before_standardizing_and_tokenizing(tmp_path):
    root = tmp_path / "mimic-iv-ecg"
    rows = []
    for i in range(3):
        subject, study = 10000032 + i, 40000000 + 17 * i
        relative = f"files/p{subject // 10000:04d}/p{subject}/s{study}/{study}"
        _write_mimic_record((root / relative).parent, study, i + 1)
        rows.append({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": "", "path": relative})
    with open(root / "record_list.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    builder = tfds.builder(
        "mimic_iv_ecg/released", data_dir=str(tmp_path / "tfds"), num_workers=1, split_batch=10,
        amplitude_fit_records=10,
    )  # fmt: skip
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    meta = builder.info.metadata
    assert meta["sentence"] == RELEASED_MIMIC.to_dict() and meta["sentence"]["filter"]["low"] == 0.67

    # The amplitude is fitted on the filtered 100 Hz signals (float64 reference over the training records).
    train = {int(e["study_id"]) for e in builder.as_data_source()["train"]}
    tokenizer = dataclasses.replace(RELEASED, resampler="fft").make_tokenizer()  # the released resampling
    filtered = {}
    for row in rows:
        record = records.load_record(root / row["path"])
        signal = tokenizer.segment(record.signal, record.fs, record.lead_names).signal
        filtered[row["study_id"]] = (record, _released_bandpass_filter(signal, 0.67, 40, fs=100))
    values = np.concatenate([filtered[s][1].ravel() for s in sorted(train)])
    assert meta["amplitude"]["mean"] == pytest.approx(values.mean(), abs=1e-9)
    assert meta["amplitude"]["std"] == pytest.approx(values.std(), rel=1e-6)

    # Stored words: the filtered, standardized signal cut by the tokenizer (float16 storage).
    study = sorted(train)[0]
    record, _ = filtered[study]
    amp = meta["amplitude"]
    expected = RELEASED_MIMIC.make_tokenizer().tokenize(
        sentence_corpus.standardize(record.signal, amp["mean"], amp["std"]), record.fs, lead_names=record.lead_names
    )
    stored = {int(e["study_id"]): e for e in builder.as_data_source()["train"]}[study]
    np.testing.assert_array_equal(stored["lead_ids"], expected.lead_ids)
    np.testing.assert_allclose(stored["words"].astype(np.float32), expected.words, rtol=1e-3, atol=1e-3)
