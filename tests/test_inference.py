"""The notebook model object: `heartlang_jax.load(run_folder)` on raw ECG records and arrays."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import scipy.signal
import wfdb
from flax import nnx

import heartlang_jax
from heartlang_jax import stages
from heartlang_jax.data import bundled_sample_dir
from heartlang_jax.ecg import records, sentence_corpus
from heartlang_jax.ecg import tokenizer as tokenizer_lib
from heartlang_jax.inference import model as inference
from heartlang_jax.inference import model_info
from heartlang_jax.models import VQHBR, EcgClassifier, ECGFormerConfig, MaskedEcgModel, VQHBRConfig
from heartlang_jax.training import checkpointing

SAMPLE = bundled_sample_dir() / "records100" / "00000"
RECORDS = [SAMPLE / f"{i:05d}_lr" for i in range(1, 6)]
SHARED_500HZ = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "ptbxl-mini" / "records500" / "00000"
AMPLITUDE = {"mean": -0.0021, "std": 0.2317}  # any fixed standardization will do for these tests
CLASS_NAMES = ("CD", "HYP", "MI", "NORM", "STTC")


# ---------------------------------------------------------------------------------------------
# Run folders for the tests, written directly: a tiny model of each kind, untrained, saved with
# RunCheckpoints and described by model.json. The training stages write the same two things, so
# these can switch to stage-written folders (e.g. conftest's trained tiny runs) at any time.


def tiny_encoder(**overrides) -> ECGFormerConfig:
    return ECGFormerConfig(num_layers=1, hidden_dim=16, mlp_dim=32, num_heads=2, head_dim=8, **overrides)


def _fields(config) -> dict:
    fields = dataclasses.asdict(config)
    fields.pop("dtype", None)
    return fields


def write_run(
    workdir: pathlib.Path, kind: str, *, num_codes: int = 16, seed: int = 0, amplitude=AMPLITUDE, sentence=None
) -> pathlib.Path:
    """A complete `kind` run folder holding a freshly initialized tiny model."""
    rngs = nnx.Rngs(seed)
    if kind == "vqhbr":
        config = VQHBRConfig(encoder=tiny_encoder(), decoder=tiny_encoder(token_len=8), num_codes=num_codes, code_dim=8)
        model, fields, extra = VQHBR(config, rngs=rngs), {**_fields(config)}, {}
        fields["encoder"], fields["decoder"] = _fields(config.encoder), _fields(config.decoder)
    elif kind == "pretrain":
        model = MaskedEcgModel(tiny_encoder(), num_codes, rngs=rngs)
        fields, extra = {"encoder": _fields(tiny_encoder()), "vocab_size": num_codes}, {}
    else:
        model = EcgClassifier(tiny_encoder(), len(CLASS_NAMES), rngs=rngs)
        fields = {"encoder": _fields(tiny_encoder()), "num_classes": len(CLASS_NAMES)}
        extra = {"task": "superdiagnostic", "class_names": CLASS_NAMES}
    checkpoints = checkpointing.RunCheckpoints(workdir)
    checkpoints.save(7, model, None, {}, {})
    checkpoints.close()
    spec = dict(sentence or sentence_corpus.SentenceSpec().to_dict())
    model_info.write(
        workdir,
        model_info.ModelInfo(
            kind=kind, model=fields, sentence=spec, amplitude=dict(amplitude), dataset="ptbxl/leads12", **extra
        ),
    )
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {kind: write_run(root / kind, kind) for kind in stages.MODEL_KINDS}


@pytest.fixture(scope="module")
def models(runs):
    return {kind: heartlang_jax.load(path) for kind, path in runs.items()}


# ---------------------------------------------------------------------------------------------


def test_import_stays_light_and_load_is_exported():
    code = "import sys, heartlang_jax; assert 'jax' not in sys.modules, 'jax imported'; heartlang_jax.load; assert 'jax' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kind", stages.MODEL_KINDS)
def test_embedding_is_deterministic_and_finite(models, kind):
    model = models[kind]
    first = model.embed(RECORDS[0])
    assert first.shape == (16,) and first.dtype == np.float32
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(model.embed(RECORDS[0]), first)
    assert not np.allclose(model.embed(RECORDS[1]), first)


def test_sentences_are_standardized_and_cut_as_the_dataset_builder_does(models):
    spec = sentence_corpus.SentenceSpec()
    built = list(
        sentence_corpus.tokenize_records(list(enumerate(RECORDS[:3])), spec, AMPLITUDE["mean"], AMPLITUDE["std"])
    )
    for (_, expected, skip), path in zip(built, RECORDS):
        assert skip is None
        got = models["pretrain"].tokenize(path)
        np.testing.assert_array_equal(got.words, expected.words.astype(np.float16).astype(np.float32))
        for field in ("lead_ids", "time_ids", "num_words"):
            np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))


def _dataset_examples(sources, ecg_ids) -> dict:
    found = {}
    for source in sources.values():
        for i in range(len(source)):
            example = source[i]
            if int(example["ecg_id"]) in ecg_ids:
                found[int(example["ecg_id"])] = example
    return found


def test_sentences_equal_the_training_datasets_examples(bundled_builder, bundled_sources, tmp_path):
    """A raw record through a run folder's model.json gives its example in the dataset, bit for bit."""
    metadata = bundled_builder.info.metadata
    model = heartlang_jax.load(
        write_run(tmp_path / "run", "pretrain", amplitude=metadata["amplitude"], sentence=metadata["sentence"])
    )
    examples = _dataset_examples(bundled_sources, {1, 2, 3, 4, 5})
    assert len(examples) == 5
    for ecg_id, example in examples.items():
        got = model.tokenize(SAMPLE / f"{ecg_id:05d}_lr")
        np.testing.assert_array_equal(got.words, np.asarray(example["words"], np.float32))
        np.testing.assert_array_equal(got.lead_ids, example["lead_ids"])
        np.testing.assert_array_equal(got.time_ids, example["time_ids"])


