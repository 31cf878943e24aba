"""Fine-tuning stage on small in-memory splits: frozen encoder, layer decay, init, model selection."""

import json
import types

import jax
import numpy as np
import pytest
import synthetic
from flax import nnx

from heartlang_jax.configs import finetune as finetune_config
from heartlang_jax.configs import pretrain_common, typed
from heartlang_jax.configs import schema as stage_configs
from heartlang_jax.data import input_pipeline
from heartlang_jax.stages import finetune
from heartlang_jax.training import checkpointing, optim

NUM_CLASSES = {"superdiagnostic": 5, "subdiagnostic": 23, "form": 19, "rhythm": 12}
TINY_ENCODER = dict(num_layers=2, hidden_dim=16, mlp_dim=32, num_heads=2, head_dim=8)


def make_split(n: int, seed: int) -> list[dict]:
    """Examples shaped like the TFDS ones; every 5th has no rhythm label (dropped for that task)."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        num_words = int(rng.integers(24, 120))
        lead_ids = np.zeros(256, np.uint8)
        lead_ids[:num_words] = rng.integers(1, 13, num_words)
        time_ids = np.zeros(256, np.uint8)
        time_ids[:num_words] = rng.integers(1, 11, num_words)
        words = np.zeros((256, 96), np.float16)
        words[:num_words] = rng.normal(size=(num_words, 96))
        example = {"words": words, "lead_ids": lead_ids, "time_ids": time_ids, "num_words": num_words, "ecg_id": i}
        for task, classes in NUM_CLASSES.items():
            labels = (rng.random(classes) < 0.4).astype(np.uint8)
            labels[i % classes] = 1
            example[task] = labels
        example["rhythm"] = example["rhythm"] * np.uint8(i % 5 != 0)
        examples.append(example)
    return examples


@pytest.fixture(scope="module")
def sources():
    return {"train": make_split(24, 0), "validation": make_split(16, 1), "test": make_split(16, 2)}


def tiny_config(mode="linear", task="superdiagnostic", steps=4):
    config = finetune_config.get_config("tiny")
    config.encoder.update(TINY_ENCODER)
    config.task = task
    config.mode = mode
    config.batch_size = 4
    config.num_train_steps = steps
    config.eval_every_steps = 2
    config.log_every_steps = 2
    config.dtype = "float32"
    return config


def class_names(task):
    return [f"c{i}" for i in range(NUM_CLASSES[task])]


def restored_model(config, workdir, task="superdiagnostic"):
    model = finetune.build_model(stage_configs.validate(config), NUM_CLASSES[task])
    checkpoints = checkpointing.RunCheckpoints(workdir, read_only=True)
    checkpoints.restore(checkpoints.steps()[-1], model, None)
    checkpoints.close()
    return model


def params(module):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))


def test_linear_probing_trains_only_the_head(sources, tmp_path, make_pretrain_run):
    pretrain_dir, pretrained = make_pretrain_run()
    config = tiny_config("linear")
    config.init_workdir = str(pretrain_dir)
    result = finetune.finetune(
        stage_configs.validate(config), tmp_path / "ft", sources, class_names(config.task), synthetic.DATASET
    )
    trained = restored_model(config, tmp_path / "ft")
    # Bitwise: the frozen encoder is the pre-trained one after training; only the head moved.
    jax.tree.map(np.testing.assert_array_equal, params(pretrained.encoder), params(trained.encoder))
    initial_head = params(finetune.build_model(stage_configs.validate(config), 5).head)
    assert not np.array_equal(initial_head["kernel"], params(trained.head)["kernel"])
    on_disk = json.loads((tmp_path / "ft" / finetune.RESULT_FILE).read_text())
    assert on_disk == result
    assert (result["task"], result["mode"], result["init"], result["num_train_records"]) == (
        "superdiagnostic",
        "linear",
        str(pretrain_dir),
        24,
    )
    assert 0.0 <= result["val_auc"] <= 1.0 and 0.0 <= result["test_auc"] <= 1.0
    assert result["best_step"] in (2, 4)


def check_test_scores(workdir, result, sources, task="superdiagnostic"):
    """test_scores.npz holds, per test record, the labels and scores whose macro AUC is the result's."""
    from heartlang_jax.evaluation import metrics

    assert not list(workdir.glob("*.tmp"))
    with np.load(workdir / finetune.TEST_SCORES_FILE) as saved:
        saved = dict(saved)
    labelled = [i for i, e in enumerate(sources["test"]) if e[task].any()]
    np.testing.assert_array_equal(saved["index"], labelled)
    np.testing.assert_array_equal(saved["labels"], np.stack([sources["test"][i][task] for i in labelled]))
    assert saved["logits"].shape == (len(labelled), NUM_CLASSES[task])
    assert metrics.macro_auc(saved["labels"], saved["logits"]) == result["test_auc"]
    np.testing.assert_allclose(saved["probabilities"], 1 / (1 + np.exp(-saved["logits"].astype(np.float64))), rtol=1e-6)
    assert list(saved["class_names"]) == class_names(task)


