"""`python -m heartlang_jax.export`: the exported classifier, run by its own loader in a fresh process
that imports no heartlang_jax code, gives `load(run).predict`'s probabilities."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from test_inference import CLASS_NAMES, RECORDS, write_run

import heartlang_jax
from heartlang_jax import export
from heartlang_jax.ecg.filters import BandPass
from heartlang_jax.ecg.sentence_spec import SentenceSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The loader's process: no heartlang_jax on its path from this checkout (an installed copy may be
# importable; the test checks it is never imported).
LOADER_SCRIPT = """
import json, sys
import heartlang_predict
model = heartlang_predict.load(".")
records = sys.argv[1:]
rows = model.predict_many(records)
single = [model.predict(r) for r in records]
print(json.dumps({
    "many": rows.tolist(),
    "single": single,
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("heartlang_jax", "flax", "orbax")),
}))
"""


def _env_without_checkout() -> dict[str, str]:
    env = dict(os.environ)
    paths = [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and not (pathlib.Path(p) / "heartlang_jax").is_dir()
    ]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    # A spec with a band-pass, so the copied signal layer's filter is exercised too.
    spec = SentenceSpec(filter=BandPass(0.5, 40.0, 3)).to_dict()
    run = write_run(root / "run", "finetune", seed=4, sentence=spec)
    out = root / "deploy"
    result = subprocess.run(
        [sys.executable, "-m", "heartlang_jax.export", f"--checkpoint={run}", f"--out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run, out


def test_exported_artifact_in_a_fresh_process_gives_loads_probabilities(exported):
    run, out = exported
    records = [str(r) for r in RECORDS[:2]]
    result = subprocess.run(
        [sys.executable, "-c", LOADER_SCRIPT, *records],
        cwd=out, capture_output=True, text=True, timeout=300, env=_env_without_checkout(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["modules"] == []  # neither heartlang_jax (models included) nor flax/orbax were imported
    model = heartlang_jax.load(run)
    want = np.array([[model.predict(r)[c] for c in CLASS_NAMES] for r in records])
    np.testing.assert_allclose(np.array(got["many"]), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.array([[s[c] for c in CLASS_NAMES] for s in got["single"]]), want, rtol=0, atol=1e-5)
    assert np.ptp(want) > 1e-3  # the records give different probabilities: a real comparison


def test_export_json_and_platforms(exported):
    run, out = exported
    info = json.loads((out / export.INFO).read_text())
    assert info["platforms"] == ["cpu", "cuda", "tpu"]
    assert info["class_names"] == list(CLASS_NAMES) and info["task"] == "superdiagnostic"
    assert info["sentence"]["filter"] == {"low": 0.5, "high": 40.0, "order": 3, "kind": "butter_filtfilt"}
    assert info["amplitude"] == json.loads((run / "model.json").read_text())["amplitude"]
    assert info["inputs"]["words"] == ["b", 256, 96, "float32"]
    vendored = out / export.VENDORED
    for _, name in export.SIGNAL_LAYER:
        assert "from heartlang_jax" not in (vendored / name).read_text()


def test_only_classifiers_export_and_foreign_imports_are_refused(tmp_path):
    run = write_run(tmp_path / "pretrain", "pretrain")
    with pytest.raises(export.ExportError, match="fine-tuned classifier"):
        export.export(run, tmp_path / "out")
    with pytest.raises(export.ExportError, match="cannot carry"):
        export.vendored_source("from heartlang_jax.models import ECGFormer\n", "ecg/tokenizer.py")
