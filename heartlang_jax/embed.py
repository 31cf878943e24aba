"""Embeds a folder of ECG records with a trained run: `python -m heartlang_jax.embed`.

    python -m heartlang_jax.embed --checkpoint=runs/demo/pretrain --records=ptb-xl/records100 --out=emb.npz

`--records` is a folder (searched recursively for `.hea` records and original CPSC 2018 `.mat`
files), a glob (`'data/**/*.hea'`, quoted) or one record. The `.npz` holds:

  embeddings          [N, hidden] float32, what the linear probe sees (`HeartLangModel.embed`)
  record_ids          [N] the records embedded, relative to the folder (else as found), no extension
  skipped_record_ids  [M] the records that could not be read or tokenized
  skipped_reasons     [M] why, one line each naming the record
  checkpoint, kind, step  the run that made them

A bad record is logged and listed, never fatal. The file is written to a temporary name and
renamed, so a reader never sees half of it. Exit status: 0, or 1 when no record could be
embedded (the file is still written), 2 on bad arguments.
"""

from __future__ import annotations

import glob
import logging
import os
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from heartlang_jax import atomic_file, errors

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run folder (vqhbr, pretrain or finetune), local or gs://.")
_RECORDS = flags.DEFINE_string("records", None, "A folder of records, a glob, or one record.")
_OUT = flags.DEFINE_string("out", None, "Output .npz file (local or gs://).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Records per device batch.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype: float32, or bfloat16 for speed on GPU/TPU.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar with the ETA.")

_GLOB_CHARS = frozenset("*?[")


class NoRecordsError(errors.HeartLangError, ValueError):
    """`--records` names nothing that looks like a record."""


def find_records(spec: str | os.PathLike) -> list[tuple[str, pathlib.Path]]:
    """(record id, record path without extension) of every record `spec` names, sorted.

    A folder gives every `.hea` record below it and every `.mat` without a `.hea` (original CPSC
    2018 files), ids relative to the folder; a glob gives the records of the files it matches; any
    other path is one record (which may then fail to load, and is reported as skipped).
    """
    from heartlang_jax.inference import model as inference

    text = os.fspath(spec)
    path = pathlib.Path(text)
    if path.is_dir():
        found = {p.with_suffix("") for p in path.rglob("*.hea")}
        found |= {p.with_suffix("") for p in path.rglob("*.mat") if not p.with_suffix(".hea").exists()}
        if not found:
            raise NoRecordsError(f"--records={text}: the folder holds no .hea or .mat record")
        return sorted((p.relative_to(path).as_posix(), p) for p in found)
    if _GLOB_CHARS & set(text):
        matches = [pathlib.Path(m) for m in glob.glob(text, recursive=True)]
        found = {
            inference.record_path(m) for m in matches if m.is_file() and m.suffix.lower() in inference.RECORD_EXTENSIONS
        }
        if not found:
            raise NoRecordsError(f"--records={text}: the glob matches no .hea, .dat or .mat file")
        return sorted((p.as_posix(), p) for p in found)
    record = inference.record_path(path)
    return [(record.as_posix(), record)]


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
) -> dict:
    """Embeds every record `records` names and writes `out`; returns a summary dict."""
    from heartlang_jax.inference import model as inference

    start = time.time()
    found = find_records(records)
    model = inference.load(checkpoint, dtype=dtype)
    logging.info("%r: embedding %d record(s) from %s", model, len(found), records)
    embeddings: dict[int, np.ndarray] = {}
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
        for i, vector, reason in model.iter_embed(
            [path for _, path in found], batch_size=batch_size, progress=progress
        ):
            if vector is not None:
                embeddings[i] = vector
            else:
                skipped[i] = str(reason)
                logging.warning("skipped %s", reason)
    except BaseException:  # Ctrl-C or an error part way: keep what was computed
        if embeddings or skipped:
            write(complete=False)
            logging.warning(
                "interrupted: wrote the %d embedding(s) computed so far to %s (complete=False)", len(embeddings), out
            )
        raise
    kept = sorted(embeddings)
    write(complete=True)
    summary = {"embedded": len(kept), "skipped": len(skipped), "out": os.fspath(out), "seconds": time.time() - start}
    logging.info(
        "embedded %d of %d record(s) (%d skipped) into %s in %.1f s",
        len(kept),
        len(found),
        len(skipped),
        out,
        summary["seconds"],
    )
    return summary


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from heartlang_jax.training import checkpointing

    try:
        summary = run(
            str(_CHECKPOINT.value),
            str(_RECORDS.value),
            str(_OUT.value),  # required flags: never None
            batch_size=_BATCH_SIZE.value,
            dtype=_DTYPE.value,
            progress=_PROGRESS.value,
        )
    except (NoRecordsError, checkpointing.CheckpointError) as e:
        logging.error("%s", e)
        sys.exit(2)
    if summary["embedded"] == 0:
        logging.error("no record could be embedded; see the skipped reasons in %s", summary["out"])
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["checkpoint", "records", "out"])
    app.run(main)
