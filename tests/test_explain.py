"""Explanations (integrated gradients per word, lead and beat) and pooled / per-word / per-layer features."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from matplotlib.figure import Figure
from test_inference import AMPLITUDE, CLASS_NAMES, RECORDS, _fields, tiny_encoder

import heartlang_jax
from heartlang_jax.ecg import sentence_corpus
from heartlang_jax.evaluation import plots
from heartlang_jax.inference import model as inference
from heartlang_jax.inference import model_info
from heartlang_jax.models import EcgClassifier, ECGFormerConfig
from heartlang_jax.models.ecgformer import RELEASED_BLOCK
from heartlang_jax.training import checkpointing


def _classifier_run(workdir, **encoder) -> heartlang_jax.inference.model.HeartLangModel:
    """A fine-tuning run folder of a 2-layer tiny classifier with the given encoder fields."""
    config = ECGFormerConfig(**{**_fields(tiny_encoder()), "num_layers": 2, **encoder})
    model = EcgClassifier(config, len(CLASS_NAMES), rngs=nnx.Rngs(1))
    checkpoints = checkpointing.RunCheckpoints(workdir)
    checkpoints.save(1, model, None, {}, {})
    checkpoints.close()
    model_info.write(
        workdir,
        model_info.ModelInfo(
            kind="finetune",
            model={"encoder": _fields(config), "num_classes": len(CLASS_NAMES)},
            sentence=sentence_corpus.SentenceSpec().to_dict(),
            amplitude=dict(AMPLITUDE),
            dataset="ptbxl/leads12",
            task="superdiagnostic",
            class_names=CLASS_NAMES,
        ),
    )
    return heartlang_jax.load(workdir)


@pytest.fixture(scope="module")
def rope(tmp_path_factory):
    return _classifier_run(tmp_path_factory.mktemp("run") / "rope")


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    # The released architecture: CLS, learned positions, padding attended, PyTorch's initialisation.
    return _classifier_run(
        tmp_path_factory.mktemp("run") / "cls", position="learned", mask_padding=False, **RELEASED_BLOCK
    )


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


@pytest.mark.parametrize("which", ["rope", "cls"])
def test_attributions_are_complete(rope, cls, which):
    model = {"rope": rope, "cls": cls}[which]
    # The class whose logit the words move most (an untrained model's logits hardly move for some
    # classes, and 1% of a change of 1e-4 is below float32 noise), by name.
    sentence = model.sentence(RECORDS[0])
    logits = [_logit(p) for p in model.predict(RECORDS[0]).values()]
    deltas = [abs(logits[k] - _baseline_logit(model, sentence, k)) for k in range(len(CLASS_NAMES))]
    for target in (CLASS_NAMES[int(np.argmax(deltas))],):
        e = model.explain(RECORDS[0], target)
        s = e.sentence
        assert e.words.shape == (s.num_words,) and e.leads.shape == (12,) and e.beats.shape == (len(s.beats),)
        # The endpoints are the model's own logit (from predict) and that of the flat-word baseline.
        probability = model.predict(RECORDS[0])[e.class_name]
        np.testing.assert_allclose(e.logit, _logit(probability), rtol=1e-4, atol=1e-5)
        baseline = _baseline_logit(model, s, e.target)
        np.testing.assert_allclose(e.baseline_logit, baseline, rtol=1e-4, atol=1e-5)
        # Completeness: everything the words (and padding) get adds up to the logit's change.
        delta = e.logit - e.baseline_logit
        assert abs(e.words.sum() + e.padding_attribution - delta) <= 0.01 * abs(delta)
        assert e.completeness_error <= 0.01
        if which == "rope":  # masked padding is never read, so it gets nothing
            assert e.padding_attribution == 0.0
        np.testing.assert_allclose(e.leads.sum(), e.words.sum(), rtol=1e-9)
        np.testing.assert_allclose(e.beats.sum(), e.words.sum(), rtol=1e-9)
        np.testing.assert_allclose(e.leads[3], e.words[s.word_lead == 3].sum(), rtol=1e-9)


def _baseline_logit(model, sentence, target: int) -> float:
    """The classifier's logit when every word embedding is zero, by calling the modules directly."""
    encoder = model.model.encoder
    lead, time = sentence.lead_ids[None], sentence.time_ids[None]
    zeros = np.zeros((1, lead.shape[1], encoder.config.hidden_dim), np.float32)
    hidden = np.asarray(encoder.encode(zeros, lead, time), np.float64)[0]
    if encoder.has_cls:
        pooled = hidden[0]
    else:
        pooled = hidden[: sentence.num_words].mean(axis=0)
    head = model.model.head
    return float(pooled @ np.asarray(head.kernel[...], np.float64)[:, target] + float(head.bias[...][target]))


