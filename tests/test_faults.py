"""Faults and hostile input, tried as an unlucky user or an attacker would (issue 21).

Each test is named for the numbered point of the issue it covers (`test_p<N>_...`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import synthetic
import wfdb
from etils import epath
from flax import nnx
from test_inference import write_run

import heartlang_jax
from heartlang_jax import errors
from heartlang_jax.configs import schema, typed
from heartlang_jax.configs import vqhbr as vqhbr_config
from heartlang_jax.data import bundled_sample_dir, input_pipeline
from heartlang_jax.ecg import records, sentence_corpus
from heartlang_jax.inference import model_info
from heartlang_jax.stages import vqhbr
from heartlang_jax.training import checkpointing, optim, parallel, train_loop, workdir_lock

REPO = pathlib.Path(__file__).resolve().parents[1]
DUMMY = REPO / "tfds_ptbxl" / "ptbxl" / "dummy_data"
SOURCE = synthetic.sentences(48, seed=0)


def _config(steps: int):
    config = vqhbr_config.get_config("tiny")
    config.num_train_steps = steps
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 2
    config.dtype = "float32"
    return config


def _as_json(config) -> dict:
    """A config as `claim_workdir` records it (config.json's shape)."""
    return typed.as_dict(schema.validate(config))


def _run(workdir, steps: int, *, evaluate=None, total_steps: int = 6):
    config = schema.validate(_config(steps))
    model = vqhbr.build_model(config)
    tx = optim.make_optimizer(config.optimizer, num_train_steps=total_steps, warmup_steps=1)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    return train_loop.run(
        stage="vqhbr",
        config=config,
        workdir=str(workdir),
        model=model,
        optimizer=optimizer,
        train_step=vqhbr.train_step,
        train_data=input_pipeline.train_dataset(SOURCE, global_batch=8, seed=0),
        mesh=parallel.make_mesh(),
        schedule=train_loop.Schedule.from_config(config, len(SOURCE), 8),
        evaluate=evaluate,
    )


# --- 1. unreadable checkpoint steps ---------------------------------------------------------------


def test_p1_unreadable_step_is_moved_aside_and_the_rerun_continues(tmp_path, caplog):
    _run(tmp_path, 4)  # steps 2 and 4
    directory = tmp_path / checkpointing.CHECKPOINT_DIR
    shutil.rmtree(directory / "4" / "model")  # a finalized step whose files were lost
    with caplog.at_level(logging.WARNING):
        result = _run(tmp_path, 6)  # resumes at 2, reaches 4 again: no StepAlreadyExistsError
    assert result.step == 6
    aside = tmp_path / checkpointing.UNREADABLE_DIR / "4"
    assert aside.is_dir() and not (aside / "model").exists()
    assert any("step 4" in r.getMessage() and str(aside) in r.getMessage() for r in caplog.records)
    store = checkpointing.RunCheckpoints(tmp_path, read_only=True)
    assert store.steps()[-1] == 6
    store.close()


def test_p1_load_names_the_unreadable_step(tmp_path):
    run = write_run(tmp_path / "run", "pretrain")  # its checkpoint is step 7
    # The array data is lost, its metadata (shapes) is intact: the shape check passes, the read fails.
    for data in (run / checkpointing.CHECKPOINT_DIR / "7" / "model" / "ocdbt.process_0" / "d").iterdir():
        data.write_bytes(b"\0garbage")
    # In a process of its own: Orbax's failed reads leave futures whose exceptions nobody
    # retrieves, reported whenever the garbage collector meets them (here, in a later test).
    code = (
        "import sys, heartlang_jax\n"
        "from heartlang_jax.errors import CheckpointError\n"
        "try:\n heartlang_jax.load(sys.argv[1])\nexcept CheckpointError as e:\n print(e); sys.exit(3)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(run)],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 3, out.stderr[-2000:]
    assert re.search("checkpoint step 7 .*is unreadable", out.stdout), out.stdout


# --- 3. torch.load(weights_only=True) -------------------------------------------------------------


def test_p3_released_checkpoints_are_unpickled_with_weights_only(tmp_path, monkeypatch):
    from heartlang_jax import convert_released

    calls = []

    class _Tensor:
        def is_floating_point(self):
            return True

        def detach(self):
            return self

        def float(self):
            return self

        def numpy(self):
            return np.zeros(2, np.float32)

    def load(path, **kwargs):
        calls.append(kwargs)
        return {"model": {"module.w": _Tensor()}}

    fake = types.ModuleType("torch")
    fake.load = load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    state = convert_released.read_pth(tmp_path / "x.pth")
    assert list(state) == ["w"]
    assert calls and calls[0].get("weights_only") is True


# --- 4. non-finite numbers ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -float("inf")])
def test_p4_config_refuses_non_finite_numbers_by_field_name(value):
    from heartlang_jax import errors
    from heartlang_jax.configs import schema as stage_configs

    config = _config(6)
    config.optimizer.learning_rate = value
    with pytest.raises(errors.ConfigError, match=r"optimizer\.learning_rate: must be a finite number"):
        stage_configs.validate(config)


def test_p4_non_finite_evaluation_fails_the_run_naming_the_step(tmp_path):
    with pytest.raises(train_loop.NonFiniteError, match=r"non-finite evaluation at step 2 \(eval_loss=nan\)"):
        _run(tmp_path, 4, evaluate=lambda step: {"eval_loss": float("nan") if step == 2 else 1.0})
    assert not (tmp_path / checkpointing.CHECKPOINT_DIR / "2").exists()  # the bad step is not saved


def test_p4_an_undefined_auc_is_not_a_failure(tmp_path):
    result = _run(tmp_path, 2, evaluate=lambda step: {"eval_auc": float("nan"), "eval_loss": 1.0})
    assert result.step == 2


def test_p4_non_finite_state_is_never_saved(tmp_path, monkeypatch):
    original = vqhbr.train_step

    calls = []

    def poisoning_step(model, optimizer, batch, rng):
        metrics = original(model, optimizer, batch, rng)
        calls.append(1)
        if len(calls) == 2:  # after step 2's update: its loss and gradient norm are finite, the weights not
            model.quantizer.codebook[...] = model.quantizer.codebook[...] * np.nan
        return metrics

    monkeypatch.setattr(vqhbr, "train_step", poisoning_step)
    with pytest.raises(train_loop.NonFiniteError, match="non-finite model state at step 2"):
        _run(tmp_path, 4)
    store = checkpointing.RunCheckpoints(tmp_path, read_only=True)
    assert store.steps() == []
    store.close()


# --- 5. the workdir lock --------------------------------------------------------------------------


def test_p5_a_live_holder_is_named_and_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid}))
        with pytest.raises(workdir_lock.WorkdirLockedError, match=rf"in use by process {holder.pid} on host"):
            checkpointing.claim_workdir(tmp_path, _as_json(_config(2)), vqhbr.IDENTITY_FIELDS)
    finally:
        holder.kill()
        holder.wait()