def test_reported_auc_is_the_test_auc_of_the_best_validation_epoch(sources, tmp_path):
    """Every evaluation is in metrics.jsonl: the result must pick the max-validation one's test AUC."""
    config = tiny_config("linear", steps=6)
    config.eval_every_steps = 1
    result = finetune.finetune(
        stage_configs.validate(config), tmp_path, sources, class_names(config.task), synthetic.DATASET
    )
    evals = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "eval_auc" in r]
    assert len(evals) == 6
    best = max(evals, key=lambda r: r["eval_auc"])  # first of equals, as the stage keeps the first
    assert (result["val_auc"], result["test_auc"], result["best_step"]) == (
        best["eval_auc"],
        best["eval_test_auc"],
        best["step"],
    )
    check_test_scores(tmp_path, result, sources)


def test_best_epoch_survives_resume(sources, tmp_path):
    """Rerunning a finished run restores its final checkpoint: the best epoch comes from `meta`."""
    config = tiny_config("linear", task="rhythm")
    first = finetune.finetune(
        stage_configs.validate(config), tmp_path, sources, class_names("rhythm"), synthetic.DATASET
    )
    assert first["num_train_records"] == 24 - 5  # records without a rhythm label are dropped
    again = finetune.finetune(
        stage_configs.validate(config), tmp_path, sources, class_names("rhythm"), synthetic.DATASET
    )
    assert again == first


