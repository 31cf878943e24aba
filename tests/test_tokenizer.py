"""Tests for heartlang_jax.ecg.tokenizer: QRS detection quality, SPEC §2 segmentation, clear errors.

Synthetic signals with known beat times come from `benchmarks.synthetic_ecg`.
"""

import logging
import pathlib

import numpy as np
import pytest

from benchmarks.synthetic_ecg import match_beats, synthetic_ecg
from heartlang_jax.ecg import records, sentence_corpus
from heartlang_jax.ecg import tokenizer as tok
from heartlang_jax.ecg.records import STANDARD_LEADS
from tfds_ptbxl.ptbxl import metadata as ptbxl

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_MINI = _ROOT / "heartlang_jax" / "data" / "ptbxl_mini" / "records100" / "00000"
_SHARED_500HZ = _ROOT / ".." / "shared" / "data" / "ptbxl-mini" / "records500" / "00000"


# QRS as three Gaussians (offset s, width s, amplitude relative to R): small Q, R, S.
def _spike_record(beats: list[int], num_rows: int, n: int = 1000) -> np.ndarray:
    """[num_rows, n]: a ramp that encodes row and sample, x = row + 1 + k / 1000, plus 5 mV
    spikes at `beats` on every row, so that the beats are unambiguous and every word sample
    tells where it came from."""
    x = (np.arange(num_rows)[:, None] + 1.0) + np.arange(n)[None, :] / 1000.0
    x[:, beats] += 5.0
    return x.astype(np.float32)


# --- Detection --------------------------------------------------------------------------------


@pytest.mark.parametrize("rhythm", ["regular", "irregular", "ectopic"])
def test_multilead_detector_sensitivity_and_positive_predictivity(rhythm):
    """Se and +P >= 0.995 within 100 ms at 100 Hz, over 40-180 bpm."""
    rng = np.random.default_rng({"regular": 1, "irregular": 2, "ectopic": 3}[rhythm])
    hits = misses = false = 0
    for bpm in np.linspace(40, 180, 60):
        ecg, beats = synthetic_ecg(rng, bpm, rhythm)
        detected = tok.detect_qrs(ecg, 100.0)
        h, m, f = match_beats(detected / 100.0, beats)
        hits, misses, false = hits + h, misses + m, false + f
    sensitivity, positive_predictivity = hits / (hits + misses), hits / (hits + false)
    assert hits + misses > 1000
    assert sensitivity >= 0.995, (sensitivity, misses)
    assert positive_predictivity >= 0.995, (positive_predictivity, false)


def test_heart_rate_agrees_with_cardiologists_on_bundled_records():
    """On the first 100 PTB-XL records, the median heart rate from the default detector fits
    the rhythm statement (SR 45-105 bpm, SBRAD < 65, STACH > 95), and no RR is under 250 ms."""
    bpm_range = {"SR": (45, 105), "SBRAD": (0, 65), "STACH": (95, 400)}
    rows = ptbxl.read_database(_MINI.parents[1])[:100]
    agree = labelled = 0
    for row in rows:
        record = records.load_record(_MINI.parents[1] / row.filename_lr)
        rr_s = np.diff(tok.detect_qrs(record.signal, record.fs)) / record.fs
        assert rr_s.min() >= 0.25, row.ecg_id
        statements = [key for key in row.scp_codes if key in bpm_range]
        if statements:
            labelled += 1
            bpm = 60 / np.median(rr_s)
            agree += all(bpm_range[key][0] <= bpm <= bpm_range[key][1] for key in statements)
    assert labelled > 80 and agree / labelled >= 0.98


def test_detect_qrs_returns_sorted_unique_indices_for_1d_and_2d():
    ecg, beats = synthetic_ecg(np.random.default_rng(4), 75)
    for signal in (ecg, ecg[1]):
        q = tok.detect_qrs(signal, 100.0)
        assert q.dtype.kind == "i" and q.ndim == 1
        assert np.all(np.diff(q) > 0)
    # The refined peaks sit on the R waves, not merely within the 100 ms tolerance.
    _hits, misses, false = match_beats(tok.detect_qrs(ecg, 100.0) / 100.0, beats, tolerance_s=0.02)
    assert misses == 0 and false == 0


def test_xqrs_uses_only_the_first_row():
    ecg, _ = synthetic_ecg(np.random.default_rng(5), 70)
    first_only = tok.detect_qrs(ecg[:1], 100.0, method="xqrs")
    with_noise = np.concatenate([ecg[:1], np.random.default_rng(6).standard_normal((11, ecg.shape[1]))])
    assert first_only.size > 0
    np.testing.assert_array_equal(tok.detect_qrs(with_noise, 100.0, method="xqrs"), first_only)


