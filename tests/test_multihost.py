"""Many hosts, tried as a user runs them: 2 processes x 2 CPU devices on localhost against 1 x 4.

The processes are started with the launch settings the README documents (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID, or main.py's --coordinator_address/--num_processes/
--process_id flags) and talk through gloo CPU collectives. The tiny VQ-HBR, pre-training and
linear-probe stages must give the parameters, codebook, losses and macro AUC of one process with
4 devices, to 1e-5; pre-training reads its training split in 2 host shards (`train_shards=2`).
Pre-training is preempted on the way: SIGTERM to process 1 only, both processes
save the same step and exit 0, and rerunning both ends where the uninterrupted run ends.

Pre-training reads the 1-process vocabulary and the probe the 1-process encoder in both settings,
so each stage is compared on equal inputs: word ids are argmaxes, and a 1e-7 difference in the
codebook could flip a near-tie and with it a target.

Also here: a global batch that does not split over the devices gets its one-line error from both
processes, and a `gs://` workdir stays a URL all the way to the files (in process, with a fake
bucket registered with epath, Orbax's TensorStore spec and tensorboardX; no network).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from heartlang_jax.configs import schema
from heartlang_jax.inference import model_info
from heartlang_jax.training import checkpointing

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
ATOL = 1e-5
# Small, but long enough that SIGTERM after the first checkpoint lands mid-run.
PRETRAIN_STEPS = 10
COMMON = ("--config.batch_size=16", "--config.dtype=float32", "--config.log_every_steps=1")
VQHBR = ("--config=configs/vqhbr.py:tiny", "--config.num_train_steps=3", *COMMON)
# Pre-training reads its training split in 2 host shards: each of 2 processes caches and reads
# its half, the one process both, and the batches must still be equal.
PRETRAIN = (
    "--config=configs/pretrain_base.py:tiny",
    f"--config.num_train_steps={PRETRAIN_STEPS}",
    "--config.checkpoint_every_steps=2",
    "--config.train_shards=2",
    *COMMON,
)  # fmt: skip
# Two evaluations, so the best-N fine-tuning checkpoint is chosen between them.
PROBE = (
    "--config=configs/finetune.py:tiny",
    "--config.mode=linear",
    "--config.num_train_steps=4",
    "--config.eval_every_steps=2",
    *COMMON,
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """One launch of `python -m heartlang_jax.main` in 1 or 2 processes, each logging to its own file."""

    def __init__(self, name: str, logs: list[pathlib.Path], processes: list[subprocess.Popen]):
        self.name, self.logs, self.processes = name, logs, processes
        self.started = time.monotonic()
        self.seconds: float | None = None
        self.checkpoints_at_exit: list[int] = []

    def text(self, i: int = 0) -> str:
        return self.logs[i].read_text(errors="replace")

    def wait(self, expect_rc: int = 0) -> Run:
        deadline = self.started + TIMEOUT_S
        for i, process in enumerate(self.processes):
            try:
                rc = process.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"{self.name}: process {i} still running after {TIMEOUT_S} s:\n{self.text(i)[-3000:]}")
            assert rc == expect_rc, (
                f"{self.name}: process {i} exited {rc}, expected {expect_rc}:\n{self.text(i)[-3000:]}"
            )
        self.seconds = time.monotonic() - self.started
        return self

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


class Launcher:
    """Starts stage commands as the README says; every process is killed at teardown if still alive."""

    def __init__(self, root: pathlib.Path, tfds_dir: pathlib.Path):
        self.root, self.tfds_dir = root, tfds_dir
        self.runs: list[Run] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
        self.env.update(
            JAX_PLATFORMS="cpu",
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            # Shared by every run here: a rerun loads what the first run compiled.
            JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )

    def start(self, name: str, workdir: pathlib.Path, processes: int, *args: str, flags: bool = False) -> Run:
        """`args` start with --config=. `processes` = 1: one process with 4 devices. 2: two with 2 devices each, launched through
        the JAX_* variables, or with `flags` through main.py's --coordinator_address flags."""
        command = [
            sys.executable, "-m", "heartlang_jax.main", f"--workdir={workdir}",
            *args, f"--config.data.tfds_dir={self.tfds_dir}",
        ]  # fmt: skip
        env = {**self.env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={4 // processes}"}
        address = f"127.0.0.1:{_free_port()}"
        logs, started = [], []
        for i in range(processes):
            extra, process_env = [], dict(env)
            if processes > 1 and flags:
                extra = [f"--coordinator_address={address}", f"--num_processes={processes}", f"--process_id={i}"]
            elif processes > 1:
                process_env.update(
                    JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i)
                )
            log = self.root / f"{name}.{i}.log"
            with open(log, "ab") as f:  # a file, not a pipe: a full pipe would block the child
                started.append(
                    subprocess.Popen([*command, *extra], cwd=REPO, env=process_env, stdout=f, stderr=subprocess.STDOUT)
                )
            logs.append(log)
        run = Run(name, logs, started)
        self.runs.append(run)
        return run

    def kill_all(self) -> None:
        for run in self.runs:
            run.kill()


def _finalized_steps(workdir: pathlib.Path) -> list[int]:
    """Orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` when complete."""
    directory = workdir / checkpointing.CHECKPOINT_DIR
    return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.is_dir() else []


def _sigterm_process_1_after_first_checkpoint(run: Run, workdir: pathlib.Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not _finalized_steps(workdir):
        for i, process in enumerate(run.processes):
            if process.poll() is not None:
                pytest.fail(
                    f"{run.name}: process {i} ended (exit {process.returncode}) before a checkpoint:\n{run.text(i)[-3000:]}"
                )
        if time.monotonic() > deadline:
            run.kill()
            pytest.fail(f"{run.name}: no checkpoint within {TIMEOUT_S} s")
        time.sleep(0.02)
    run.processes[1].send_signal(signal.SIGTERM)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, bundled_tfds_dir):
    """Every launch of this module, the 1-process chain beside the 2-process one where their inputs
    allow (XLA compiles on one core, so the other would idle). Returns {name: (workdir, Run)}."""
    root = tmp_path_factory.mktemp("multihost")
    launcher = Launcher(root, bundled_tfds_dir)
    out: dict[str, tuple[pathlib.Path, Run]] = {}

    def start(name, processes, *args, **kwargs):
        workdir = root / name
        out[name] = (workdir, launcher.start(name, workdir, processes, *args, **kwargs))
        return out[name][1]

    began, cpu = time.monotonic(), _children_cpu_s()
    try:
        vq1 = start("vqhbr_1x4", 1, *VQHBR)
        vq2 = start("vqhbr_2x2", 2, *VQHBR)
        vq1.wait()
        vocabulary = f"--config.vqhbr_workdir={out['vqhbr_1x4'][0]}"
        pt1 = start("pretrain_1x4", 1, *PRETRAIN, vocabulary)
        preempted = start("pretrain_2x2", 2, *PRETRAIN, vocabulary)
        _sigterm_process_1_after_first_checkpoint(preempted, out["pretrain_2x2"][0])
        preempted.wait()  # both exit 0: a preemption is not a failure
        preempted.checkpoints_at_exit = _finalized_steps(out["pretrain_2x2"][0])
        vq2.wait()
        pt1.wait()
        encoder = f"--config.init_workdir={out['pretrain_1x4'][0]}"
        ft1 = start("probe_1x4", 1, *PROBE, encoder)
        # The rerun is the same command (same workdir, same settings), here through main.py's flags.
        rerun = launcher.start("pretrain_2x2_rerun", out["pretrain_2x2"][0], 2, *PRETRAIN, vocabulary, flags=True)
        out["pretrain_2x2_rerun"] = (out["pretrain_2x2"][0], rerun)
        rerun.wait()
        ft2 = start("probe_2x2", 2, *PROBE, encoder)
        ft1.wait()
        ft2.wait()
    finally:
        launcher.kill_all()
    # Shown with -s, or with a failure: how long each launch took (several overlap) and the CPU
    # time of all of them, which is what 2 CI cores must fit.
    each = ", ".join(f"{name} {run.seconds:.0f} s" for name, (_, run) in out.items())
    print(f"\n[multihost] launches {time.monotonic() - began:.0f} s wall, {_children_cpu_s() - cpu:.0f} s CPU ({each})")
    return out


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _state(workdir: pathlib.Path) -> tuple[int, dict[str, np.ndarray]]:
    """(newest step, every array of the model's state) of a run folder, restored on this host's one device."""
    _, model, step = model_info.load_model(workdir, dtype="float32")
    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model))):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        flat[jax.tree_util.keystr(path)] = np.asarray(leaf)
    return step, flat


