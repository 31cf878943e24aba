"""The `:released` configs are the released code's models and recipe.

The released state dicts' names and shapes are written out below from the released modules
(backbone_vqhbr.py, modeling_vqhbr.py, modeling_pretrain.py, modeling_finetune.py) and checked
against the fixture the released code itself recorded (tests/fixtures/released/tiny.npz). At the
released sizes, `convert_released` must map every released tensor onto a parameter of the model
our `:released` config builds, with its shape, and leave none of ours without one.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest
from flax import nnx

from benchmarks import released_comparison
from heartlang_jax.configs import common, finetune, pipeline, pretrain_base, pretrain_small, schema, sweep, vqhbr
from heartlang_jax.models import VQHBR, EcgClassifier, MaskedEcgModel, released_weights
from heartlang_jax.stages import common as stage_common
from heartlang_jax.stages import vqhbr as vqhbr_stage

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "released" / "tiny.npz"
# The released sizes (modeling_vqhbr.vqhbr, modeling_pretrain.HeartLang, HeartLang_finetune_base).
SEQ_LEN, TIME_WINDOW, DIM, DIM_HEAD = 256, 96, 768, 64
VQ = dict(enc_depth=4, dec_depth=2, heads=2, mlp=2048, n_code=8192, code_dim=128)
BASE = dict(depth=12, heads=8, mlp=1024, vocab=8192)


def backbone_shapes(prefix, *, dim, depth, heads, dim_head, mlp, seq_len, c_in):
    """VqhbrBackbone / ST_ECGFormer: token conv without bias, mask and CLS tokens, positions for
    CLS + seq_len, 16-entry lead and time tables, pre-norm blocks (to_qkv without bias), final norm."""
    inner = heads * dim_head
    shapes = {
        "mask_token": (1, 1, dim), "cls_token": (dim,), "pos_embed": (1, seq_len + 1, dim),
        "token_embed.tokenConv.weight": (dim, c_in, 3),
        "spa_embed.embed.weight": (16, dim), "tem_embed.embed.weight": (16, dim),
        "norm_layer.weight": (dim,), "norm_layer.bias": (dim,),
    }  # fmt: skip
    for i in range(depth):
        p = f"transformer.layers.{i}."
        shapes.update({
            p + "0.norm.weight": (dim,), p + "0.norm.bias": (dim,),
            p + "0.to_qkv.weight": (3 * inner, dim),
            p + "0.to_out.0.weight": (dim, inner), p + "0.to_out.0.bias": (dim,),
            p + "1.net.0.weight": (dim,), p + "1.net.0.bias": (dim,),
            p + "1.net.1.weight": (mlp, dim), p + "1.net.1.bias": (mlp,),
            p + "1.net.4.weight": (dim, mlp), p + "1.net.4.bias": (dim,),
        })  # fmt: skip
    return {prefix + k: v for k, v in shapes.items()}


def vqhbr_shapes(*, dim, enc_depth, dec_depth, heads, dim_head, mlp, seq_len, time_window, n_code, code_dim):
    sizes = dict(dim=dim, heads=heads, dim_head=dim_head, mlp=mlp, seq_len=seq_len)
    return {
        **backbone_shapes("encoder.", depth=enc_depth, c_in=time_window, **sizes),
        **backbone_shapes("decoder.", depth=dec_depth, c_in=code_dim, **sizes),
        "quantize.cluster_size": (n_code,), "quantize.embedding.weight": (n_code, code_dim),
        "quantize.embedding.cluster_size": (n_code,), "quantize.embedding.embed_avg": (n_code, code_dim),
        "quantize.embedding.initted": (1,),
        "encode_task_layer.0.weight": (dim, dim), "encode_task_layer.0.bias": (dim,),
        "encode_task_layer.2.weight": (code_dim, dim), "encode_task_layer.2.bias": (code_dim,),
        "decode_task_layer.0.weight": (dim, dim), "decode_task_layer.0.bias": (dim,),
        "decode_task_layer.2.weight": (time_window, dim), "decode_task_layer.2.bias": (time_window,),
    }  # fmt: skip


def pretrain_shapes(prefix="", *, vocab, **sizes):
    return {**backbone_shapes(prefix, **sizes), prefix + "lm_head.weight": (vocab, sizes["dim"]),
            prefix + "lm_head.bias": (vocab,)}  # fmt: skip


def finetune_shapes(*, num_classes, **sizes):
    # ST_ECGFormerClassifier's backbone keeps ST_ECGFormer's default vocab_size=1024 lm_head.
    return {**pretrain_shapes("backbone.", vocab=1024, **sizes), "mlp_head.weight": (num_classes, sizes["dim"]),
            "mlp_head.bias": (num_classes,)}  # fmt: skip


def test_released_names_and_shapes_are_those_the_released_code_recorded():
    recorded = dict(np.load(FIXTURE))
    dim_head = int(recorded["head_dim"])
    tiny = dict(dim=32, heads=2, dim_head=dim_head, mlp=48, seq_len=48)
    want = {
        "vqhbr": vqhbr_shapes(enc_depth=2, dec_depth=1, time_window=96, n_code=64, code_dim=8, **tiny),
        "pretrain": pretrain_shapes(depth=2, c_in=96, vocab=64, **tiny),
        "finetune": finetune_shapes(depth=2, c_in=96, num_classes=5, **tiny),
    }
    for model, shapes in want.items():
        state = released_comparison.recorded_state(recorded, model)
        assert {k: tuple(v.shape) for k, v in state.items()} == shapes, model


def _zeros(shapes: dict) -> dict[str, np.ndarray]:
    sd = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    if "quantize.embedding.weight" in sd:  # the converter checks the codebook rows are unit-norm
        n_code, code_dim = sd["quantize.embedding.weight"].shape
        sd["quantize.embedding.weight"] = np.full((n_code, code_dim), code_dim**-0.5, np.float32)
    return sd


def _flat_shapes(tree, path=()) -> dict[tuple, tuple]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat_shapes(value, (*path, str(key))))
        else:
            out[(*path, str(key))] = tuple(np.shape(value))
    return out


def _assert_converted_fits(make_model, converted: dict) -> None:
    """Every converted tensor has a place of its shape in the model; every Param gets one."""
    abstract = nnx.eval_shape(make_model)
    model_shapes = _flat_shapes(nnx.to_pure_dict(nnx.state(abstract)))
    params = {tuple(str(k) for k in path) for path, _ in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    converted_shapes = _flat_shapes(converted)
    assert not set(converted_shapes) - set(model_shapes)
    assert {p: model_shapes[p] for p in converted_shapes} == converted_shapes
    assert not params - set(converted_shapes)


def _dtype_free(config):
    return dataclasses.replace(config, dtype="float32")


def test_released_vqhbr_config_is_the_released_vqhbr():
    sd = _zeros(vqhbr_shapes(dim=DIM, dim_head=DIM_HEAD, seq_len=SEQ_LEN, time_window=TIME_WINDOW, **VQ))
    config = vqhbr.get_config(common.RELEASED)
    ours = vqhbr_stage.model_config(schema.validate(config))
    ours = dataclasses.replace(ours, encoder=_dtype_free(ours.encoder), decoder=_dtype_free(ours.decoder))
    assert ours == released_weights.vqhbr_config(sd)
    _assert_converted_fits(lambda: VQHBR(ours, rngs=nnx.Rngs(0)), released_weights.vqhbr_state(sd))


def test_released_pretrain_and_finetune_configs_are_the_released_base():
    sizes = dict(dim=DIM, depth=BASE["depth"], heads=BASE["heads"], dim_head=DIM_HEAD, mlp=BASE["mlp"],
                 seq_len=SEQ_LEN, c_in=TIME_WINDOW)  # fmt: skip
    sd = _zeros(pretrain_shapes(vocab=BASE["vocab"], **sizes))
    ours = stage_common.ecgformer_config(
        schema.validate(pretrain_base.get_config(common.RELEASED)).model.encoder, "float32"
    )
    assert ours == released_weights.encoder_config(sd, dropout_rate=0.1)
    _assert_converted_fits(
        lambda: MaskedEcgModel(ours, BASE["vocab"], rngs=nnx.Rngs(0)), released_weights.pretrain_state(sd)
    )
    del sd
    sd = _zeros(finetune_shapes(num_classes=5, **sizes))
    ours = stage_common.ecgformer_config(schema.validate(finetune.get_config(common.RELEASED)).encoder, "float32")
    assert ours == released_weights.encoder_config(sd, "backbone.", dropout_rate=0.1)
    _assert_converted_fits(lambda: EcgClassifier(ours, 5, rngs=nnx.Rngs(0)), released_weights.finetune_state(sd))
    assert ours.qkv_bias is False and ours.layer_norm_epsilon == 1e-5


def test_released_recipe_values():
    """The released scripts' values (scripts/{vqhbr,pretrain}/MIMIC-IV.sh, scripts/finetune/)."""
    config = pipeline.get_config(common.RELEASED)
    assert config.data.builder_config == "released"  # XQRS on lead I after the dataset's released band-pass
    vq = config.vqhbr
    assert (vq.model.num_codes, vq.model.code_dim, vq.model.dead_code_patience) == (8192, 128, 0)
    assert vq.model.commitment_weighting == "mean"
    assert (vq.optimizer.learning_rate, vq.optimizer.end_learning_rate, vq.optimizer.b2) == (5e-5, 1e-5, 0.99)
    assert (vq.optimizer.weight_decay, vq.optimizer.grad_clip_norm) == (1e-4, 0.0)
    assert (vq.num_epochs, vq.warmup_epochs, vq.batch_size) == (100, 10, 512)
    pre = config.pretrain
    assert (pre.model.encoder.dropout_rate, pre.model.encoder.attention_dropout_rate) == (0.1, 0.1)
    assert (pre.optimizer.learning_rate, pre.optimizer.end_learning_rate) == (5e-4, 1e-5)
    assert (pre.optimizer.b1, pre.optimizer.b2, pre.optimizer.weight_decay, pre.optimizer.grad_clip_norm) == (
        0.9, 0.98, 0.05, 3.0)  # fmt: skip
    assert (pre.num_epochs, pre.warmup_epochs, pre.batch_size) == (200, 5, 512)
    ft = config.sweep.finetune
    linear = ft.optimizer.linear
    assert (linear.learning_rate, linear.end_learning_rate, linear.weight_decay, linear.b2) == (5e-3, 1e-5, 0.05, 0.999)
    assert (ft.num_epochs, ft.warmup_epochs, ft.batch_size) == (100, 10, 256)
    assert config.sweep.modes == ("linear",) and config.sweep.label_fractions == (0.01, 0.1, 1.0)
    for stage in (finetune, sweep, vqhbr, pretrain_base):
        assert stage.get_config(common.RELEASED).data.builder_config == "released"


def test_released_pretraining_is_base_only():
    with pytest.raises(ValueError, match=r"pretrain_base\.py:released"):
        pretrain_small.get_config(common.RELEASED)