def test_detector_runs_at_other_rates():
    ecg, beats = synthetic_ecg(np.random.default_rng(7), 90, fs=500.0)
    _hits, misses, false = match_beats(tok.detect_qrs(ecg, 500.0) / 500.0, beats, tolerance_s=0.02)
    assert misses == 0 and false == 0


# --- Segmentation: golden sentences -----------------------------------------------------------


def test_golden_sentence():
    """Hand-worked: beats q = 30, 101, 250, 290, 960 in a 1000-sample record, t = 96, h = 48.

    Midpoint borders, rounded down: (30+101)//2 = 65, (101+250)//2 = 175, (250+290)//2 = 270,
    (290+960)//2 = 625. Span of each beat, cut to [q-48, q+48) and to [0, 1000), and where it
    lands in the word (sample k goes to k - q + 48):
      q=30:  [max(30-48, 0), min(65, 78))    = [0, 65)     -> word[18:83]
      q=101: [max(65, 53), min(175, 149))    = [65, 149)   -> word[12:96]
      q=250: [max(175, 202), min(270, 298))  = [202, 270)  -> word[0:68]
      q=290: [max(270, 242), min(625, 338))  = [270, 338)  -> word[28:96]
      q=960: [max(625, 912), min(1008, 1000)) = [912, 1000) -> word[0:88]
    Time ids q // 100 + 1: 1, 2, 3, 3, 10.
    """
    beats = [30, 101, 250, 290, 960]
    spans = [(30, 0, 65, 18), (101, 65, 149, 12), (250, 202, 270, 0), (290, 270, 338, 28), (960, 912, 1000, 0)]
    x = _spike_record(beats, num_rows=4)
    lead_names = ("V2", "vx", "I", "II")  # out of order, plus a Frank lead to ignore
    tokenizer = tok.QRSTokenizer(leads=("I", "II", "V2"))

    sentence = tokenizer.tokenize(x, 100.0, lead_names=lead_names, record_name="golden")

    expected_words = np.zeros((256, 96), np.float32)
    word = 0
    for row in (2, 3, 0):  # I, II, V2
        for q, start, end, first in spans:
            expected_words[word, first : first + end - start] = x[row, start:end]
            assert expected_words[word, 48] == x[row, q]
            word += 1
    assert sentence.num_words == 15
    np.testing.assert_array_equal(sentence.lead_ids[:15], [1] * 5 + [2] * 5 + [8] * 5)
    np.testing.assert_array_equal(sentence.time_ids[:15], [1, 2, 3, 3, 10] * 3)
    np.testing.assert_array_equal(sentence.lead_ids[15:], 0)
    np.testing.assert_array_equal(sentence.time_ids[15:], 0)
    np.testing.assert_array_equal(sentence.words, expected_words)
    assert sentence.words.dtype == np.float32 and sentence.lead_ids.dtype == np.int32
    assert sentence.time_ids.dtype == np.int32