def _metrics(workdir: pathlib.Path) -> dict[int, dict[str, float]]:
    """{step: metrics} of metrics.jsonl; after a resume a step's last row is its value."""
    rows: dict[int, dict[str, float]] = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "hparams" not in row:
            rows.setdefault(row.pop("step"), {}).update(row)
    return rows


def _assert_runs_equal(two: pathlib.Path, one: pathlib.Path, must_have: tuple[str, ...]) -> None:
    (step2, state2), (step1, state1) = _state(two), _state(one)
    assert step2 == step1
    assert sorted(state2) == sorted(state1)
    for key in must_have:
        assert any(key in k for k in state1), f"no {key!r} in {sorted(state1)[:5]}..."
    for key in sorted(state1):
        if np.issubdtype(state1[key].dtype, np.integer):  # RNG keys and counters
            np.testing.assert_array_equal(state2[key], state1[key], err_msg=key)
        else:
            np.testing.assert_allclose(state2[key], state1[key], atol=ATOL, rtol=0, err_msg=key)
    metrics2, metrics1 = _metrics(two), _metrics(one)
    assert sorted(metrics2) == sorted(metrics1) and len(metrics1) > 1
    for step, values in metrics1.items():
        assert sorted(metrics2[step]) == sorted(values), step
        for key, value in values.items():
            # Losses, accuracies and AUC to 1e-5; codebook perplexities and counts (up to
            # hundreds, where a float32 ulp exceeds 1e-5) to 1e-5 of their value.
            rtol = 0 if re.search(r"loss|auc|accuracy|mse", key) else ATOL
            np.testing.assert_allclose(metrics2[step][key], value, atol=ATOL, rtol=rtol, err_msg=f"step {step} {key}")