def test_p5_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / workdir_lock.LOCK_FILE
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
    with caplog.at_level(logging.WARNING):
        checkpointing.claim_workdir(tmp_path, _as_json(_config(2)), vqhbr.IDENTITY_FIELDS)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert any("stale lock" in r.getMessage() for r in caplog.records)
    checkpointing.claim_workdir(tmp_path, _as_json(_config(2)), vqhbr.IDENTITY_FIELDS)  # the holder may claim it again
    workdir_lock.release(tmp_path)
    assert not lock.exists()


def test_p5_a_second_process_is_refused_while_the_first_runs(tmp_path):
    checkpointing.claim_workdir(tmp_path, _as_json(_config(2)), vqhbr.IDENTITY_FIELDS)
    code = (
        "import sys; from heartlang_jax.training import checkpointing, workdir_lock; "
        "from heartlang_jax.configs import schema, typed, vqhbr\n"
        "try:\n checkpointing.claim_workdir(sys.argv[1], typed.as_dict(schema.validate(vqhbr.get_config('tiny'))), "
        "('model',))\n"
        "except workdir_lock.WorkdirLockedError as e:\n print(e); sys.exit(3)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 3, out.stderr[-2000:]
    assert f"process {os.getpid()} on host" in out.stdout
    workdir_lock.release(tmp_path)


# --- 6. a resume with changed settings ------------------------------------------------------------


def test_p6_changed_settings_are_logged_by_name_and_every_config_is_kept(tmp_path, caplog):
    first = _config(6)
    checkpointing.claim_workdir(tmp_path, _as_json(first), vqhbr.IDENTITY_FIELDS)
    second = _config(6)
    second.optimizer.learning_rate = 1e-3
    second.log_every_steps = 3
    with caplog.at_level(logging.WARNING):
        checkpointing.claim_workdir(tmp_path, _as_json(second), vqhbr.IDENTITY_FIELDS)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "optimizer.learning_rate" in messages and "log_every_steps" in messages
    assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 1e-3
    (history,) = tmp_path.glob("config-*.json")
    assert json.loads(history.read_text()) == json.loads(checkpointing.config_to_json(_as_json(first)))
    other = _config(6)
    other.model.encoder.num_layers = 3  # an identity field: still refused
    with pytest.raises(checkpointing.CheckpointError, match="different configuration"):
        checkpointing.claim_workdir(tmp_path, _as_json(other), vqhbr.IDENTITY_FIELDS)
    workdir_lock.release(tmp_path)


# --- 7. --config with a directory that does not exist ---------------------------------------------


def test_p7_config_in_a_missing_directory_is_one_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "heartlang_jax.main",
            "--config=/nonexistent/vqhbr.py",
            f"--workdir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
        timeout=120,
    )
    assert out.returncode != 0
    assert "directory /nonexistent does not exist" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


