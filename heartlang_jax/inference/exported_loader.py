"""Runs a classifier exported by `python -m heartlang_jax.export` (this file is copied into the
export folder as `heartlang_predict.py`; it is not imported from the heartlang_jax package).

Needs only jax, numpy, scipy and wfdb; no heartlang_jax:

    import heartlang_predict
    model = heartlang_predict.load("deploy/")                 # the export folder
    model.predict("ptb-xl/records100/00000/00001_lr")         # {class name: probability}
    model.predict(signal, fs=500, lead_names=["I", "II", ...])  # an array [leads, samples] in mV
    model.predict_many(records)                               # [N, classes], one call of the artifact

or from the shell: `python heartlang_predict.py RECORD [RECORD ...]` (JSON lines). A record is
read, standardized `(x - mean) / std` and cut into its ECG sentence by `heartlang_ecg`, the
package's own signal layer copied beside this file, exactly as `heartlang_jax.load(run).predict`
does; the words are rounded to float16 as the training datasets store them; the serialized model
(`model.jax_export`) maps the sentences to probabilities.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
RECORD_EXTENSIONS = (".hea", ".dat", ".mat")


def _signal_layer(folder: pathlib.Path) -> tuple[Any, Any, Any]:
    """(records, sentence_spec, tokenizer) modules of the copied signal layer in `folder`."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    names = ("records", "sentence_spec", "tokenizer")
    return tuple(importlib.import_module(f"heartlang_ecg.{name}") for name in names)  # type: ignore[return-value]


class ExportedClassifier:
    """The exported classifier of a folder written by `heartlang_jax.export` (see `load`)."""

    def __init__(self, folder: str | os.PathLike):
        import jax

        self.folder = pathlib.Path(folder).resolve()
        self.info = json.loads((self.folder / "export.json").read_text())
        self.class_names: tuple[str, ...] = tuple(self.info["class_names"])
        self._records, sentence_spec, _ = _signal_layer(self.folder)
        self.tokenizer = sentence_spec.SentenceSpec.from_dict(self.info["sentence"]).make_tokenizer()
        self.mean = float(self.info["amplitude"]["mean"])
        self.std = float(self.info["amplitude"]["std"])
        self.exported = jax.export.deserialize(bytearray((self.folder / "model.jax_export").read_bytes()))
        with np.load(self.folder / "params.npz") as arrays:
            self.params = [jax.numpy.asarray(arrays[f"p{i}"]) for i in range(int(self.info["num_params"]))]
        self._call = jax.jit(self.exported.call)

    def sentence(
        self, ecg: Any, fs: float | None = None, lead_names: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(words [L, T] float32, lead_ids [L] int32, time_ids [L] int32) of one ECG, as the model reads it."""
        if isinstance(ecg, (str, os.PathLike)):
            if fs is not None or lead_names is not None:
                raise ValueError(f"record {ecg}: fs and lead_names come from the record's header")
            path = pathlib.Path(ecg)
            ecg = self._records.load_record(path.with_suffix("") if path.suffix.lower() in RECORD_EXTENSIONS else path)
        if isinstance(ecg, self._records.Record):
            signal, fs, lead_names, name = ecg.signal, ecg.fs, ecg.lead_names, ecg.name
        else:
            if fs is None:
                raise ValueError("an array ECG needs its sampling rate, fs=<Hz>")
            signal = np.asarray(ecg, dtype=np.float32)
            signal = signal[None] if signal.ndim == 1 else signal
            lead_names, name = (None if lead_names is None else tuple(lead_names)), "<array>"
        standardized = ((signal - self.mean) / self.std).astype(np.float32)
        sentence = self.tokenizer.tokenize(standardized, fs, lead_names=lead_names, record_name=name)
        words = sentence.words.astype(self.info["words_storage_dtype"]).astype(np.float32)
        return words, sentence.lead_ids.astype(np.int32), sentence.time_ids.astype(np.int32)

    def probabilities(self, words: np.ndarray, lead_ids: np.ndarray, time_ids: np.ndarray) -> np.ndarray:
        """[B, classes] float32 for sentences [B, L, T], [B, L], [B, L] (any B)."""
        return np.asarray(self._call(self.params, words, lead_ids, time_ids))

    def predict(self, ecg: Any, fs: float | None = None, lead_names: Sequence[str] | None = None) -> dict[str, float]:
        """{class name: probability} of one ECG (a record path, a Record, or an array with fs=)."""
        words, lead_ids, time_ids = self.sentence(ecg, fs, lead_names)
        row = self.probabilities(words[None], lead_ids[None], time_ids[None])[0]
        return {name: float(p) for name, p in zip(self.class_names, row)}

    def predict_many(self, ecgs: Sequence[Any]) -> np.ndarray:
        """[N, classes] float32: every ECG's probabilities, in one call of the artifact."""
        words, lead_ids, time_ids = zip(*(self.sentence(ecg) for ecg in ecgs))
        return self.probabilities(np.stack(words), np.stack(lead_ids), np.stack(time_ids))


def load(folder: str | os.PathLike = HERE) -> ExportedClassifier:
    return ExportedClassifier(folder)


if __name__ == "__main__":
    model = load()
    for record in sys.argv[1:]:
        print(json.dumps({"record": record, **model.predict(record)}))
