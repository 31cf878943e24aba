"""Embeds a folder of ECG records with a trained run: `python -m heartlang_jax.embed`.

    python -m heartlang_jax.embed --checkpoint=runs/demo/pretrain --records=ptb-xl/records100 --out=emb.npz

`--records` is a folder (searched recursively for `.hea` records and original CPSC 2018 `.mat`
files), a records CSV (its `record` column, paths relative to the CSV), a glob
(`'data/**/*.hea'`, quoted) or one record (`inference.record_files`). The `.npz` holds:

  embeddings          [N, hidden] float32, what the linear probe sees (`HeartLangModel.embed`;
                      `--pool`/`--layer` choose other features), the mean over the record's windows
  record_ids          [N] the records embedded, relative to the folder (else as found), no extension
  num_windows         [N] the windows each record was read in (a record longer than the model's
                      window, 10 s, is cut into windows: `--window_s`, `--stride_s`)
  skipped_record_ids  [M] the records that could not be read or tokenized
  skipped_reasons     [M] why, one line each naming the record
  checkpoint, kind, step  the run that made them

A bad record is logged and listed, never fatal. The file is written to a temporary name and
renamed, so a reader never sees half of it. Exit status: 0, or 1 when no record could be
embedded (the file is still written), 2 on bad arguments.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from heartlang_jax import atomic_file
from heartlang_jax.inference import record_files
from heartlang_jax.inference.record_files import NoRecordsError, find_records

__all__ = ["NoRecordsError", "find_records", "run"]

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined when it runs (not on import: the commands share flag names)."""
    record_files.define_command_flags(
        "Run folder (vqhbr, pretrain or finetune), local or gs://.", "Output .npz file (local or gs://)."
    )
    flags.DEFINE_enum("pool", None, ["mean", "cls"], "Pooling (default: what the linear probe reads).")
    flags.DEFINE_integer("layer", None, "Features of block k (1-based; 0 = embeddings; default: the last).")


def _write_npz(out: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Writes under a temporary name and renames it to `out` (`atomic_file`)."""
    with atomic_file.atomic_open(out) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **arrays as allow_pickle


def run(
    checkpoint: str | os.PathLike,
    records: str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch_size: int = 64,
    dtype: str = "float32",
    progress: bool = True,
    pool: str | None = None,
    layer: int | None = None,
    window_s: float | None = None,
    stride_s: float | None = None,
) -> dict:
    """Embeds every record `records` names and writes `out`; returns a summary dict."""
    from heartlang_jax.inference import model as inference

    if pool == "none":
        raise ValueError("pool='none' gives per-word features of a different length per record; use iter_embed")
    start = time.time()
    found = find_records(records)
    model = inference.load(checkpoint, dtype=dtype)
    logging.info("%r: embedding %d record(s) from %s", model, len(found), records)
    embeddings: dict[int, np.ndarray] = {}
    windows: dict[int, int] = {}
    skipped: dict[int, str] = {}

    def write(complete: bool) -> None:
        kept = sorted(embeddings)
        done = set(embeddings) | set(skipped)
        _write_npz(
            out,
            {
                "embeddings": np.stack([embeddings[i] for i in kept])
                if kept
                else np.zeros((0, model.hidden_dim), np.float32),
                "record_ids": np.asarray([found[i][0] for i in kept], dtype=str),
                "num_windows": np.asarray([windows[i] for i in kept], dtype=np.int64),
                "skipped_record_ids": np.asarray([found[i][0] for i in sorted(skipped)], dtype=str),
                "skipped_reasons": np.asarray([skipped[i] for i in sorted(skipped)], dtype=str),
                # what an interrupted run did not reach (empty when complete)
                "unprocessed_record_ids": np.asarray([r for i, (r, _) in enumerate(found) if i not in done], dtype=str),
                "complete": np.asarray(complete),
                "checkpoint": np.asarray(os.fspath(checkpoint)),
                "kind": np.asarray(model.kind),
                "step": np.asarray(model.step),
            },
        )

    try:
        for result in model.iter_embed(
            [path for _, path in found],
            batch_size=batch_size,
            progress=progress,
            pool=pool,
            layer=layer,
            window_s=window_s,
            stride_s=stride_s,
        ):
            if result.reason is None:
                embeddings[result.position] = result.value
                windows[result.position] = result.num_windows
            else:
                skipped[result.position] = result.reason
                logging.warning("skipped %s", result.reason)
    except BaseException:  # Ctrl-C or an error part way: keep what was computed
        if embeddings or skipped:
            write(complete=False)
            logging.warning(
                "interrupted: wrote the %d embedding(s) computed so far to %s (complete=False)", len(embeddings), out
            )
        raise
    kept = sorted(embeddings)
    write(complete=True)
    return record_files.summarize("embedded", len(kept), len(found), out, time.time() - start, sum(windows.values()))


def main(argv: Sequence[str]) -> None:
    record_files.run_command(argv, run, "embedded", pool=FLAGS.pool, layer=FLAGS.layer)


if __name__ == "__main__":
    define_flags()
    app.run(main)
