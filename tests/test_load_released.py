"""`heartlang_jax.load_released` on a local folder laid out like the Hub repository, holding
released-size random weights as .npz state dicts (torch is not installed here; the .pth branch
and the Hub download are not exercised offline)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from test_released_configs import BASE, DIM, DIM_HEAD, SEQ_LEN, TIME_WINDOW, VQ, pretrain_shapes, vqhbr_shapes

import heartlang_jax
from heartlang_jax import convert_released
from heartlang_jax.ecg import filters
from heartlang_jax.inference import released
from heartlang_jax.models import released_weights

RECORD = (
    pathlib.Path(__file__).parents[1] / "heartlang_jax" / "data" / "ptbxl_mini" / "records100" / "00000" / "00001_lr"
)


def _random_state(shapes: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {name: (0.02 * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}
    if "quantize.embedding.weight" in state:  # the released EMA codebook keeps unit-norm rows
        codebook = rng.standard_normal(state["quantize.embedding.weight"].shape)
        state["quantize.embedding.weight"] = (codebook / np.linalg.norm(codebook, axis=1, keepdims=True)).astype(
            np.float32
        )
        state["quantize.embedding.cluster_size"] = np.ones_like(state["quantize.embedding.cluster_size"])
    for name in state:  # LayerNorm scales near 1, as trained
        if name.endswith(("norm.weight", "net.0.weight", "norm_layer.weight")):
            state[name] = (1.0 + state[name]).astype(np.float32)
    return state


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> pathlib.Path:
    """The Hub layout (released.HUB_FILES) with .npz state dicts of the released sizes."""
    root = tmp_path_factory.mktemp("hub") / "HeartLang"
    sizes = dict(dim=DIM, heads=VQ["heads"], dim_head=DIM_HEAD, mlp=VQ["mlp"], seq_len=SEQ_LEN)
    vq = vqhbr_shapes(
        enc_depth=VQ["enc_depth"], dec_depth=VQ["dec_depth"], time_window=TIME_WINDOW, n_code=VQ["n_code"],
        code_dim=VQ["code_dim"], **sizes,
    )  # fmt: skip
    base = dict(dim=DIM, heads=BASE["heads"], dim_head=DIM_HEAD, mlp=BASE["mlp"], seq_len=SEQ_LEN)
    pre = pretrain_shapes(vocab=BASE["vocab"], depth=BASE["depth"], c_in=TIME_WINDOW, **base)
    for kind, shapes, seed in (("vqhbr", vq, 0), ("pretrain", pre, 1)):
        path = (root / released.HUB_FILES[kind]).with_suffix(".npz")
        path.parent.mkdir(parents=True)
        np.savez(path, **_random_state(shapes, seed))
    (root / "README.md").write_text("not a checkpoint\n")
    return root


@pytest.mark.slow
def test_load_released_equals_convert_released_then_load_and_reuses_its_cache(hub_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    model = heartlang_jax.load_released(hub_folder, cache_dir=cache)
    (folder,) = (cache / "released").iterdir()
    assert json.loads((folder / "source.json").read_text())["files"] == {
        kind: pathlib.Path(name).with_suffix(".npz").as_posix() for kind, name in released.HUB_FILES.items()
    }

    # The reference: the converter's own run folders, loaded with `load`.
    reference = tmp_path / "reference"
    for kind, build in (("vqhbr", released_weights.build_vqhbr), ("pretrain", released_weights.build_pretrain)):
        state = released.read_state((hub_folder / released.HUB_FILES[kind]).with_suffix(".npz"))
        convert_released.write_run(reference / kind, kind, build(state))
    want = heartlang_jax.load(reference / "pretrain", vocabulary=reference / "vqhbr")
    for kind in ("vqhbr", "pretrain"):
        assert (folder / kind / "model.json").read_text() == (reference / kind / "model.json").read_text()
    assert model.kind == "pretrain" and model.hidden_dim == DIM and model.num_codes == VQ["n_code"]
    assert model.tokenizer.filter == filters.RELEASED_BANDPASS  # the released MIMIC-IV band-pass, applied by embed
    np.testing.assert_array_equal(model.embed(RECORD), want.embed(RECORD))
    np.testing.assert_array_equal(model.word_ids(RECORD), want.word_ids(RECORD))

    # Second call: the cached run folders, untouched, and no conversion.
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(released, "_convert", no_conversion)
    again = heartlang_jax.load_released(hub_folder, cache_dir=cache, kind="vqhbr")
    assert again.kind == "vqhbr" and again.path == str(folder / "vqhbr")
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps
    assert len(list((cache / "released").iterdir())) == 1


def test_a_folder_without_checkpoints_or_a_missing_hub_extra_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(released.ReleasedWeightsError, match="holds no released checkpoint"):
        heartlang_jax.load_released(tmp_path / "empty", cache_dir=tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)  # not installed
    with pytest.raises(released.ReleasedWeightsError, match=r"heartlang-jax\[hub\]"):
        heartlang_jax.load_released("PKUDigitalHealth/HeartLang", cache_dir=tmp_path / "cache")


def test_kind_is_read_from_the_tensors():
    assert released.kind_of({"quantize.embedding.weight": np.zeros(1)}) == "vqhbr"
    assert released.kind_of({"lm_head.weight": np.zeros(1)}) == "pretrain"
    assert released.kind_of({"mlp_head.weight": np.zeros(1)}) == "finetune"
    assert released.kind_of({"something.else": np.zeros(1)}) is None