def test_explain_arguments_and_windows(rope):
    with pytest.raises(ValueError, match="not a class"):
        rope.explain(RECORDS[0], "AFIB")
    with pytest.raises(ValueError, match="window 1 out of range, it has 1"):
        rope.explain(RECORDS[0], 0, window=1)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        rope.explain(RECORDS[0], 0, steps=0)


def test_explanation_figure_draws_every_lead(rope):
    e = rope.explain(RECORDS[1], "MI", steps=16)
    figure = plots.explanation_figure(e)
    assert isinstance(figure, Figure) and len(figure.axes) == 12
    assert [ax.get_ylabel().split("\n")[0] for ax in figure.axes] == list(e.sentence.leads)
    image = plots.figure_to_image(figure)
    assert image.ndim == 3 and image.std() > 0
    assert len(plots.explanation_figure(e.sentence, e, leads=["II", "V1"]).axes) == 2


def _layer_norm(x: np.ndarray, norm) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + norm.epsilon)
    return y * np.asarray(norm.scale[...], np.float64) + np.asarray(norm.bias[...], np.float64)


def test_layers_and_pools_of_a_rope_encoder(rope):
    record = RECORDS[2]
    today = rope.embed(record)
    np.testing.assert_array_equal(rope.embed(record, layer=2), today)  # the last block: as before
    np.testing.assert_array_equal(rope.embed(record, layer=-1), today)
    np.testing.assert_allclose(rope.embed(record, pool="mean"), today, rtol=1e-6)
    words = rope.embed(record, pool="none")
    s = rope.tokenize(record)
    assert words.shape == (s.num_words, 16)
    np.testing.assert_allclose(words.mean(axis=0), today, rtol=1e-5, atol=1e-6)

    # Independent references in float64 from the modules' parameters: layer 0 is the embeddings
    # through the final norm; layer 1 is block 0 (a standalone copy) then the final norm.
    encoder = rope.model.encoder
    real = s.lead_ids != 0
    x = np.asarray(encoder.embed_words(s.words[None]), np.float64)[0]
    x = x + np.asarray(encoder.lead_embed.embedding[...], np.float64)[s.lead_ids]
    x = x + np.asarray(encoder.time_embed.embedding[...], np.float64)[s.time_ids]
    layer0 = _layer_norm(x, encoder.final_norm)[real]
    np.testing.assert_allclose(rope.embed(record, layer=0, pool="none"), layer0, rtol=1e-4, atol=1e-4)
    after_block0 = np.asarray(encoder.layer(0)(x[None].astype(np.float32), real[None]), np.float64)[0]
    layer1 = _layer_norm(after_block0, encoder.final_norm)[real]
    np.testing.assert_allclose(rope.embed(record, layer=1, pool="none"), layer1, rtol=1e-4, atol=1e-4)

    # Many records (pooled: the mean of the words), and the bad arguments.
    many = rope.embed_many(RECORDS[:3], layer=1, progress=False, batch_size=2)
    np.testing.assert_allclose(many[2], layer1.mean(0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(many[2], today, atol=1e-3)
    with pytest.raises(inference.NotSupportedError, match="pool='cls' needs an encoder with a CLS token"):
        rope.embed(record, pool="cls")
    with pytest.raises(ValueError, match=r"layer must be an int in 0..2"):
        rope.embed(record, layer=3)
    with pytest.raises(ValueError, match="pool must be one of"):
        rope.embed(record, pool="max")


def test_pools_of_a_cls_encoder(cls):
    record = RECORDS[3]
    today = cls.embed(record)
    np.testing.assert_array_equal(cls.embed(record, pool="cls"), today)  # the CLS is what the probe reads
    words = cls.embed(record, pool="none")  # the words only, no CLS row
    assert words.shape == (cls.tokenize(record).num_words, 16)
    np.testing.assert_allclose(cls.embed(record, pool="mean"), words.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(cls.embed(record, pool="mean"), today, atol=1e-3)
    np.testing.assert_array_equal(cls.embed(record, layer=2, pool="cls"), today)