def test_full_finetuning_trains_the_encoder(sources, tmp_path):
    config = tiny_config("full", steps=2)
    result = finetune.finetune(
        stage_configs.validate(config), tmp_path, sources, class_names(config.task), synthetic.DATASET
    )
    initial = finetune.build_model(stage_configs.validate(config), 5)
    trained = restored_model(config, tmp_path)
    before, after = params(initial.encoder), params(trained.encoder)
    # Blocks are scanned: their parameters are stacked along a leading layer axis.
    assert not np.array_equal(before["blocks"]["attn"]["qkv"]["kernel"][0], after["blocks"]["attn"]["qkv"]["kernel"][0])
    assert not np.array_equal(before["token_embed"]["kernel"], after["token_embed"]["kernel"])
    assert 0.0 <= result["test_auc"] <= 1.0
    check_test_scores(tmp_path, result, sources)


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_layer_decay_factors_follow_beit(position):
    """decay^(L + 1 - layer_id): head and final norm 1, block i decay^(L - i), embeddings decay^(L + 1)."""
    config = tiny_config("full")
    config.encoder.position = position
    model = finetune.build_model(stage_configs.validate(config), 5)
    scales = nnx.to_pure_dict(optim.layer_decay_scales(model, 0.9))
    assert jax.tree.structure(scales) == jax.tree.structure(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert scales["head"]["kernel"] == scales["head"]["bias"] == 1.0
    assert scales["encoder"]["final_norm"]["scale"] == 1.0
    # Scanned blocks: each scale has a leading layer axis, block i at index i.
    for value in jax.tree.leaves(scales["encoder"]["blocks"]):
        assert np.asarray(value).reshape(2, -1)[1] == pytest.approx(0.9)
        assert np.asarray(value).reshape(2, -1)[0] == pytest.approx(0.81)
    embeddings = ["token_embed", "lead_embed", "time_embed"] + (
        ["cls_token", "pos_embed"] if position == "learned" else []
    )
    assert set(scales["encoder"]) == {"blocks", "final_norm", *embeddings}
    for name in embeddings:
        for value in jax.tree.leaves(scales["encoder"][name]):
            assert value == pytest.approx(0.9**3)


def test_init_from_pretraining_copies_the_encoder(make_pretrain_run):
    pretrain_dir, pretrained = make_pretrain_run(num_layers=1, position="learned", dropout_rate=0.1)
    config = tiny_config()
    config.init_workdir = str(pretrain_dir)
    model = finetune.build_model(stage_configs.validate(config), 12)
    assert model.encoder.config.num_layers == 1 and model.encoder.has_cls  # the run's own architecture
    assert model.encoder.config.dropout_rate == config.encoder.dropout_rate == 0.0  # this run's dropout
    jax.tree.map(np.testing.assert_array_equal, params(pretrained.encoder), params(model.encoder))


def test_mismatched_encoder_is_a_clear_error(make_pretrain_run):
    _, pretrained = make_pretrain_run()
    config = tiny_config()
    config.encoder.num_layers = 3
    with pytest.raises(checkpointing.CheckpointError, match="does not match"):
        finetune.transfer_encoder(pretrained, finetune.build_model(stage_configs.validate(config), 5))


def test_init_from_a_non_pretraining_run_fails(make_pretrain_run):
    pretrain_dir, _ = make_pretrain_run()
    config = tiny_config()
    config.init_workdir = str(pretrain_dir.parent / "vqhbr")
    with pytest.raises(checkpointing.CheckpointError, match="config.init_workdir: .*holds a 'vqhbr' run"):
        finetune.build_model(stage_configs.validate(config), 5)


def test_missing_init_checkpoint_fails_before_any_compute(tmp_path):
    config = tiny_config()
    config.init_workdir = str(tmp_path / "no_such_run")
    with pytest.raises(checkpointing.CheckpointError, match=r"^config.init_workdir: .*no_such_run.*not found"):
        finetune.train_and_evaluate(config, tmp_path / "ft")
    unfinished = pretrain_common.get_pretrain_config("small", "tiny")
    checkpointing.claim_workdir(tmp_path / "unfinished", typed.as_dict(stage_configs.validate(unfinished)), ())
    config.init_workdir = str(tmp_path / "unfinished")
    with pytest.raises(checkpointing.CheckpointError, match=r"^config.init_workdir: .*unfinished is not a finished"):
        finetune.train_and_evaluate(config, tmp_path / "ft")
    assert not (tmp_path / "ft").exists()  # no dataset built, no workdir claimed


@pytest.mark.parametrize("field,value,message", [("mode", "probe", "mode"), ("label_fraction", 0.0, "label_fraction")])
def test_config_validation_names_the_field(field, value, message):
    config = finetune_config.get_config()
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
        stage_configs.validate(config)


def test_a_task_the_dataset_does_not_declare_names_the_field():
    builder = types.SimpleNamespace(name="ptbxl", info=types.SimpleNamespace(metadata={"classes": {"rhythm": ["SR"]}}))
    assert finetune.task_classes(builder, "rhythm") == ["SR"]
    with pytest.raises(
        ValueError, match=r"^config.task='diagnostic' is not a task of ptbxl; its tasks are \['rhythm'\]"
    ):
        finetune.task_classes(builder, "diagnostic")


def test_label_fraction_subsets_are_seeded_plain_random_choices(sources):
    indices = input_pipeline.labelled_indices(sources["train"], "rhythm")
    first = input_pipeline.label_fraction_subset(indices, 0.25, seed=1)
    np.testing.assert_array_equal(first, input_pipeline.label_fraction_subset(indices, 0.25, seed=1))
    assert not np.array_equal(first, input_pipeline.label_fraction_subset(indices, 0.25, seed=2))
    chosen = np.random.default_rng(1).choice(len(indices), size=round(0.25 * len(indices)), replace=False)
    expected = indices[np.sort(chosen)]
    np.testing.assert_array_equal(first, expected)
    # The training batches of one epoch cover exactly that subset.
    data = input_pipeline.train_dataset(sources["train"], global_batch=1, seed=1, task="rhythm", label_fraction=0.25)
    seen = sorted(int(data[i]["index"][0]) for i in range(len(first)))
    np.testing.assert_array_equal(seen, first)
