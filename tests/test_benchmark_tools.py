"""The pieces of the issue-20 device benchmarks that compute figures: the profile's trace reader
and the real-word FLOPs of the pre-training MFU (the benchmarks themselves need an accelerator)."""

from __future__ import annotations

import gzip
import json
import pathlib
import sys
import types

import numpy as np

_tests_synthetic = sys.modules.pop("synthetic", None)
from benchmarks import pretrain_throughput, profile_step, step_anatomy  # noqa: E402  (they import benchmarks/synthetic.py as `synthetic`)

sys.modules.pop("synthetic", None)  # tests/synthetic.py, not the benchmarks', is `synthetic` for the other tests
if _tests_synthetic is not None:
    sys.modules["synthetic"] = _tests_synthetic


def _write_trace(path: pathlib.Path, events: list[dict]) -> pathlib.Path:
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        json.dump({"displayTimeUnit": "ns", "traceEvents": events}, f)
    return path


def test_trace_reader_counts_the_device_op_line_once(tmp_path):
    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 2, "tid": 10, "name": "thread_name", "args": {"name": "XLA Ops"}},
        {"ph": "M", "pid": 2, "tid": 11, "name": "thread_name", "args": {"name": "Stream #7"}},
    ]
    ops = [("fusion.1", 30.0), ("custom-call.2", 50.0), ("fusion.1", 20.0), ("gemm.3", 5.0)]
    events = meta + [{"ph": "X", "pid": 2, "tid": 10, "name": n, "ts": i, "dur": d} for i, (n, d) in enumerate(ops)]
    # The same work as kernels on a stream, and host events: neither may be added to the op totals.
    events += [{"ph": "X", "pid": 2, "tid": 11, "name": "cudnn_sm90_flash_fprop", "ts": 0, "dur": 45.0}]
    events += [{"ph": "X", "pid": 1, "tid": 3, "name": "PjitFunction", "ts": 0, "dur": 999.0}]
    trace = _write_trace(tmp_path / "plugins" / "profile" / "run1" / "perfetto_trace.json.gz", events)

    assert profile_step.find_trace(tmp_path) == trace
    source, totals, device_names = profile_step.device_op_times(trace)
    assert source == "device 'XLA Ops' line"
    assert dict(totals) == {"fusion.1": 50.0, "custom-call.2": 50.0, "gemm.3": 5.0}
    assert [n for n in device_names if profile_step.ATTENTION_KERNEL.search(n)] == ["cudnn_sm90_flash_fprop"]


def test_real_word_flops_average_each_sentence_at_its_own_length():
    enc = types.SimpleNamespace(
        position="rope", num_heads=2, head_dim=4, hidden_dim=6, mlp_dim=10, num_layers=3, token_len=5
    )
    vocab, ratio, num_words = 7, 0.5, np.array([4, 9])

    def by_hand(n: int) -> float:  # matmul FLOPs of one sentence of n words, forward + backward
        inner = 8
        layer = 2 * n * 6 * 3 * inner + 2 * n * inner * 6 + 4 * n * n * inner + 4 * n * 6 * 10
        return 3.0 * (3 * layer + 2 * n * 3 * 5 * 6 + 2 * round(ratio * n) * 6 * vocab)

    got = pretrain_throughput.real_word_flops_per_sample(enc, vocab, num_words, ratio)
    np.testing.assert_allclose(got, (by_hand(4) + by_hand(9)) / 2, rtol=1e-12)


def test_step_anatomy_reads_the_typed_config_and_counts_the_tiny_step():
    """The benchmark builds the real pre-training step from a config file (abstract shapes only):
    its FLOPs grow with the batch, and the lean policy saves less than keeping everything."""
    config = "heartlang_jax/configs/pretrain_base.py:tiny"
    _, encoder, loss, abstract = step_anatomy.build(config, 4, "float32", "xla", 64, True)
    _, _, loss8, abstract8 = step_anatomy.build(config, 8, "float32", "xla", 64, True)
    assert encoder.remat_policy == "lean" and encoder.num_layers >= 1
    assert 1.9 < step_anatomy.flops(loss8, abstract8) / step_anatomy.flops(loss, abstract) < 2.1
    _, _, loss_none, abstract_none = step_anatomy.build(config, 4, "float32", "xla", 64, False, "none")
    _, _, loss_lean, abstract_lean = step_anatomy.build(config, 4, "float32", "xla", 64, False, "lean")
    kept_all = step_anatomy.saved_activations(loss_none, abstract_none)[0]
    kept_lean = step_anatomy.saved_activations(loss_lean, abstract_lean)[0]
    assert 0 < kept_lean < kept_all