# --- 2. physiological range, finite after cast, robust amplitude fit -----------------------------

BUNDLED = bundled_sample_dir() / "records100" / "00000"


def _copy_scaled(src: pathlib.Path, dst: pathlib.Path, scale: float, fs: float | None = None) -> pathlib.Path:
    """A WFDB copy of a bundled record with its signal multiplied by `scale` (units unchanged)."""
    record = records.load_record(src)
    dst.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        dst.name,
        fs=fs or record.fs,
        units=["mV"] * len(record.lead_names),
        sig_name=list(record.lead_names),
        p_signal=(record.signal.T.astype(np.float64) * scale),
        fmt=["32"] * len(record.lead_names),
        write_dir=str(dst.parent),
    )
    return dst


def test_p2_a_record_beyond_the_physiological_bound_is_a_named_error(tmp_path):
    path = _copy_scaled(BUNDLED / "00001_lr", tmp_path / "00001_uv", 1000.0)  # µV written as mV
    with pytest.raises(records.RecordError, match=r"00001_uv: \|signal\| reaches .* beyond the physiological bound"):
        records.load_record(path)
    spec = sentence_corpus.SentenceSpec()
    ((_, sentence, reason),) = list(sentence_corpus.tokenize_records([(0, path)], spec))
    assert sentence is None and "physiological bound" in reason.message  # a named skip in the builders
    model = heartlang_jax.load(write_run(tmp_path / "run", "pretrain"))
    with pytest.raises(records.RecordError, match=r"<array>: \|signal\| reaches"):
        model.embed(np.full((12, 1000), 80.0, np.float32), fs=100)


def test_p2_a_word_that_overflows_float16_is_skipped_not_stored_as_inf():
    spec = sentence_corpus.SentenceSpec()
    path = BUNDLED / "00001_lr"
    ((_, sentence, reason),) = list(sentence_corpus.tokenize_records([(0, path)], spec, mean=0.0, std=1e-6))
    assert sentence is None and reason.kind == "NonFiniteAfterCast" and "00001_lr" in reason.message
    ((_, sentence, reason),) = list(sentence_corpus.tokenize_records([(0, path)], spec, mean=0.0, std=0.2))
    assert reason is None and np.isfinite(sentence.words.astype(np.float16)).all()


def test_p2_one_record_cannot_hijack_the_amplitude_fit(tmp_path, caplog):
    spec = sentence_corpus.SentenceSpec()
    paths = [BUNDLED / f"{i:05d}_lr" for i in range(1, 21)]
    clean = sentence_corpus.amplitude_moments(paths, spec)
    hostile = _copy_scaled(BUNDLED / "00001_lr", tmp_path / "hostile", 20.0)  # in range, but 20x every other
    with caplog.at_level(logging.WARNING):
        mean, std = sentence_corpus.amplitude_moments([*paths, hostile], spec)
    assert "left out 1 of 21 records" in caplog.text and "hostile" in caplog.text
    # The pooled fit over all 21 (the old rule, float64 NumPy) moves std by far more than this.
    all_samples = np.concatenate([records.load_record(p).signal.astype(np.float64).ravel() for p in [*paths, hostile]])
    assert np.std(all_samples) > 2 * clean[1]
    np.testing.assert_allclose([mean, std], clean, rtol=1e-9)


# --- 9. faults of the file system and of model.json ----------------------------------------------


