"""Pre-training data from several datasets at once: weights, determinism, resuming, host rows,
the config, and a VQ-HBR run fed by a real mixture of two built datasets."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from heartlang_jax import errors
from heartlang_jax.configs import schema
from heartlang_jax.configs import vqhbr as vqhbr_config
from heartlang_jax.data import input_pipeline
from heartlang_jax.stages import common


def _split(n: int, dataset: int) -> list[dict]:
    """Examples shaped like the stored ones; `words[0, :2]` holds (dataset, position in it)."""
    examples = []
    for i in range(n):
        words = np.zeros((4, 3), np.float16)
        words[0, :2] = dataset, i
        examples.append({"words": words, "lead_ids": np.ones(4, np.uint8), "time_ids": np.ones(4, np.uint8)})
    return examples


def _mixture(sizes=(40, 300), weights=(0.75, 0.25)) -> input_pipeline.MixtureSource:
    parts = tuple(_split(n, k) for k, n in enumerate(sizes))
    return input_pipeline.MixtureSource(parts, names=("a", "b"), weights=weights)


def _batches(dataset, n: int, state=None) -> list[dict]:
    it = iter(dataset.to_iter_dataset())
    if state is not None:
        it.set_state(state)
    return [next(it) for _ in range(n)]


def _source_counts(batches, boundary: int) -> tuple[int, int]:
    index = np.concatenate([b["index"] for b in batches])
    return int((index < boundary).sum()), int((index >= boundary).sum())


@pytest.mark.parametrize("weights", [(0.75, 0.25), (0.3, 0.7), (3.0, 1.0)])
def test_batches_hold_each_dataset_in_its_weight(weights):
    """Over 100 global batches of 16 the share of each dataset is its weight (to 1%), though
    the 3x-heavier dataset is the 7x-smaller one (it is simply repeated more often)."""
    source = _mixture(weights=weights)
    batches = _batches(input_pipeline.train_dataset(source, global_batch=16, seed=0, rows=slice(0, 16)), 100)
    a, b = _source_counts(batches, 40)
    expected = weights[0] / sum(weights)
    assert abs(a / (a + b) - expected) < 0.01, (a, b)
    # Every example is read from its own dataset: `index` runs through the datasets in order.
    for batch in batches[:5]:
        for index, words in zip(batch["index"], batch["words"]):
            assert tuple(words[0, :2]) == ((0, index) if index < 40 else (1, index - 40))


def test_each_dataset_is_reshuffled_and_covered_every_epoch():
    source = _mixture(sizes=(40, 300), weights=(0.5, 0.5))
    batches = _batches(input_pipeline.train_dataset(source, global_batch=8, seed=1, rows=slice(0, 8)), 20)
    small = [int(i) for b in batches for i in b["index"] if i < 40]  # 80 draws = 2 epochs of "a"
    assert sorted(small[:40]) == sorted(small[40:80]) == list(range(40))
    assert small[:40] != small[40:80]


def test_mixture_is_deterministic_and_resumes_from_its_state():
    dataset = input_pipeline.train_dataset(_mixture(), global_batch=8, seed=2, rows=slice(0, 8))
    it = iter(dataset.to_iter_dataset())
    for _ in range(25):
        next(it)
    state = it.get_state()
    expected = [next(it)["index"] for _ in range(3)]
    for want, got in zip(expected, _batches(dataset, 3, state)):
        np.testing.assert_array_equal(got["index"], want)
    again = _batches(input_pipeline.train_dataset(_mixture(), global_batch=8, seed=2, rows=slice(0, 8)), 28)
    np.testing.assert_array_equal(again[25]["index"], expected[0])
    other = _batches(input_pipeline.train_dataset(_mixture(), global_batch=8, seed=3, rows=slice(0, 8)), 1)
    assert not np.array_equal(other[0]["index"], _batches(dataset, 1)[0]["index"])


def test_hosts_take_their_rows_of_each_mixed_global_batch():
    source = _mixture()
    whole = _batches(input_pipeline.train_dataset(source, global_batch=8, seed=0, rows=slice(0, 8)), 10)
    halves = [
        _batches(input_pipeline.train_dataset(source, global_batch=8, seed=0, rows=slice(4 * h, 4 * h + 4)), 10)
        for h in range(2)
    ]
    for k in range(10):
        np.testing.assert_array_equal(np.concatenate([halves[0][k]["index"], halves[1][k]["index"]]), whole[k]["index"])


def test_mixture_entries_are_parsed_and_checked():
    assert input_pipeline.parse_mixture(("ptbxl:0.25", "mimic_iv_ecg:3")) == [("ptbxl", 0.25), ("mimic_iv_ecg", 3.0)]
    config = vqhbr_config.get_config("tiny")
    config.data.mixture = ("ptbxl:1", "mimic_iv_ecg:3")
    schema.validate(config)
    for mixture, message in [
        (("ptbxl",), r"data.mixture: 'ptbxl' is not 'dataset:weight'"),
        (("ptbxl:-1",), r"data.mixture: 'ptbxl:-1' is not 'dataset:weight' with a positive weight"),
        (("ptbxl:1", "ptbxl:2"), r"data.mixture: a dataset is named twice"),
        (("ptbxl:1", "mimic:1"), r"data.mixture\[1\]: 'mimic' must be one of"),
    ]:
        config.data.mixture = mixture
        with pytest.raises(errors.ConfigError, match=message):
            schema.validate(config)
    config.data.mixture = ("ptbxl:1", "mimic_iv_ecg:1")
    config.data.builder_config = "leads1"
    with pytest.raises(errors.ConfigError, match=r"data.mixture\[1\]: mimic_iv_ecg has no builder config 'leads1'"):
        schema.validate(config)


def _info(name: str, **sentence) -> common.DatasetInfo:
    spec = {"leads": ["I"], "max_len": 256, "token_len": 96, "fs": 100, "detector": "multilead"}
    return common.DatasetInfo(name=name, sentence={**spec, **sentence}, amplitude={"mean": 0.0, "std": 1.0})


def test_datasets_cut_unlike_the_main_one_are_refused_in_one_line(monkeypatch, tmp_path):
    config = vqhbr_config.get_config("tiny")
    config.data.mixture = ("ptbxl:1", "csn:1")
    monkeypatch.setattr(common, "open_dataset", lambda config, workdir, name: (name, {"train": []}))
    monkeypatch.setattr(common.DatasetInfo, "of", lambda builder: _info(f"{builder}/leads12", detector="xqrs"))
    with pytest.raises(errors.ConfigError) as e:
        common.open_mixture(schema.validate(config).data, tmp_path, (_info("ptbxl/leads12"), {"train": []}))
    assert str(e.value) == (
        "config.data.mixture: csn/leads12 cuts its sentences unlike ptbxl/leads12 (detector: 'xqrs' vs "
        "'multilead'); mix only datasets built with the same sentence spec"
    )


def test_a_split_a_dataset_lacks_is_named():
    ctx = types.SimpleNamespace(
        mixture=(
            common.MixtureMember(_info("ptbxl/leads12"), 1.0, {"train": [1], "validation": [2], "test": [3]}),
            common.MixtureMember(_info("mimic_iv_ecg/leads12"), 3.0, {"train": [4], "validation": [5]}),
        ),
        config=types.SimpleNamespace(train_shards=1),  # no host shards
    )
    source = common.train_source(ctx, ("train", "validation"))
    assert (source.names, source.weights, len(source)) == (("ptbxl/leads12", "mimic_iv_ecg/leads12"), (1.0, 3.0), 4)
    assert [source[i] for i in range(4)] == [1, 2, 4, 5]
    with pytest.raises(errors.ConfigError, match=r"config.train_splits: mimic_iv_ecg/leads12 has no test split"):
        common.train_source(ctx, ("train", "test"))


def _mixed_tfds_dir(tmp_path, bundled_tfds_dir, csn_tfds_dir):
    """One TFDS data_dir holding the bundled PTB-XL build and the small CSN build (links)."""
    tfds_dir = tmp_path / "tfds"
    tfds_dir.mkdir()
    for name, built in (("ptbxl", bundled_tfds_dir), ("csn", csn_tfds_dir)):
        (tfds_dir / name).symlink_to(built / name)
    return tfds_dir


def _stub_loop(monkeypatch) -> dict:
    """Replaces the training loop with one that records what the stage hands it."""
    fed = {}

    def recording_train(ctx, **kwargs):
        fed.update(ctx=ctx, **kwargs)
        return types.SimpleNamespace(step=0, last_eval={}, meta={})

    monkeypatch.setattr(common, "train", recording_train)
    return fed


def test_vqhbr_trains_on_a_mixture_of_two_built_datasets(bundled_tfds_dir, csn_tfds_dir, tmp_path, monkeypatch):
    """PTB-XL's bundled sample (353 training records) and a 12-record CSN build, weighted 3:1:
    the batches the VQ-HBR stage hands its training loop hold them 3:1, each dataset's examples
    as it stored them. (The loop itself is stubbed: it iterates any grain dataset alike.)"""
    from heartlang_jax.stages import vqhbr

    config = vqhbr_config.get_config("tiny")
    config.data.tfds_dir = str(_mixed_tfds_dir(tmp_path, bundled_tfds_dir, csn_tfds_dir))
    config.data.mixture = ("ptbxl:0.75", "csn:0.25")
    config.batch_size = 16
    schema.validate(config)
    fed = _stub_loop(monkeypatch)
    vqhbr.train_and_evaluate(config, tmp_path / "vqhbr")
    ptbxl_train, csn_train = (m.sources["train"] for m in fed["ctx"].mixture)
    assert (len(ptbxl_train), len(csn_train), fed["num_train_examples"]) == (353, 12, 365)
    batches = _batches(fed["train_data"], 50)
    assert _source_counts(batches, 353) == (600, 200)
    batch = batches[0]
    for row, index in enumerate(batch["index"]):
        stored = ptbxl_train[int(index)] if index < 353 else csn_train[int(index) - 353]
        np.testing.assert_array_equal(batch["words"][row], stored["words"].astype(np.float32))
    info = json.loads((tmp_path / "vqhbr" / "model.json").read_text())
    assert info["dataset"] == "ptbxl/leads12 (trained on the mixture ptbxl/leads12 0.75, csn/leads12 0.25)"


def test_pretraining_reads_a_mixture_with_each_examples_own_targets(
    bundled_tfds_dir, csn_tfds_dir, tmp_path, monkeypatch
):
    """Pre-training on PTB-XL + CSN (1:3): batches hold them 1:3 and every row's targets are
    the vocabulary's word ids of that row (the targets are cached by index in the mixture)."""
    import jax.numpy as jnp

    from heartlang_jax.configs import pretrain_base
    from heartlang_jax.inference import model_info
    from heartlang_jax.stages import pretrain, vqhbr
    from heartlang_jax.training import checkpointing

    vq = vqhbr_config.get_config("tiny")
    vq.dtype = "float32"
    vocabulary = vqhbr.build_model(schema.validate(vq))  # untrained: its word ids are as good as any for the wiring
    vocabulary.eval()
    store = checkpointing.RunCheckpoints(tmp_path / "vqhbr")
    store.save(1, vocabulary, None, {}, {})
    store.close()
    sentence = {"leads": ["I"], "max_len": 256, "token_len": 96, "fs": 100, "detector": "multilead"}
    model_info.write(
        tmp_path / "vqhbr",
        model_info.ModelInfo(kind="vqhbr", model=model_info.vqhbr_fields(vocabulary.config), sentence=sentence,
                         amplitude={"mean": 0.0, "std": 1.0}, dataset="ptbxl/leads12"),
    )  # fmt: skip
    config = pretrain_base.get_config("tiny")
    config.data.tfds_dir = str(_mixed_tfds_dir(tmp_path, bundled_tfds_dir, csn_tfds_dir))
    config.data.mixture = ("ptbxl:1", "csn:3")
    config.vqhbr_workdir = str(tmp_path / "vqhbr")
    config.batch_size = 16
    config.dtype = "float32"
    schema.validate(config)
    fed = _stub_loop(monkeypatch)
    pretrain.train_and_evaluate(config, tmp_path / "pretrain")
    batches = [fed["prepare_batch"](b) for b in _batches(fed["train_data"], 10)]
    assert _source_counts(batches, 353) == (40, 120)
    for batch in batches[:2]:
        ids = np.asarray(vocabulary.word_ids(*(jnp.asarray(batch[k]) for k in input_pipeline.SENTENCE_FIELDS)))
        real = batch["lead_ids"] != 0
        np.testing.assert_array_equal(batch["targets"][real], ids[real])
