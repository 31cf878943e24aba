"""Converted released weights give the released code's outputs (fixture recorded with torch)."""

import json
import pathlib

import numpy as np
import pytest

from benchmarks import released_comparison
from heartlang_jax import convert_released
from heartlang_jax.inference import model_info
from heartlang_jax.models import released_weights

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "released" / "tiny.npz"


@pytest.fixture(scope="module")
def recorded():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def figures(recorded):
    return released_comparison.compare_with_recorded(recorded)


def test_fixture_has_padding_and_real_words(recorded):
    real = recorded["lead_ids"] != 0
    assert 50 < real.sum() < real.size  # real words, and padding words (attended as released)


@pytest.mark.parametrize(
    "name",
    [
        "vqhbr_features",
        "vqhbr_z",
        "vqhbr_loss",
        "vqhbr_reconstruction",
        "pretrain_hidden",
        "pretrain_logits",
        "finetune_logits",
    ],
)
def test_outputs_match_released_code(figures, name):
    assert figures[f"{name}_rel"] < 1e-5, figures


def test_word_ids_match_released_code(figures):
    assert figures["word_id_agreement"] == 1.0, figures


def test_converted_configs_are_the_released_architecture(recorded):
    config = released_weights.vqhbr_config(released_comparison.recorded_state(recorded, "vqhbr"), head_dim=8)
    assert config.commitment_weighting == "mean"
    for enc in (config.encoder, config.decoder):
        assert enc.position == "learned" and not enc.mask_padding
        assert not enc.qkv_bias and enc.layer_norm_epsilon == 1e-5
        assert (enc.hidden_dim, enc.mlp_dim, enc.num_heads, enc.head_dim, enc.max_len) == (32, 48, 2, 8, 48)
    assert (config.encoder.num_layers, config.decoder.num_layers) == (2, 1)
    assert (config.num_codes, config.code_dim, config.decoder.token_len) == (64, 8, 8)


def test_missing_or_misshapen_tensors_are_named(recorded):
    state = released_comparison.recorded_state(recorded, "pretrain")
    del state["transformer.layers.1.1.net.4.bias"]
    with pytest.raises(released_weights.ConversionError, match="net.4.bias"):
        released_weights.build_pretrain(state, head_dim=8)
    state = released_comparison.recorded_state(recorded, "pretrain")
    with pytest.raises(released_weights.ConversionError, match="head_dim"):
        released_weights.build_pretrain(state, head_dim=5)


def test_run_folders_load_back(recorded, tmp_path):
    """The converter's run folders rebuild, through model_info, the same models."""
    head_dim = int(recorded["head_dim"])
    vq = released_weights.build_vqhbr(released_comparison.recorded_state(recorded, "vqhbr"), head_dim=head_dim)
    convert_released.write_run(tmp_path / "vqhbr", "vqhbr", vq)
    clf = released_weights.build_finetune(released_comparison.recorded_state(recorded, "finetune"), head_dim=head_dim)
    convert_released.write_run(
        tmp_path / "finetune", "finetune", clf, task="superdiagnostic", class_names=["CD", "HYP", "MI", "NORM", "STTC"]
    )
    info, loaded_vq, step = model_info.load_model(tmp_path / "vqhbr", expect_kind="vqhbr")
    assert step == 0 and info.sentence["detector"] == "xqrs" and info.amplitude == {"mean": 0.0, "std": 1.0}
    args = [recorded[k] for k in ("words", "lead_ids", "time_ids")]
    real = recorded["lead_ids"] != 0
    np.testing.assert_array_equal(np.asarray(loaded_vq.word_ids(*args))[real], recorded["vqhbr_ids"][real])
    info, loaded_clf, _ = model_info.load_model(tmp_path / "finetune", expect_kind="finetune")
    assert info.class_names == ("CD", "HYP", "MI", "NORM", "STTC")
    loaded_clf.eval()
    np.testing.assert_allclose(np.asarray(loaded_clf(*args)), recorded["finetune_logits"], rtol=1e-5, atol=1e-5)
    fields = json.loads((tmp_path / "finetune" / "model.json").read_text())["model"]["encoder"]
    assert fields["position"] == "learned" and fields["mask_padding"] is False


def test_raw_mimic_record_through_the_released_filter_gives_the_released_word_ids(recorded, tmp_path):
    """A raw 500 Hz MIMIC-layout record read by `load(run).word_ids` (our resampling, the filter in
    model.json, our tokenizer) against the released preprocessing script's filter on the same
    record, the same sentence cut, and the released get_codebook_indices (issue 23)."""
    figures = released_comparison.compare_filtered_records(recorded, tmp_path / "filtered")
    assert figures["filtered_real_words"] > 40 and figures["filtered_records_with_other_sentences"] == 0, figures
    assert figures["filtered_word_id_agreement"] >= 0.999, figures
    # The control: the same run folder without the filter reads some other words (random tiny weights).
    unfiltered = released_comparison.compare_filtered_records(recorded, tmp_path / "unfiltered", our_filter=False)
    assert unfiltered["filtered_word_id_agreement"] < 0.999, unfiltered  # 37 of 48 when recorded