def test_word_ids_are_the_pretraining_targets(tiny_vqhbr_workdir, bundled_sources):
    """A stage-written VQ-HBR folder: word ids of a raw record are the ids pre-training learns."""
    from heartlang_jax.stages import vqhbr

    model = heartlang_jax.load(tiny_vqhbr_workdir)
    vocabulary = vqhbr.restore_vocabulary(str(tiny_vqhbr_workdir))
    for ecg_id, example in _dataset_examples(bundled_sources, {1, 2}).items():
        fields = [np.asarray(example[k])[None] for k in ("words", "lead_ids", "time_ids")]
        targets = np.asarray(vqhbr.word_ids(vocabulary, fields[0].astype(np.float32), *fields[1:]))[0]
        ids = model.word_ids(SAMPLE / f"{ecg_id:05d}_lr")
        np.testing.assert_array_equal(ids, targets[: len(ids)])


def test_embedding_is_what_the_linear_probe_sees(models):
    model = models["finetune"]
    sentence = model.tokenize(RECORDS[0])
    probe = model.model.features(sentence.words[None], sentence.lead_ids[None], sentence.time_ids[None])
    np.testing.assert_allclose(model.embed(RECORDS[0]), np.asarray(probe)[0], rtol=1e-6, atol=1e-6)


def test_embedding_is_unchanged_by_extra_padding(models):
    model = models["pretrain"]
    # Batch padding: 3 records in batches of 2 (the last one padded) against one at a time.
    alone = np.stack([model.embed(path) for path in RECORDS[:3]])
    np.testing.assert_allclose(model.embed_many(RECORDS[:3], batch_size=2, progress=False), alone, atol=2e-6)
    # Sentence padding: the same words followed by 1 or by 256 - n padding words.
    s = model.tokenize(RECORDS[0])
    assert s.num_words < 255
    short = slice(0, s.num_words + 1)
    features = EcgClassifier.features(
        model.model, s.words[None, short], s.lead_ids[None, short], s.time_ids[None, short]
    )
    np.testing.assert_allclose(np.asarray(features)[0], alone[0], atol=2e-6)