def test_truncation_at_max_len():
    """12 leads x 30 beats = 360 words: the first 256 are 8 full leads and 16 beats of V3."""
    beats = [15 + 33 * i for i in range(30)]
    x = _spike_record(beats, num_rows=12)

    sentence = tok.QRSTokenizer().tokenize(x, 100.0, record_name="long")

    assert sentence.num_words == 256
    np.testing.assert_array_equal(sentence.lead_ids, np.repeat(np.arange(1, 10), 30)[:256])
    expected_time_ids = [q // 100 + 1 for q in beats]
    np.testing.assert_array_equal(sentence.time_ids, (expected_time_ids * 9)[:256])
    # Word 255 is beat 15 (q = 510) of V3 (row 8); word 0 is beat 0 (q = 15) of lead I.
    assert sentence.words[255, 48] == x[8, 510]
    # Its span is [(477+510)//2, (510+543)//2) = [493, 526), at word[31:64].
    np.testing.assert_array_equal(sentence.words[255, 31:64], x[8, 493:526])
    assert not sentence.words[255, :31].any() and not sentence.words[255, 64:].any()
    np.testing.assert_array_equal(sentence.words[0, :33], 0)  # before sample 0
    np.testing.assert_array_equal(sentence.words[0, 33:64], x[0, 0:31])  # up to the midpoint 31


def test_padding_of_a_short_sentence():
    x = _spike_record([120, 420, 720], num_rows=12)
    sentence = tok.QRSTokenizer(leads=("II",)).tokenize(x, 100.0)
    assert sentence.num_words == 3
    np.testing.assert_array_equal(sentence.lead_ids[:3], 2)
    np.testing.assert_array_equal(sentence.time_ids[:3], [2, 5, 8])
    np.testing.assert_array_equal(sentence.words[:3, 48], x[1, [120, 420, 720]])
    assert not sentence.words[3:].any() and not sentence.lead_ids[3:].any() and not sentence.time_ids[3:].any()


# --- Real records ------------------------------------------------------------------------------


@pytest.mark.parametrize("ecg_id", [1, 2, 17, 100, 255])
def test_bundled_records_give_sane_sentences(ecg_id):
    record = records.load_record(_MINI / f"{ecg_id:05d}_lr")
    sentence = tok.QRSTokenizer().tokenize(record.signal, record.fs, record.lead_names, record.name)

    assert sentence.words.shape == (256, 96) and sentence.words.dtype == np.float32
    n = sentence.num_words
    assert n == 256 or (n >= 12 * 4 and n % 12 == 0)  # every lead has the same beats
    assert np.all((sentence.lead_ids[:n] >= 1) & (sentence.lead_ids[:n] <= 12))
    assert np.all((sentence.time_ids[:n] >= 1) & (sentence.time_ids[:n] <= 10))
    assert np.all(np.diff(sentence.lead_ids[:n]) >= 0)  # lead by lead
    assert np.all(sentence.lead_ids[n:] == 0) and np.all(sentence.time_ids[n:] == 0)
    assert not sentence.words[n:].any() and np.all(np.abs(sentence.words[:n]).max(axis=1) > 0)
    # Sample 48 of each lead-I word is the signal at that beat's QRS.
    beats = tok.detect_qrs(record.signal, record.fs)
    lead_one = sentence.lead_ids[:n] == 1
    np.testing.assert_array_equal(sentence.words[:n][lead_one, 48], record.signal[0, beats[: lead_one.sum()]])


def test_parallel_tokenizing_matches_single_calls_and_names_bad_records():
    paths = [_MINI / f"{i:05d}_lr" for i in (1, 2, 3)] + [_MINI / "missing_lr"]
    tokenizer = tok.QRSTokenizer()
    results = list(
        sentence_corpus.tokenize_records(list(enumerate(paths)), sentence_corpus.SentenceSpec(), num_workers=2)
    )
    assert [key for key, _, _ in results] == [0, 1, 2, 3]
    _, sentence, reason = results[3]
    assert sentence is None and reason.kind == "RecordError" and "missing_lr" in reason.message
    for key, sentence, reason in results[:3]:
        assert reason is None
        record = records.load_record(paths[key])
        expected = tokenizer.tokenize(record.signal, record.fs, record.lead_names)
        np.testing.assert_array_equal(sentence.words, expected.words)
        np.testing.assert_array_equal(sentence.time_ids, expected.time_ids)


# --- Rates, lead layouts, durations -----------------------------------------------------------


@pytest.mark.parametrize("fs", [250.0, 500.0, 1000.0, 360.0])
def test_other_rates_give_nearly_the_100hz_sentence(fs):
    rng_seed = 8
    reference, _ = synthetic_ecg(np.random.default_rng(rng_seed), 80, noise_mv=0.0)
    high, _ = synthetic_ecg(np.random.default_rng(rng_seed), 80, fs=fs, noise_mv=0.0)
    tokenizer = tok.QRSTokenizer()

    expected = tokenizer.tokenize(reference, 100.0)
    sentence = tokenizer.tokenize(high, fs)

    assert sentence.num_words == expected.num_words
    np.testing.assert_array_equal(sentence.lead_ids, expected.lead_ids)
    np.testing.assert_array_equal(sentence.time_ids, expected.time_ids)
    n = expected.num_words
    error = np.sqrt(np.mean((sentence.words[:n] - expected.words[:n]) ** 2))
    assert error < 0.05 * np.sqrt(np.mean(expected.words[:n] ** 2))


def test_real_500hz_record_matches_its_100hz_version():
    """PTB-XL's 100 Hz files are downsampled from the 500 Hz ones: same beats, same words."""
    path = _SHARED_500HZ / "00001_hr"
    if not path.with_suffix(".hea").exists():
        pytest.skip("500 Hz sample not available")
    high = records.load_record(path)
    low = records.load_record(_MINI / "00001_lr")
    tokenizer = tok.QRSTokenizer()
    sentence = tokenizer.tokenize(high.signal, high.fs, high.lead_names)
    expected = tokenizer.tokenize(low.signal, low.fs, low.lead_names)
    np.testing.assert_array_equal(sentence.time_ids, expected.time_ids)
    n = expected.num_words
    correlation = np.corrcoef(sentence.words[:n].ravel(), expected.words[:n].ravel())[0, 1]
    assert correlation > 0.9


def test_fifteen_lead_record_maps_to_its_twelve_leads():
    record = records.load_record(_MINI / "00001_lr")
    frank = np.random.default_rng(9).standard_normal((3, record.signal.shape[1])).astype(np.float32)
    rows = np.concatenate([record.signal, frank])
    names = [name.lower() if name.startswith("AV") else name for name in STANDARD_LEADS] + ["vx", "vy", "vz"]
    order = np.random.default_rng(10).permutation(15)
    tokenizer = tok.QRSTokenizer()

    sentence = tokenizer.tokenize(rows[order], 100.0, lead_names=[names[i] for i in order])
    expected = tokenizer.tokenize(record.signal, 100.0)

    for field in ("words", "lead_ids", "time_ids"):
        np.testing.assert_array_equal(getattr(sentence, field), getattr(expected, field))
    assert sentence.num_words == expected.num_words


def test_missing_leads_contribute_no_words(caplog):
    record = records.load_record(_MINI / "00002_lr")
    keep = [0, 1, 7]  # I, II, V2
    with caplog.at_level(logging.WARNING, logger=tok.__name__):
        sentence = tok.QRSTokenizer().tokenize(
            record.signal[keep], 100.0, lead_names=["I", "II", "V2"], record_name="three-lead"
        )
    n = sentence.num_words
    assert set(sentence.lead_ids[:n]) == {1, 2, 8}
    counts = [np.sum(sentence.lead_ids[:n] == lead) for lead in (1, 2, 8)]
    assert counts[0] == counts[1] == counts[2] == n // 3
    [message] = [r.getMessage() for r in caplog.records if r.name == tok.__name__]
    assert message == "record three-lead: missing leads III, AVR, AVL, AVF, V1, V3, V4, V5, V6 contribute no words"


def test_shorter_record_is_fine():
    ecg, beats = synthetic_ecg(np.random.default_rng(11), 70, duration_s=6.0)
    sentence = tok.QRSTokenizer().tokenize(ecg, 100.0)
    assert sentence.num_words == 12 * beats.size
    assert sentence.time_ids[: sentence.num_words].max() <= 6


def test_longer_record_is_cropped_to_ten_seconds():
    ecg, _ = synthetic_ecg(np.random.default_rng(12), 70, duration_s=25.0)
    tokenizer = tok.QRSTokenizer()
    sentence = tokenizer.tokenize(ecg, 100.0)
    expected = tokenizer.tokenize(ecg[:, :1000], 100.0)
    assert sentence.time_ids.max() <= 10
    np.testing.assert_array_equal(sentence.words, expected.words)
    np.testing.assert_array_equal(sentence.time_ids, expected.time_ids)


# --- Bad inputs ---------------------------------------------------------------------------------


def _clean_record() -> np.ndarray:
    return synthetic_ecg(np.random.default_rng(13), 70)[0]


def test_nan_names_record_and_lead():
    ecg = _clean_record()
    ecg[8, 500] = np.nan
    with pytest.raises(tok.BadSignalError, match=r"record r1: lead V3 contains NaN or inf"):
        tok.QRSTokenizer().tokenize(ecg, 100.0, record_name="r1")


def test_nan_in_an_unused_lead_is_ignored():
    ecg = _clean_record()
    ecg[8, 500] = np.inf
    assert tok.QRSTokenizer(leads=("I", "II")).tokenize(ecg, 100.0).num_words > 0


def test_flat_lead():
    """The strict rule, kept behind `reject_flat_leads=True`: any flat lead rejects the record."""
    ecg = _clean_record()
    ecg[4] = 0.3
    with pytest.raises(tok.BadSignalError, match=r"record r2: lead AVL is flat"):
        tok.QRSTokenizer(reject_flat_leads=True).tokenize(ecg, 100.0, record_name="r2")


def test_flat_leads_are_left_out_like_missing_leads(caplog):
    """Dead electrodes (all-zero leads, as Ningbo and CinC 2021 store them) count as missing leads:
    three flat leads of twelve give the sentence of the other nine, with a warning naming them."""
    ecg = _clean_record()
    flat = ("III", "AVL", "V2")
    for lead in flat:
        ecg[STANDARD_LEADS.index(lead)] = 0.0
    with caplog.at_level(logging.WARNING, logger=tok.__name__):
        sentence = tok.QRSTokenizer().tokenize(ecg, 100.0, record_name="r9")
    assert "record r9: flat leads III, AVL, V2 contribute no words" in caplog.text
    assert sentence.flat_leads == flat
    others = [lead for lead in STANDARD_LEADS if lead not in flat]
    expected = tok.QRSTokenizer().tokenize(
        ecg[[STANDARD_LEADS.index(lead) for lead in others]], 100.0, lead_names=others
    )
    assert expected.flat_leads == ()
    assert sorted(set(sentence.lead_ids[: sentence.num_words])) == [STANDARD_LEADS.index(lead) + 1 for lead in others]
    for field in ("words", "lead_ids", "time_ids"):
        np.testing.assert_array_equal(getattr(sentence, field), getattr(expected, field), err_msg=field)


def test_every_lead_flat_is_rejected_naming_the_record():
    with pytest.raises(tok.BadSignalError, match=r"record r10: every lead is flat \(flat: I, II, .*V6\)"):
        tok.QRSTokenizer().tokenize(np.zeros((12, 1000), np.float32), 100.0, record_name="r10")


def test_min_leads_rejects_a_record_with_too_few_usable_leads():
    ecg = _clean_record()
    ecg[2:] = 0.0
    assert tok.QRSTokenizer(min_leads=2).tokenize(ecg, 100.0).num_words > 0
    with pytest.raises(tok.BadSignalError, match=r"record r11: only 2 usable lead\(s\) remain .*min_leads=3"):
        tok.QRSTokenizer(min_leads=3).tokenize(ecg, 100.0, record_name="r11")


def test_sentence_spec_selects_the_detector_and_flat_rule():
    spec = sentence_corpus.SentenceSpec(detector="xqrs", min_leads=4, reject_flat_leads=True)
    tokenizer = spec.make_tokenizer()
    assert (tokenizer.detector, tokenizer.min_leads, tokenizer.reject_flat_leads) == ("xqrs", 4, True)
    assert spec.to_dict() == {
        "leads": list(STANDARD_LEADS), "max_len": 256, "token_len": 96, "fs": 100, "detector": "xqrs",
        "max_duration_s": 10.0, "min_leads": 4, "reject_flat_leads": True,
    }  # fmt: skip
    ecg = _clean_record()
    expected = tok.QRSTokenizer(detector="xqrs").tokenize(ecg, 100.0)
    sentence = sentence_corpus.SentenceSpec(detector="xqrs").make_tokenizer().tokenize(ecg, 100.0)
    np.testing.assert_array_equal(sentence.words, expected.words)


def test_no_beat():
    noise = np.random.default_rng(14).standard_normal((12, 1000)).astype(np.float32) * 0.1
    with pytest.raises(tok.NoBeatsError, match=r"record r3: .*found no heartbeat"):
        tok.QRSTokenizer().tokenize(noise, 100.0, record_name="r3")


@pytest.mark.parametrize("shape", [(1000,), (2, 12, 1000)])
def test_wrong_ndim(shape):
    with pytest.raises(tok.BadSignalError, match=r"record r4: ECG must be \[leads, samples\]"):
        tok.QRSTokenizer().tokenize(np.zeros(shape, np.float32), 100.0, record_name="r4")


def test_too_short_for_xqrs():
    ecg = np.random.default_rng(15).standard_normal((12, 10)).astype(np.float32)
    with pytest.raises(tok.BadSignalError, match=r"record r8: XQRS cannot process the first lead"):
        tok.QRSTokenizer(detector="xqrs").tokenize(ecg, 100.0, record_name="r8")


def test_empty_signal():
    with pytest.raises(tok.BadSignalError, match=r"record r5: ECG is empty"):
        tok.QRSTokenizer().tokenize(np.zeros((12, 0), np.float32), 100.0, record_name="r5")


def test_unnamed_rows_must_be_the_twelve_standard_leads():
    ecg = np.concatenate([_clean_record(), _clean_record()[:3]])
    with pytest.raises(tok.LeadError, match=r"record r6: 15 leads but no lead_names"):
        tok.QRSTokenizer().tokenize(ecg, 100.0, record_name="r6")


def test_no_usable_lead():
    with pytest.raises(tok.LeadError, match=r"record r7: none of the leads"):
        tok.QRSTokenizer().tokenize(_clean_record()[:3], 100.0, lead_names=["vx", "vy", "vz"], record_name="r7")


def test_unknown_tokenizer_leads():
    with pytest.raises(ValueError, match="leads must be distinct names"):
        tok.QRSTokenizer(leads=("I", "X"))
