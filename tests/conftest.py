"""Shared fixtures. The bundled sample is built once per test session (about 20 s on 2 cores)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bundled_tfds_dir(tmp_path_factory):
    """TFDS data_dir holding `ptbxl/leads12` built from the 500-record sample shipped with the package."""
    from heartlang_jax.data import input_pipeline

    root = tmp_path_factory.mktemp("tfds")
    input_pipeline.prepare_dataset(root, manual_dir="bundled", num_workers=2)
    return root


@pytest.fixture(scope="session")
def bundled_builder(bundled_tfds_dir):
    from heartlang_jax.data import input_pipeline

    return input_pipeline.load_builder(bundled_tfds_dir)


@pytest.fixture(scope="session")
def bundled_sources(bundled_builder):
    return bundled_builder.as_data_source()


@pytest.fixture(scope="session")
def tiny_vqhbr_workdir(tmp_path_factory, bundled_tfds_dir):
    """A tiny VQ-HBR tokenizer briefly trained on the bundled sample (the pre-training tests' targets)."""
    from heartlang_jax.configs import vqhbr as vqhbr_config
    from heartlang_jax.stages import vqhbr

    workdir = tmp_path_factory.mktemp("vqhbr")
    config = vqhbr_config.get_config("tiny")
    config.data.tfds_dir = str(bundled_tfds_dir)
    config.num_train_steps = 40
    config.eval_every_steps = 40
    config.checkpoint_every_steps = 40
    config.dtype = "float32"
    vqhbr.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture
def make_pretrain_run(tmp_path):
    """Writes a pre-training workdir as the fine-tuning stage reads it, without training: its
    config, a checkpoint of a freshly initialized model, and the tokenizer config it names.
    `make(**encoder_overrides)` returns (workdir, model)."""
    import optax
    import synthetic
    from flax import nnx

    from heartlang_jax.configs import pretrain_common, schema, typed
    from heartlang_jax.configs import vqhbr as vqhbr_config
    from heartlang_jax.inference import model_info
    from heartlang_jax.stages import pretrain, vqhbr
    from heartlang_jax.training import checkpointing

    def make(**encoder_overrides):
        vq_dict = vqhbr_config.get_config("tiny")
        vq_dict.model.num_codes = 7
        vq = schema.validate(vq_dict)
        checkpointing.claim_workdir(tmp_path / "vqhbr", typed.as_dict(vq), ())
        vq_info = model_info.ModelInfo(
            kind="vqhbr",
            model=model_info.vqhbr_fields(vqhbr.model_config(vq)),
            sentence=synthetic.DATASET.sentence,
            amplitude=synthetic.DATASET.amplitude,
            dataset=synthetic.DATASET.name,
        )
        model_info.write(tmp_path / "vqhbr", vq_info)
        config = pretrain_common.get_pretrain_config("small", "tiny")
        config.model.encoder.update(num_layers=2, hidden_dim=16, mlp_dim=32, num_heads=2, head_dim=8)
        config.model.encoder.update(encoder_overrides)
        config.vqhbr_workdir = str(tmp_path / "vqhbr")
        config.seed = 3
        config.dtype = "float32"
        config = schema.validate(config)
        workdir = tmp_path / "pretrain"
        checkpointing.claim_workdir(workdir, typed.as_dict(config), ())
        model = pretrain.build_model(config, vq.model.num_codes)
        encoder = model_info.encoder_fields(model.encoder.config)
        info = model_info.ModelInfo(
            kind="pretrain",
            model={"encoder": encoder, "vocab_size": vq.model.num_codes},
            sentence=synthetic.DATASET.sentence,
            amplitude=synthetic.DATASET.amplitude,
            dataset=synthetic.DATASET.name,
        )
        model_info.write(workdir, info)
        checkpoints = checkpointing.RunCheckpoints(workdir)
        checkpoints.save(5, model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param), {}, {})
        checkpoints.close()
        return workdir, model

    return make


@pytest.fixture(scope="session")
def csn_tfds_dir(tmp_path_factory):
    """TFDS data_dir holding `csn/leads12` built from 24 records (12/6/6) that the test writes in
    PhysioNet's ecg-arrhythmia layout (bundled PTB-XL signals at 500 Hz, the shipped split's
    records and labels); about 5 s on 2 cores."""
    from heartlang_jax.data import input_pipeline
    from tfds_ptbxl import testing
    from tfds_ptbxl.csn import csn_dataset_builder

    tmp = tmp_path_factory.mktemp("csn")
    split_file = tmp / "splits.csv.gz"
    rows = testing.subset_split_file(
        csn_dataset_builder.Builder.SPLIT_FILE, split_file, {"train": 12, "validation": 6, "test": 6}
    )
    for i, row in enumerate(rows):
        testing.write_cinc(tmp / "ecg-arrhythmia" / row.record, testing.ptbxl_signal(i + 1), 500)
    root = tmp / "tfds"
    input_pipeline.prepare_dataset(
        root, dataset="csn", manual_dir=tmp / "ecg-arrhythmia", num_workers=1, builder_kwargs={"split_file": split_file}
    )
    return root