def test_p9_disk_full_while_writing_leaves_the_old_file_and_no_tmp(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text("old")

    path_class = type(epath.Path(target))
    real_open = path_class.open

    class FullDisk:
        """A file that takes three bytes, then reports a full disk."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode else f

    monkeypatch.setattr(path_class, "open", full)
    with pytest.raises(checkpointing.CheckpointError, match=r"cannot write .*config.json: No space left on device"):
        checkpointing.atomic_write_text(target, "new content")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_p9_disk_full_during_a_checkpoint_save_is_one_line(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    def full(*args, **kwargs):
        raise RuntimeError("save failed") from OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    with pytest.raises(checkpointing.CheckpointError, match=r"step 2\) to .* failed: No space left on device"):
        _run(tmp_path, 2)


def test_p9_a_read_only_workdir_is_one_line(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if os.fspath(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(checkpointing.CheckpointError, match=r"cannot write to the workdir .*Read-only file system"):
        checkpointing.claim_workdir(tmp_path, _as_json(_config(2)), vqhbr.IDENTITY_FIELDS)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda info: info.update(colour="red"), r"model.json: unknown field\(s\) colour"),
        (lambda info: info["model"]["encoder"].update(num_layerz=2), r"model.json: its pretrain model block"),
        (lambda info: info["amplitude"].update(std=0.0), r"model.json: amplitude.std must be positive"),
        (lambda info: info["amplitude"].update(mean=float("nan")), r"model.json: amplitude.mean must be a finite"),
        (lambda info: info["model"]["encoder"].update(hidden_dim=64), r"does not fit the model its model.json"),
    ],
)
def test_p9_bad_model_json_fields_blame_the_model_json(tmp_path, edit, message):
    run = write_run(tmp_path / "run", "pretrain")
    info = json.loads((run / model_info.MODEL_INFO_FILE).read_text())
    edit(info)
    (run / model_info.MODEL_INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(checkpointing.CheckpointError, match=message) as e:
        heartlang_jax.load(run)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fs", ["-100", "nan"])
def test_p9_a_misread_sampling_rate_is_named_as_such(tmp_path, fs):
    for suffix in (".hea", ".dat"):
        shutil.copy(BUNDLED / f"00001_lr{suffix}", tmp_path / f"00001_lr{suffix}")
    header = tmp_path / "00001_lr.hea"
    first, *rest = header.read_text().splitlines()
    fields = first.split()
    fields[2] = fs
    header.write_text("\n".join([" ".join(fields), *rest]) + "\n")
    with pytest.raises(records.RecordError, match="bad sampling rate"):
        records.load_record(tmp_path / "00001_lr")


# --- 10. partial downloads ------------------------------------------------------------------------


def test_p10_a_partial_dataset_is_refused_by_default_and_built_when_allowed(tmp_path, caplog):
    import tensorflow_datasets as tfds

    from tfds_ptbxl.ptbxl import ptbxl_dataset_builder

    folder = tmp_path / "ptbxl"
    shutil.copytree(DUMMY, folder)
    (folder / "records100" / "00000" / "00002_lr.hea").unlink()

    def build(**kwargs):
        builder = ptbxl_dataset_builder.Builder(
            data_dir=str(tmp_path / "tfds"), file_format="array_record", num_workers=1, **kwargs
        )
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(folder)))
        return builder

    with pytest.raises(
        errors.DatasetLayoutError, match=r"lacks 1 of the 12 records \(e\.g\. records100/00000/00002_lr\)"
    ):
        build()
    with caplog.at_level(logging.WARNING):
        builder = build(allow_missing_records=True)
    assert "record records100/00000/00002_lr is missing" in caplog.text
    assert builder.info.splits["train"].num_examples == 4  # 5 good training records, one missing


def test_p10_every_builder_takes_the_option_and_the_config_validates_it():
    import inspect

    from heartlang_jax import errors
    from heartlang_jax.configs import schema as stage_configs
    from tfds_ptbxl import catalog

    for name in catalog.DATASETS:
        assert "allow_missing_records" in inspect.signature(catalog.builder_class(name).__init__).parameters, name
    import ml_collections

    raw = _config(2).to_dict()
    assert raw["data"]["allow_missing_records"] is False  # the shipped default: refuse
    raw["data"]["allow_missing_records"] = "yes"
    with pytest.raises(errors.ConfigError, match=r"data.allow_missing_records: expected bool"):
        stage_configs.validate(ml_collections.ConfigDict(raw))


# --- 8. read only what is used; model.json against the stored shapes -----------------------------


def test_p8_records_are_read_only_as_far_as_the_tokenizer_uses(monkeypatch):
    calls = []
    real = wfdb.rdrecord

    def spy(*args, **kwargs):
        calls.append(kwargs.get("sampto"))
        return real(*args, **kwargs)

    monkeypatch.setattr(wfdb, "rdrecord", spy)
    path = BUNDLED / "00001_lr"
    part = records.load_record(path, max_seconds=2.5)
    whole = records.load_record(path)
    assert calls == [250, None]
    assert part.signal.shape == (12, 250) and whole.signal.shape == (12, 1000)
    np.testing.assert_array_equal(part.signal, whole.signal[:, :250])
    spec = sentence_corpus.SentenceSpec()
    calls.clear()
    list(sentence_corpus.tokenize_records([(0, path)], spec))
    assert calls == [1000]  # 10 s at 100 Hz: the tokenizer's max_duration_s


def test_p8_a_header_declaring_more_samples_than_its_file_holds_is_refused_before_reading(tmp_path, monkeypatch):
    """Inference reads a record whole (it reads every window), so a crafted header's length is
    checked against the signal file's size before wfdb allocates for it."""
    for suffix in (".hea", ".dat"):
        shutil.copy(BUNDLED / f"00001_lr{suffix}", tmp_path / f"00001_lr{suffix}")
    header = tmp_path / "00001_lr.hea"
    header.write_text(header.read_text().replace("00001_lr 12 100 1000", "00001_lr 12 100 30000000", 1))
    monkeypatch.setattr(wfdb, "rdrecord", lambda *a, **k: pytest.fail("the samples were read"))
    with pytest.raises(
        records.RecordError, match=r"00001_lr\.dat is truncated: 24000 bytes, the header implies 720000000"
    ):
        records.load_record(tmp_path / "00001_lr")


def test_p8_model_json_is_checked_against_stored_shapes_before_allocating(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", "pretrain")
    info = json.loads((run / model_info.MODEL_INFO_FILE).read_text())
    info["model"]["encoder"]["hidden_dim"] = 4096  # a far bigger model than the checkpoint holds
    (run / model_info.MODEL_INFO_FILE).write_text(json.dumps(info))
    built = []
    real = model_info._build_model
    monkeypatch.setattr(model_info, "_build_model", lambda *a, **k: built.append(1) or real(*a, **k))
    with pytest.raises(checkpointing.CheckpointError, match=r"arrays differ: .*hidden|arrays differ"):
        heartlang_jax.load(run)
    assert len(built) == 1  # only the abstract one, inside nnx.eval_shape


def test_p9_an_interrupted_embed_run_keeps_what_it_computed(tmp_path, monkeypatch):
    from heartlang_jax import embed
    from heartlang_jax.inference import model as inference

    run = write_run(tmp_path / "run", "pretrain")
    real = inference.HeartLangModel.iter_embed

    def interrupted(self, paths, **kwargs):
        for n, item in enumerate(real(self, paths, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(inference.HeartLangModel, "iter_embed", interrupted)
    out = tmp_path / "out" / "embeddings.npz"
    with pytest.raises(KeyboardInterrupt):
        embed.run(run, BUNDLED / "0000[1-5]_lr.hea", out, batch_size=2, progress=False)
    with np.load(out) as saved:
        assert not bool(saved["complete"]) and saved["embeddings"].shape == (2, 16)
        assert len(saved["unprocessed_record_ids"]) == 3
    assert [p.name for p in out.parent.iterdir()] == ["embeddings.npz"]  # no .tmp left


def test_p9_a_batch_larger_than_the_training_set_is_one_line(tmp_path):
    from heartlang_jax import errors
    from heartlang_jax.stages import common

    dataset = common.DatasetInfo(name="ptbxl/leads12", sentence={}, amplitude={})
    ctx = common.StageContext("vqhbr", schema.validate(_config(2)), tmp_path, dataset, {}, parallel.make_mesh(), 64)
    with pytest.raises(errors.ConfigError, match=r"global batch of 64 is larger than the 10 training examples"):
        common.train(ctx, model=None, optimizer_config=None, train_step=None, train_data=None, num_train_examples=10)


def test_p9_pretraining_without_its_vocabulary_fails_before_any_work(tmp_path):
    from heartlang_jax import errors
    from heartlang_jax.configs import pretrain_base
    from heartlang_jax.stages import pretrain

    config = pretrain_base.get_config("tiny")
    config.vqhbr_workdir = ""
    with pytest.raises(errors.CheckpointError, match="config.vqhbr_workdir is empty"):
        pretrain.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # no dataset built, no workdir claimed