def test_vqhbr_two_processes_match_one(runs):
    """Encoder, decoder, codebook (and its EMA statistics), per-step losses and evaluation."""
    _assert_runs_equal(runs["vqhbr_2x2"][0], runs["vqhbr_1x4"][0], must_have=("codebook", "encoder", "decoder"))
    assert "train_rec_loss" in _metrics(runs["vqhbr_1x4"][0])[1]
    _assert_only_process_0_wrote(runs["vqhbr_2x2"][0])


def test_sigterm_to_one_process_saves_the_same_step_on_both(runs):
    """Process 1 alone got SIGTERM; both named the same step, exited 0 (checked by `runs`), and
    that step is the newest checkpoint (one folder: Orbax's collective save). Both reruns resumed it."""
    workdir, run = runs["pretrain_2x2"]
    saved = []
    for i in (0, 1):
        match = re.search(r"preempted: checkpoint saved at step (\d+)", run.text(i))
        assert match, f"process {i} did not report a preemption save:\n{run.text(i)[-3000:]}"
        saved.append(int(match.group(1)))
    assert saved[0] == saved[1], saved
    assert 0 < saved[0] < PRETRAIN_STEPS, "the run was not interrupted mid-way"
    assert run.checkpoints_at_exit[-1] == saved[0], run.checkpoints_at_exit
    rerun = runs["pretrain_2x2_rerun"][1]
    for i in (0, 1):
        assert re.search(rf"resumed from the checkpoint at step {saved[0]}\b", rerun.text(i)), rerun.text(i)[-3000:]
    assert _finalized_steps(workdir)[-1] == PRETRAIN_STEPS


def test_pretrain_preempted_and_rerun_on_two_processes_matches_one_uninterrupted(runs, bundled_tfds_dir):
    """Parameters, per-step training loss and masked accuracy, and the evaluation of pre-training
    (whose cached targets both hosts computed, each on its own rows), with the training split in
    2 host shards: each of the 2 processes cached its half alone."""
    halves = sorted(p.name.rpartition("-rows")[2] for p in bundled_tfds_dir.glob("ptbxl/*/*/columns/train-*-rows*"))
    assert halves == ["0-176", "176-353"], halves
    two, one = runs["pretrain_2x2"][0], runs["pretrain_1x4"][0]
    _assert_runs_equal(two, one, must_have=("encoder", "head"))
    _assert_only_process_0_wrote(two, launches=2)
    metrics = _metrics(one)
    assert "eval_loss" in metrics[PRETRAIN_STEPS] and "train_masked_accuracy" in metrics[1]
    # The cached word ids, each host computing its rows and process 0 writing them, are the same file.
    names = sorted(p.name for p in (one / "targets").glob("*.npy"))
    assert len(names) == 2 and names == sorted(p.name for p in (two / "targets").glob("*.npy"))
    for name in names:
        np.testing.assert_array_equal(np.load(two / "targets" / name), np.load(one / "targets" / name), err_msg=name)


