"""metrics.jsonl: appended locally, rewritten whole where files cannot be appended to (gs://)."""

import json

from etils import epath

from heartlang_jax.training.metric_writer import JsonLines


def _steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_local_file_is_appended_across_runs(tmp_path):
    path = epath.Path(tmp_path) / "metrics.jsonl"
    for steps in ([1, 2], [3]):  # a run, then its resumed continuation
        lines = JsonLines(path)
        for step in steps:
            lines.write({"step": step})
            assert _steps(path)[-1] == step  # flushed at once
        lines.close()
    assert _steps(path) == [1, 2, 3]


def test_without_append_the_earlier_lines_are_kept_and_the_file_rewritten_whole(tmp_path, monkeypatch):
    path = epath.Path(tmp_path) / "metrics.jsonl"
    path.write_text('{"step": 1}\n')  # the previous run's line
    opened = []
    real_open = epath.Path.open
    monkeypatch.setattr(
        epath.Path, "open", lambda self, mode="r", **kw: opened.append(mode) or real_open(self, mode, **kw)
    )

    lines = JsonLines(path, appendable=False, rewrite_every_s=0)
    lines.write({"step": 2})
    assert _steps(path) == [1, 2]  # rewritten at once with interval 0
    lines.close()
    assert "a" not in opened

    throttled = JsonLines(path, appendable=False, rewrite_every_s=3600)
    throttled.write({"step": 3})  # the first write rewrites, then none for an hour
    throttled.write({"step": 4})
    assert _steps(path) == [1, 2, 3]
    throttled.close()
    assert _steps(path) == [1, 2, 3, 4]
    assert "a" not in opened
