"""Imports flow one way (issue 17): the builders use the signal layer (`heartlang_jax.ecg`, the
bundled sample's location, the error types), and nothing they import, directly or transitively,
imports `tfds_ptbxl` back. Importing a builder's package registers it with TFDS."""

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
FIRST_PARTY = ("heartlang_jax", "tfds_ptbxl")


def _module_file(name: str) -> pathlib.Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_level(node: ast.AST):
    """The statements that run on import: not the bodies of functions (lazy imports) or classes."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            yield child
            yield from _module_level(child)


def _first_party_imports(path: pathlib.Path) -> set[str]:
    """Modules of this project a file imports at module level (every package on the way counts: importing
    `a.b.c` runs `a/__init__.py` and `a/b/__init__.py`)."""
    names: set[str] = set()
    for node in _module_level(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in found:
            parts = name.split(".")
            if parts[0] in FIRST_PARTY:
                names.update(
                    ".".join(parts[: i + 1]) for i in range(len(parts)) if _module_file(".".join(parts[: i + 1]))
                )
    return names


def _closure(start: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is not None:
            todo.extend(_first_party_imports(path) - seen)
    return seen


def test_nothing_a_builder_imports_imports_tfds_ptbxl_back():
    offending = {}
    for path in (ROOT / "tfds_ptbxl").rglob("*.py"):
        used = {name for name in _closure(_first_party_imports(path)) if name.startswith("heartlang_jax")}
        back = {
            name for name in used if any(i.startswith("tfds_ptbxl") for i in _first_party_imports(_module_file(name)))
        }
        if back:
            offending[str(path.relative_to(ROOT))] = sorted(back)
    assert not offending, f"builder modules reach modules that import tfds_ptbxl: {offending}"


def test_the_import_check_sees_a_module_that_imports_tfds_ptbxl():
    """The walk above finds the config schema, which imports tfds_ptbxl (so the check can fail)."""
    loader = "heartlang_jax.configs.schema"
    assert any(i.startswith("tfds_ptbxl") for i in _first_party_imports(_module_file(loader)))
    assert loader in _closure({"heartlang_jax.stages.common"})


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
bad = sorted(m for m in sys.modules if m.startswith(("heartlang_jax.data.input_pipeline", "heartlang_jax.stages",
             "heartlang_jax.training.train_loop", "heartlang_jax.models", "jax", "flax", "tensorflow.")) or m == "tensorflow")
assert not bad, bad
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