def test_linear_probe_two_processes_match_one(runs):
    """The head, losses and validation/test macro AUC of every evaluation, and the result file."""
    two, one = runs["probe_2x2"][0], runs["probe_1x4"][0]
    _assert_runs_equal(two, one, must_have=("head",))
    result2, result1 = (json.loads((w / "result.json").read_text()) for w in (two, one))
    assert sorted(result2) == sorted(result1)
    for key in ("test_auc", "val_auc", "final_val_auc"):
        assert 0.5 < result1[key] <= 1.0, (key, result1[key])
        np.testing.assert_allclose(result2[key], result1[key], atol=ATOL, rtol=0, err_msg=key)
    for key in ("best_step", "num_train_steps", "num_train_records"):
        assert result2[key] == result1[key], key
    _assert_only_process_0_wrote(two)


def _assert_only_process_0_wrote(workdir: pathlib.Path, launches: int = 1) -> None:
    """One header row in metrics.jsonl (a fresh run writes it, a resumed one does not) and one
    TensorBoard event file per launch: process 1 wrote neither."""
    header_rows = sum('"hparams"' in line for line in (workdir / "metrics.jsonl").read_text().splitlines())
    assert header_rows == 1
    assert len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))) == launches


def test_global_batch_not_dividing_by_the_devices_is_one_line(tmp_path, bundled_tfds_dir):
    """6 sentences over 2 processes x 2 devices: both processes print one line naming the field,
    exit 2 together (no hang in the distributed shutdown), and the workdir is not claimed."""
    launcher = Launcher(tmp_path, bundled_tfds_dir)
    workdir = tmp_path / "run"
    try:
        run = launcher.start("bad_batch", workdir, 2, "--config=configs/vqhbr.py:tiny", "--config.batch_size=6")
        run.wait(expect_rc=2)
    finally:
        launcher.kill_all()
    for i in (0, 1):
        text = run.text(i)
        errors = [line for line in text.splitlines() if re.match(r"E\d{4} ", line)]
        assert len(errors) == 1, text[-3000:]
        assert re.search(r"ConfigError: config\.batch_size=6 is the global batch .* 4 devices \(2 process", errors[0])
        assert "Traceback" not in text
    assert not workdir.exists()


# --- gs:// workdirs, with a fake bucket ---------------------------------------------------------


class _FakeBucketBackend:
    """An epath backend for `gs://` that keeps objects under a local folder and records every
    path it is asked for; a local path reaching it would mean a URL was rewritten on the way."""

    def __init__(self, root: pathlib.Path):
        from etils.epath import backend

        self.root, self.os, self.seen = root, backend.os_backend, []

    def local(self, path) -> str:
        text = os.fspath(path)
        self.seen.append(text)
        assert text.startswith("gs://"), f"a gs:// path became {text!r}"
        return os.path.join(self.root, text[len("gs://") :])

    def url(self, local) -> str:
        return "gs://" + os.path.relpath(local, self.root)

    def open(self, path, mode):
        local = self.local(path)
        if "r" not in mode:  # an object store has no folders to create first
            os.makedirs(os.path.dirname(local), exist_ok=True)
        return self.os.open(local, mode)

    def exists(self, path):
        return self.os.exists(self.local(path))

    def isdir(self, path):
        return self.os.isdir(self.local(path))

    def listdir(self, path):
        return self.os.listdir(self.local(path))

    def glob(self, path):
        return [self.url(p) for p in self.os.glob(self.local(path))]

    def walk(self, top, *, top_down=True, on_error=None):
        for folder, dirs, files in self.os.walk(self.local(top), top_down=top_down, on_error=on_error):
            yield self.url(folder), dirs, files

    def makedirs(self, path, *, exist_ok=False, mode=None):
        return self.os.makedirs(self.local(path), exist_ok=exist_ok)

    def mkdir(self, path, *, exist_ok=False, mode=None):
        return self.os.mkdir(self.local(path), exist_ok=exist_ok)

    def rmtree(self, path):
        return self.os.rmtree(self.local(path))

    def remove(self, path):
        return self.os.remove(self.local(path))

    def rename(self, path, dst):
        return self.os.rename(self.local(path), self.local(dst))

    def replace(self, path, dst):
        return self.os.replace(self.local(path), self.local(dst))

    def copy(self, path, dst, overwrite=False):
        return self.os.copy(self.local(path), self.local(dst), overwrite=overwrite)

    def stat(self, path):
        return self.os.stat(self.local(path))


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
    """`gs://` served from tmp_path/bucket_root for epath, Orbax (its TensorStore spec and its
    GCS-only calls) and tensorboardX; the test runs in an empty working directory, which must stay
    empty (pathlib would write `gs:/bucket/...` there)."""
    from etils.epath import gpath
    from orbax.checkpoint._src.path import gcs_utils
    from tensorboardX import record_writer

    root = tmp_path / "bucket_root"
    root.mkdir()
    backend = _FakeBucketBackend(root)
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", backend)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)

    def kvstore(path):
        bucket, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        backend.seen.append(path)
        return {"driver": "file", "path": os.path.join(root, bucket, key)}

    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    monkeypatch.setattr(gcs_utils, "rmtree", lambda path, missing_ok=False: path.rmtree(missing_ok=missing_ok))

    class EventFiles:
        def open(self, path):
            from etils import epath

            return epath.Path(path).open("wb")

        def directory_check(self, path):
            pass

    monkeypatch.setitem(record_writer.REGISTERED_FACTORIES, "gs", EventFiles())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield root, backend
    assert list(cwd.iterdir()) == [], "a gs:// path was written as a local path"


