"""Run folders written before a format change still load to the same model."""

from __future__ import annotations

import json

import pytest

from heartlang_jax.inference import model_info

_SENTENCE = {
    "leads": ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"],
    "max_len": 16,
    "token_len": 8,
    "fs": 100,
    "detector": "multilead",
    "max_duration_s": 10.0,
    "min_leads": 1,
    "reject_flat_leads": False,
}


def _old_encoder(position: str, **extra) -> dict:
    """An encoder as model.json stored it before the released block details were explicit."""
    fields = {
        "num_layers": 1,
        "hidden_dim": 16,
        "mlp_dim": 32,
        "num_heads": 2,
        "head_dim": 8,
        "token_len": 8,
        "max_len": 16,
        "num_lead_ids": 16,
        "num_time_ids": 16,
        "position": position,
        "mask_padding": position == "rope",
        "dropout_rate": 0.0,
        "attention_dropout_rate": 0.0,
        "rope_max_wavelength": 10000.0,
        "qkv_bias": None,
        "layer_norm_epsilon": None,
        "released_init": None,
        "attention_implementation": "auto",
    }
    return {**fields, **extra}


def _write(tmp_path, encoder: dict) -> None:
    payload = {
        "kind": "pretrain",
        "model": {"encoder": encoder, "vocab_size": 12},
        "sentence": _SENTENCE,
        "amplitude": {"mean": 0.0, "std": 1.0},
        "dataset": "ptbxl/leads12",
        "task": None,
        "class_names": None,
        "format_version": 1,
    }
    (tmp_path / "model.json").write_text(json.dumps(payload))


@pytest.mark.parametrize(
    "position, bias, epsilon, torch_init", [("learned", False, 1e-5, True), ("rope", True, 1e-6, False)]
)
def test_none_block_details_resolve_as_position_used_to(tmp_path, position, bias, epsilon, torch_init):
    _write(tmp_path, _old_encoder(position))
    info = model_info.read(tmp_path)
    encoder = info.model["encoder"]
    assert (encoder["qkv_bias"], encoder["layer_norm_epsilon"], encoder["released_init"]) == (bias, epsilon, torch_init)
    model = model_info.build_model(info)
    assert (model.encoder.blocks.attn.qkv.bias is not None) is bias
    assert model.encoder.final_norm.epsilon == epsilon


def test_missing_block_details_resolve_too(tmp_path):
    encoder = _old_encoder("learned")
    for name in ("qkv_bias", "layer_norm_epsilon", "released_init"):
        del encoder[name]
    _write(tmp_path, encoder)
    config = model_info.encoder_config(model_info.read(tmp_path).model["encoder"])
    assert (config.qkv_bias, config.layer_norm_epsilon, config.released_init) == (False, 1e-5, True)


def test_explicit_values_are_kept(tmp_path):
    _write(tmp_path, _old_encoder("learned", qkv_bias=True, layer_norm_epsilon=1e-3, released_init=False))
    encoder = model_info.read(tmp_path).model["encoder"]
    assert (encoder["qkv_bias"], encoder["layer_norm_epsilon"], encoder["released_init"]) == (True, 1e-3, False)
