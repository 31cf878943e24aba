"""notebooks/explore.ipynb runs end to end, headless, as committed (without outputs)."""

from __future__ import annotations

import json
import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code)
    # The install cell names no made-up repository: the user sets REPO_URL.
    assert "OWNER" not in NOTEBOOK.read_text() and 'REPO_URL = ""' in "".join(code[0]["source"])


def test_notebook_executes_end_to_end(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("HEARTLANG_EXPLORE_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("MPLBACKEND", "agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5, f"expected a figure per plot function, got {len(images)}"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "test AUC" in text and "same embedding from the array as from the file: True" in text
    assert "the encoder's own copy of the vocabulary gives the same words: True" in text
    # Section 9: a probe fine-tuned on a CSV of the sample's records predicts their folder.
    assert "own CSV: test macro AUC" in text and "predicted 80 records of the folder, skipped 0" in text
