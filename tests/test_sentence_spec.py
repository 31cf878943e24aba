"""The one sentence spec: its JSON form as datasets and run folders store it, old forms included,
and a tokenizer that returns the beats and spans it computed."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.synthetic_ecg import synthetic_ecg
from heartlang_jax.ecg import sentence_corpus
from heartlang_jax.ecg.records import STANDARD_LEADS
from heartlang_jax.ecg.sentence_spec import RELEASED, SentenceSpec
from heartlang_jax.ecg.tokenizer import QRSTokenizer

# `info.metadata["sentence"]` of a dataset built before this change, and model.json's "sentence".
TODAY = {
    "leads": list(STANDARD_LEADS),
    "max_len": 256,
    "token_len": 96,
    "fs": 100,
    "detector": "multilead",
    "max_duration_s": 10.0,
    "min_leads": 1,
    "reject_flat_leads": False,
}
# The form the first datasets and run folders stored (before max_duration_s and the flat-lead rule).
OLDEST = {"leads": ["I", "II"], "max_len": 64, "token_len": 32, "fs": 100, "detector": "xqrs"}


def test_todays_json_round_trips_unchanged():
    spec = SentenceSpec.from_dict(TODAY)
    assert spec == SentenceSpec()
    assert spec.to_dict() == TODAY


def test_oldest_json_loads_with_the_defaults_it_had():
    spec = SentenceSpec.from_dict({**OLDEST, "unknown_future_key": 1})
    assert (spec.leads, spec.max_len, spec.token_len, spec.detector) == (("I", "II"), 64, 32, "xqrs")
    assert (spec.max_duration_s, spec.min_leads, spec.reject_flat_leads) == (10.0, 1, False)
    assert spec.to_dict() == {**OLDEST, "max_duration_s": 10.0, "min_leads": 1, "reject_flat_leads": False}


def test_released_constant_is_the_released_tokenization():
    assert RELEASED.to_dict() == {**TODAY, "detector": "xqrs"}


def test_tokenizer_is_built_from_the_spec_and_gives_it_back():
    spec = SentenceSpec(max_len=64, token_len=32, leads=("ii", "I"), min_leads=2)
    tokenizer = spec.make_tokenizer()
    assert isinstance(tokenizer, QRSTokenizer) and tokenizer.spec == spec
    assert tokenizer.leads == ("II", "I")  # canonical names, in the spec's order
    with pytest.raises(ValueError, match="SentenceSpec.token_len must be a positive int"):
        SentenceSpec(token_len=0)


def test_sentence_carries_the_beats_and_spans_its_words_were_cut_from():
    ecg, _ = synthetic_ecg(np.random.default_rng(3), bpm=150)  # fast: spans cut at the midpoints
    tokenizer = QRSTokenizer()
    segmentation = tokenizer.segment(ecg, 100.0)
    sentence = tokenizer.sentence(segmentation)
    assert sentence.leads == segmentation.leads == STANDARD_LEADS
    np.testing.assert_array_equal(sentence.beats, segmentation.beats)
    half, n = tokenizer.token_len // 2, segmentation.signal.shape[1]
    per_lead = len(sentence.beats)
    for k in range(sentence.num_words):
        lead, i = divmod(k, per_lead)
        q, (start, end) = sentence.beats[i], sentence.beat_spans[i]
        # NumPy reference: the word is zero except the span, placed so the beat lands on sample h.
        expected = np.zeros(tokenizer.token_len, np.float32)
        expected[half + start - q : half + end - q] = segmentation.signal[lead, start:end]
        np.testing.assert_array_equal(sentence.words[k], expected)
        assert 0 <= start < end <= n and end - start <= tokenizer.token_len
    np.testing.assert_array_equal(tokenizer.tokenize(ecg, 100.0).words, sentence.words)


def test_standardize_is_float32_of_the_float64_formula():
    signal = np.random.default_rng(0).normal(size=(2, 50)).astype(np.float32)
    out = sentence_corpus.standardize(signal, 0.25, 1.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (signal.astype(np.float64) - 0.25) / 1.5, rtol=1e-6)
