"""The one atomic-write helper every writer uses: whole files or none, no temporary left."""

from __future__ import annotations

import pytest

from heartlang_jax import atomic_file


def test_writes_text_and_bytes_whole(tmp_path):
    target = tmp_path / "sub" / "model.json"
    atomic_file.atomic_write(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    atomic_file.atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_file.atomic_open(target) as f:
        f.write(b"half")
        assert atomic_file.temp_path(target).exists()  # the bytes go to the temporary name
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_refuses_append_mode(tmp_path):
    with pytest.raises(ValueError, match="whole files"), atomic_file.atomic_open(tmp_path / "x", "ab"):
        pass