def _tiny_model(seed: int = 0) -> nnx.Module:
    return nnx.Linear(4, 3, rngs=nnx.Rngs(seed))


def test_gs_workdir_stays_a_url(fake_bucket):
    import optax

    from heartlang_jax.configs import sweep as sweep_configs
    from heartlang_jax.errors import CheckpointError
    from heartlang_jax.stages import sweep
    from heartlang_jax.training import metric_writer

    root, backend = fake_bucket
    url = "gs://bucket/runs/pretrain"
    bucket = root / "bucket" / "runs" / "pretrain"

    workdir = checkpointing.absolute(url)
    assert os.fspath(workdir) == url
    assert os.fspath(checkpointing.absolute("local/run")) == os.path.join(os.getcwd(), "local/run")

    config = {"stage": "pretrain", "model": {"size": 1}}
    checkpointing.claim_workdir(url, config, ("stage", "model"))
    assert json.loads((bucket / checkpointing.CONFIG_FILE).read_text())["model"] == {"size": 1}
    config["model"]["size"] = 2
    with pytest.raises(CheckpointError, match=re.escape(url)):  # read back through the URL
        checkpointing.claim_workdir(url, config, ("stage", "model"))
    checkpointing.atomic_write_text(f"{url}/result.json", '{"auc": 1}')
    assert (bucket / "result.json").read_text() == '{"auc": 1}'
    assert not list(bucket.glob("result.json*.tmp"))

    model = _tiny_model()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    store = checkpointing.RunCheckpoints(url, max_to_keep=2)
    assert os.fspath(store.directory) == f"{url}/{checkpointing.CHECKPOINT_DIR}"
    for step in (1, 2, 3):  # the third save deletes the first, through the bucket too
        store.save(step, model, optimizer, {"position": step}, {"note": "gs"})
    store.close()
    assert sorted(p.name for p in (bucket / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]

    restored = _tiny_model(seed=1)
    reader = checkpointing.RunCheckpoints(url, read_only=True)
    assert reader.steps() == [2, 3]
    data, meta = reader.restore(3, restored, None)
    reader.close()
    assert data == {"position": 3} and meta["note"] == "gs"
    saved, loaded = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (model, restored))
    for a, b in zip(saved, loaded, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match=re.escape("gs://bucket/nothing/checkpoints")):
        checkpointing.RunCheckpoints("gs://bucket/nothing", read_only=True)

    writer = metric_writer.MetricWriter(url)
    writer.write_scalars(3, {"loss": 0.5})
    writer.close()
    assert json.loads((bucket / "metrics.jsonl").read_text().splitlines()[-1]) == {"step": 3, "loss": 0.5}
    assert list((bucket / "tensorboard").glob("events.out.tfevents.*"))

    # A sweep hands its cells the pre-training folder as given, not made local.
    sweep_config = sweep_configs.get_config("tiny")
    sweep_config.init_workdir = url
    cell = sweep.Cell("superdiagnostic", 1.0, "linear", "pretrained", 0)
    assert sweep.cell_config(schema.validate(sweep_config), cell, "gs://bucket/tfds", None).init_workdir == url

    assert backend.seen and all(p.startswith("gs://bucket/") for p in backend.seen)
    assert any("/checkpoints/3/model" in p for p in backend.seen)  # the arrays went through the fake bucket