def test_array_input_embeds_like_the_record_path(models):
    record = records.load_record(RECORDS[0])
    model = models["pretrain"]
    by_path = model.embed(RECORDS[0])
    np.testing.assert_array_equal(model.embed(record.signal, fs=record.fs, lead_names=record.lead_names), by_path)
    np.testing.assert_array_equal(model.embed(record), by_path)
    np.testing.assert_array_equal(model.embed(str(RECORDS[0]) + ".hea"), by_path)
    # Rows in another order, found by name; 12 standard leads in order need no names.
    order = np.arange(12)[::-1]
    shuffled = [record.lead_names[i] for i in order]
    np.testing.assert_array_equal(model.embed(record.signal[order], fs=100, lead_names=shuffled), by_path)
    np.testing.assert_array_equal(model.embed(record.signal, fs=100), by_path)


def test_same_record_as_mat_gives_the_same_embedding(models, tmp_path):
    original = wfdb.rdrecord(str(RECORDS[0]), physical=False)
    digital = original.d_signal.T.astype(np.int16)  # [leads, samples]
    scipy.io.savemat(tmp_path / "A0001.mat", {"val": digital})
    lines = [f"A0001 12 100 {digital.shape[1]}"]
    lines += [
        f"A0001.mat 16+24 {original.adc_gain[i]:g}/mV 16 0 {digital[i, 0]} 0 0 {name}"
        for i, name in enumerate(original.sig_name)
    ]
    (tmp_path / "A0001.hea").write_text("\n".join(lines) + "\n")
    for kind in ("pretrain", "vqhbr"):
        np.testing.assert_allclose(models[kind].embed(tmp_path / "A0001"), models[kind].embed(RECORDS[0]), atol=1e-5)


def _write_500hz(path: pathlib.Path, source: pathlib.Path) -> pathlib.Path:
    record = records.load_record(source)
    upsampled = scipy.signal.resample_poly(record.signal.astype(np.float64), 5, 1, axis=1)
    wfdb.wrsamp(
        path.name,
        fs=500,
        units=["mV"] * 12,
        sig_name=list(record.lead_names),
        p_signal=upsampled.T,
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(path.parent),
    )
    return path


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_500hz_record_agrees_with_100hz(models, tmp_path):
    model = models["pretrain"]
    for source in RECORDS[:2]:
        high = _write_500hz(tmp_path / (source.name + "_500"), source)
        assert records.load_record(high).fs == 500
        low, resampled = model.embed(source), model.embed(high)
        assert _agree(low, resampled) > 0.9999
        assert np.linalg.norm(low - resampled) < 0.01 * np.linalg.norm(low)


def test_ptbxl_500hz_file_agrees_with_its_100hz_file(models):
    high = SHARED_500HZ / "00001_hr"
    if not high.with_suffix(".hea").exists():
        pytest.skip("../shared/data/ptbxl-mini/records500 not beside the checkout")
    model = models["pretrain"]
    assert _agree(model.embed(high), model.embed(RECORDS[0])) > 0.99


def test_run_folder_copied_elsewhere_loads_and_embeds_identically(tmp_path):
    original = write_run(tmp_path / "made" / "run", "finetune", seed=3)
    before = heartlang_jax.load(original)
    expected_embedding, expected_prediction = before.embed(RECORDS[0]), before.predict(RECORDS[0])
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, moved)
    shutil.rmtree(tmp_path / "made")
    after = heartlang_jax.load(moved)
    assert after.step == 7 and after.class_names == CLASS_NAMES
    np.testing.assert_array_equal(after.embed(RECORDS[0]), expected_embedding)
    assert after.predict(RECORDS[0]) == expected_prediction


