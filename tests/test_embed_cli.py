"""`python -m heartlang_jax.embed`: a folder, glob or record of ECGs to an .npz of embeddings."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_inference import RECORDS, write_run  # tiny run folders, see the note there

import heartlang_jax
from heartlang_jax import embed


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run") / "pretrain", "pretrain")


@pytest.fixture
def folder(tmp_path):
    """Four good records in two subfolders, and one whose .dat is truncated."""
    root = tmp_path / "records"
    for i, record in enumerate(RECORDS[:4]):
        sub = root / f"part{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        for suffix in (".hea", ".dat"):
            shutil.copy(record.with_suffix(suffix), sub / (record.name + suffix))
    shutil.copy(RECORDS[4].with_suffix(".hea"), root / "part0" / "00005_lr.hea")
    (root / "part0" / "00005_lr.dat").write_bytes(RECORDS[4].with_suffix(".dat").read_bytes()[:500])
    return root


def test_folder_with_a_corrupt_record_writes_the_others_and_lists_it(run_dir, folder, tmp_path):
    out = tmp_path / "out" / "emb.npz"
    summary = embed.run(run_dir, folder, out, batch_size=3, progress=False)
    assert summary["embedded"] == 4 and summary["skipped"] == 1
    with np.load(out) as npz:
        ids = list(npz["record_ids"])
        assert ids == ["part0/00001_lr", "part0/00003_lr", "part1/00002_lr", "part1/00004_lr"]
        assert npz["embeddings"].shape == (4, 16) and npz["embeddings"].dtype == np.float32
        assert list(npz["num_windows"]) == [1, 1, 1, 1]  # 10 s records: one window each
        assert list(npz["skipped_record_ids"]) == ["part0/00005_lr"]
        assert "00005_lr" in str(npz["skipped_reasons"][0]) and "truncated" in str(npz["skipped_reasons"][0])
        assert str(npz["kind"]) == "pretrain" and int(npz["step"]) == 7
        model = heartlang_jax.load(run_dir)
        for record_id, vector in zip(ids, npz["embeddings"]):
            np.testing.assert_allclose(vector, model.embed(folder / record_id), atol=2e-6)
    assert sorted(p.name for p in out.parent.iterdir()) == ["emb.npz"]  # no temporary left behind


def test_globs_and_single_records(folder):
    assert [i for i, _ in embed.find_records(f"{folder}/**/0000[12]_lr.hea")] == [
        f"{folder}/part0/00001_lr",
        f"{folder}/part1/00002_lr",
    ]
    assert embed.find_records(folder / "part1" / "00002_lr.dat") == [
        (f"{folder}/part1/00002_lr", folder / "part1" / "00002_lr")
    ]
    with pytest.raises(embed.NoRecordsError, match="matches no"):
        embed.find_records(f"{folder}/*.csv")
    (folder / "empty").mkdir()
    with pytest.raises(embed.NoRecordsError, match="holds no"):
        embed.find_records(folder / "empty")


def test_command_line(run_dir, folder, tmp_path):
    out = tmp_path / "cli.npz"
    command = [
        sys.executable,
        "-m",
        "heartlang_jax.embed",
        f"--checkpoint={run_dir}",
        f"--records={folder}",
        f"--out={out}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "embedded 4 of 5 record(s) (1 skipped)" in done.stderr
    assert "5/5" in done.stderr  # the progress bar
    with np.load(out) as npz:
        assert npz["embeddings"].shape == (4, 16)
    bad = subprocess.run(
        command[:-2] + [f"--records={tmp_path}/nothing/*.hea", f"--out={tmp_path}/x.npz"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "matches no" in bad.stderr
    assert not (tmp_path / "x.npz").exists()
