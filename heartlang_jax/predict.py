"""Class probabilities for a folder of ECG records with a fine-tuned run: `python -m heartlang_jax.predict`.

    python -m heartlang_jax.predict --checkpoint=runs/finetune --records=my_ecgs/ --out=predictions.csv

`--records` is a folder, a records CSV (its `record` column: paths relative to the CSV, the
`csv` dataset's format; other columns are ignored), a glob or one record
(`inference.record_files`). `predictions.csv` has one row per record, in the order found (a
folder and a glob sorted, a CSV in its row order):

  record          the record id (relative to the folder, or as the CSV writes it), no extension
  num_windows     the windows it was read in: a record longer than the model's window (10 s) is cut
                  into windows (`--window_s`, `--stride_s`) and its probabilities are their mean
  prob_<class>    the probability of each class (sigmoid of its logit), full float64 precision
  pred_<class>    1 if prob >= the class's threshold, else 0: the thresholds the fine-tuning run
                  chose (`RUN/thresholds.json`), or 0.5 when the run has none (logged)
  reason          empty, or why the record was skipped (unreadable, no heartbeat, ...); its
                  probabilities and decisions are then empty and num_windows is 0

With `--per_window`, one row per window instead, with `window`, `start_s` and `end_s` columns.
The records are batched on the device (`--batch_size` windows at a time, one compiled shape),
a progress bar shows the ETA, and the output is deterministic (same inputs, same bytes). The file
is written to a temporary name and renamed, so a reader never sees half of it. This is
`HeartLangModel.predict_many` (or `iter_predict`) written out. Exit status: 0, or 1 when no
record could be predicted (the file is still written), 2 on bad arguments.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Sequence

from absl import app, flags

from heartlang_jax import atomic_file
from heartlang_jax.inference import record_files
from heartlang_jax.inference.record_files import find_records

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined when it runs (not on import: the commands share flag names)."""
    record_files.define_command_flags("A fine-tuning run folder, local or gs://.", "Output .csv file (local or gs://).")
    flags.DEFINE_bool("per_window", False, "One row per window instead of per record.")


def _number(value: float) -> str:
    return repr(float(value))  # the shortest text that reads back to the same float64


def run(
    checkpoint: str | os.PathLike,
    records: str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch_size: int = 64,
    dtype: str = "float32",
    progress: bool = True,
    window_s: float | None = None,
    stride_s: float | None = None,
    per_window: bool = False,
) -> dict:
    """Predicts every record `records` names and writes the CSV `out`; returns a summary dict."""
    from heartlang_jax.inference import model as inference

    start = time.time()
    found = find_records(records)
    model = inference.load(checkpoint, dtype=dtype)
    model._require_classifier()
    classes = list(model.class_names or ())
    if model.thresholds_file is None:
        logging.warning("decisions at %s", model.threshold_rule)
    else:
        thresholds = ", ".join(f"{c}={t:g}" for c, t in zip(classes, model.thresholds))
        logging.info(
            "decisions at the thresholds of %s (%s): %s", model.thresholds_file, model.threshold_rule, thresholds
        )
    logging.info("%r: predicting %d record(s) from %s", model, len(found), records)

    results = {}
    for result in model.iter_predict(
        [path for _, path in found],
        batch_size=batch_size,
        progress=progress,
        window_s=window_s,
        stride_s=stride_s,
        per_window=per_window,
    ):
        results[result.position] = result
        if result.reason is not None:
            logging.warning("skipped %s", result.reason)

    header = ["record", "num_windows"]
    if per_window:
        header += ["window", "start_s", "end_s"]
    header += [f"prob_{c}" for c in classes] + [f"pred_{c}" for c in classes] + ["reason"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    blanks = [""] * (2 * len(classes))
    for i, (record_id, _) in enumerate(found):
        result = results[i]
        if result.reason is not None:
            writer.writerow([record_id, 0] + (["", "", ""] if per_window else []) + blanks + [result.reason])
            continue
        rows = result.value if per_window else [result.value]
        for w, probabilities in enumerate(rows):
            where = [w, _number(result.windows[w][0]), _number(result.windows[w][1])] if per_window else []
            decisions = [int(p >= t) for p, t in zip(probabilities, model.thresholds)]
            writer.writerow(
                [record_id, result.num_windows] + where + [_number(p) for p in probabilities] + decisions + [""]
            )
    atomic_file.atomic_write(out, text.getvalue())

    predicted = [r for r in results.values() if r.reason is None]
    windows = sum(r.num_windows for r in predicted)
    return record_files.summarize("predicted", len(predicted), len(found), out, time.time() - start, windows)


def main(argv: Sequence[str]) -> None:
    record_files.run_command(argv, run, "predicted", per_window=FLAGS.per_window)


if __name__ == "__main__":
    define_flags()
    app.run(main)