def test_sentence_gives_words_ids_and_beat_positions(models):
    model = models["pretrain"]
    s = model.sentence(RECORDS[0])
    expected = model.tokenize(RECORDS[0])
    np.testing.assert_array_equal(s.words, expected.words)
    assert s.num_words == expected.num_words and s.fs == 100.0
    assert s.signal.shape == (12, 1000) and s.leads == records.STANDARD_LEADS
    assert len(s.beats) >= 5 and np.all(np.diff(s.beats) > 0)
    # The beats are the ones the words were cut at: each word holds its signal span, QRS at 48.
    n = s.num_words
    np.testing.assert_array_equal(s.time_ids[:n], s.beats[s.word_beat] // 100 + 1)
    np.testing.assert_array_equal(s.lead_ids[:n], s.word_lead + 1)
    for k in (0, n // 2, n - 1):
        (start, end), q = s.beat_spans[s.word_beat[k]], s.beats[s.word_beat[k]]
        stored = (
            s.signal[s.word_lead[k], start:end].astype(np.float16).astype(np.float32)
        )  # as the dataset stores words
        np.testing.assert_array_equal(s.words[k, 48 + start - q : 48 + end - q], stored)


def test_word_ids_from_a_vocabulary(models, runs, tmp_path):
    ids = models["vqhbr"].word_ids(RECORDS[0])
    n = models["vqhbr"].tokenize(RECORDS[0]).num_words
    assert ids.shape == (n,) and ids.dtype == np.int32 and ((ids >= 0) & (ids < 16)).all()
    with pytest.raises(inference.NotSupportedError, match=r"pretrain run without a vocabulary.*vocabulary/"):
        models["pretrain"].word_ids(RECORDS[0])
    # A pre-training folder that carries its vocabulary gives that vocabulary's ids.
    carrying = tmp_path / "pretrain"
    shutil.copytree(runs["pretrain"], carrying)
    shutil.copytree(runs["vqhbr"], carrying / inference.VOCABULARY_DIR)
    np.testing.assert_array_equal(heartlang_jax.load(carrying).word_ids(RECORDS[0]), ids)
    np.testing.assert_array_equal(
        heartlang_jax.load(runs["pretrain"], vocabulary=runs["vqhbr"]).word_ids(RECORDS[0]), ids
    )


def test_vocabulary_of_another_size_is_refused(runs, tmp_path):
    other = write_run(tmp_path / "vq8", "vqhbr", num_codes=8)
    with pytest.raises(checkpointing.CheckpointError, match="vocabulary of 16 words.*has 8"):
        heartlang_jax.load(runs["pretrain"], vocabulary=other)


def test_reconstruct_on_a_vqhbr_run(models):
    out = models["vqhbr"].reconstruct(RECORDS[0])
    n = out.sentence.num_words
    assert out.words.shape == out.reconstruction.shape == (n, 96)
    np.testing.assert_array_equal(out.word_ids, models["vqhbr"].word_ids(RECORDS[0]))
    assert np.isfinite(out.reconstruction).all() and out.mse > 0
    with pytest.raises(inference.NotSupportedError, match="need a VQ-HBR run"):
        models["finetune"].reconstruct(RECORDS[0])


def test_predict_on_a_finetuned_run(models):
    model = models["finetune"]
    probabilities = model.predict(RECORDS[0])
    assert list(probabilities) == list(CLASS_NAMES)
    assert all(0.0 < p < 1.0 for p in probabilities.values())
    s = model.tokenize(RECORDS[0])
    logits = np.asarray(model.model(s.words[None], s.lead_ids[None], s.time_ids[None]))[0]
    np.testing.assert_allclose(list(probabilities.values()), 1 / (1 + np.exp(-logits)), rtol=1e-5)
    with pytest.raises(inference.NotSupportedError, match="fine-tuned run"):
        models["pretrain"].predict(RECORDS[0])


def test_bad_records_get_one_line_errors_naming_them(models, tmp_path):
    model = models["pretrain"]
    shutil.copy(RECORDS[1].with_suffix(".hea"), tmp_path / "00002_lr.hea")
    (tmp_path / "00002_lr.dat").write_bytes(RECORDS[1].with_suffix(".dat").read_bytes()[:1000])
    with pytest.raises(records.RecordError, match=r"^record .*00002_lr: signal file 00002_lr.dat is truncated") as e:
        model.embed(tmp_path / "00002_lr")
    assert "\n" not in str(e.value)
    with pytest.raises(tokenizer_lib.TokenizerError, match=r"^record noise: "):
        model.embed(np.random.default_rng(0).normal(size=(12, 1000)), fs=100, name="noise")
    with pytest.raises(ValueError, match=r"record <array>: an array ECG needs its sampling rate"):
        model.embed(np.zeros((12, 1000)))
    with pytest.raises(records.RecordError, match=r"00002_lr"):
        model.embed_many([RECORDS[0], tmp_path / "00002_lr"], progress=False)
    results = sorted(
        model.iter_embed([RECORDS[0], tmp_path / "00002_lr", RECORDS[2]], batch_size=2, progress=False),
        key=lambda r: r[0],
    )
    assert [r[2] is None for r in results] == [True, False, True]
    assert "00002_lr" in results[1][2] and "\n" not in results[1][2]
