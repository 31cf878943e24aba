"""Issue 14: imports flow one way (records -> tokenizer -> builders -> loader -> stages), and
importing a builder's package registers it with TFDS."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILDERS = {
    "ptbxl": "tfds_ptbxl.ptbxl",
    "cpsc2018": "tfds_ptbxl.cpsc2018",
    "csn": "tfds_ptbxl.csn",
    "mimic_iv_ecg": "tfds_ptbxl.mimic_iv_ecg",
}
# The low-level data modules a builder may use; everything else of heartlang_jax is downstream.
DATA_MODULES = {"heartlang_jax", "heartlang_jax.records", "heartlang_jax.tokenizer", "heartlang_jax.sentence_corpus",
                "heartlang_jax.ptbxl", "heartlang_jax.synthetic_ecg"}  # fmt: skip


def _imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_builders_and_data_modules_import_no_loader_stage_or_training_module():
    files = [
        *(ROOT / "tfds_ptbxl").rglob("*.py"),
        *(ROOT / "heartlang_jax" / f"{m.split('.')[-1]}.py" for m in DATA_MODULES if "." in m),
    ]
    offending = {}
    for path in files:
        downstream = {
            name for name in _imports(path)
            if name.startswith("heartlang_jax") and name not in DATA_MODULES
            and not any(name.startswith(f"{m}.") for m in DATA_MODULES - {"heartlang_jax"})
        }  # fmt: skip
        if downstream:
            offending[str(path.relative_to(ROOT))] = sorted(downstream)
    assert not offending, f"downstream imports in the data layer: {offending}"


def test_importing_each_builder_package_registers_it_and_loads_nothing_downstream():
    script = f"""
import sys
import tensorflow_datasets as tfds
for name, package in {BUILDERS!r}.items():
    __import__(package)
    assert name in tfds.list_builders(with_community_datasets=False), name
    builder = tfds.builder(name, data_dir="/nonexistent-heartlang")
    assert builder.info.file_format.value == "array_record", (name, builder.info.file_format)
    meta = builder.info.metadata
    assert set(meta["sentence"]) >= {{"leads", "max_len", "token_len", "fs", "detector"}}, name
    assert all(task in builder.info.features for task in meta["classes"]), name
bad = sorted(m for m in sys.modules if m.startswith(("heartlang_jax.input_pipeline", "heartlang_jax.stages",
             "heartlang_jax.train_loop", "heartlang_jax.models", "jax", "flax", "tensorflow.")) or m == "tensorflow")
assert not bad, bad
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
