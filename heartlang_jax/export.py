"""Exports a fine-tuned run folder as a portable `jax.export` artifact: `python -m heartlang_jax.export`.

    python -m heartlang_jax.export --checkpoint=runs/demo/sweep/<cell> --out=deploy/
    python deploy/heartlang_predict.py ptb-xl/records100/00000/00001_lr     # needs jax, numpy, scipy, wfdb

`--out` receives:

  model.jax_export      the classifier, serialized `jax.export.Exported` (StableHLO) for the platforms
                        of `--platforms` (default cpu, cuda, tpu), batch size symbolic:
                        (params, words [b, L, T] f32, lead_ids [b, L] i32, time_ids [b, L] i32)
                        -> probabilities [b, C] f32 (the sigmoid of each logit; the tasks are multi-label)
  params.npz            the weights the artifact takes first, `p0`, `p1`, ... in its order
  export.json           the sentence spec, amplitude standardization, task, class names, shapes, platforms
  heartlang_predict.py  the loader: `load(DIR).predict(record)` -> {class: probability}, as `heartlang_jax.load(run).predict`
  heartlang_ecg/        this package's signal layer (records, filters, sentence_spec, tokenizer; errors),
                        copied verbatim with its imports renamed, so raw records become exactly the
                        sentences the model was trained on

The model runs inside the artifact; reading, standardizing and tokenizing a record (QRS detection,
resampling, the spec's band-pass) run in NumPy/SciPy before it, in the copied signal layer rather
than a reimplementation, so the exported path cannot drift from the training one. The loader
imports no `heartlang_jax` code.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import sys
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from heartlang_jax import atomic_file, errors

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined when it runs (not on import: the commands share flag names)."""
    flags.DEFINE_string("checkpoint", None, "A fine-tuned run folder, local or gs://.")
    flags.DEFINE_string("out", None, "Folder to write the artifact, its weights, export.json and the loader into.")
    flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "jax.export target platforms.")


FORMAT = "heartlang_jax.export/1"
ARTIFACT = "model.jax_export"
PARAMS = "params.npz"
INFO = "export.json"
LOADER = "heartlang_predict.py"
VENDORED = "heartlang_ecg"
# The signal layer the loader needs, as (source in this package, file in VENDORED/).
SIGNAL_LAYER = (
    ("errors.py", "errors.py"),
    ("ecg/records.py", "records.py"),
    ("ecg/filters.py", "filters.py"),
    ("ecg/sentence_spec.py", "sentence_spec.py"),
    ("ecg/tokenizer.py", "tokenizer.py"),
)
_PACKAGE = pathlib.Path(__file__).resolve().parent


class ExportError(errors.HeartLangError, ValueError):
    """The run folder cannot be exported (not a fine-tuned classifier)."""


def vendored_source(text: str, name: str) -> str:
    """A signal-layer module with its `heartlang_jax` imports pointed at the copied package."""
    text = text.replace("from heartlang_jax.ecg.", f"from {VENDORED}.").replace(
        "from heartlang_jax.ecg import", f"from {VENDORED} import"
    )
    text = text.replace("from heartlang_jax import errors", f"from {VENDORED} import errors")
    left = re.findall(r"^\s*(?:from|import) heartlang_jax\b.*$", text, flags=re.M)
    if left:
        raise ExportError(f"{name} imports {left[0].strip()!r}, which the exported loader cannot carry")
    return text


def export(
    checkpoint: str | os.PathLike, out: str | os.PathLike, *, platforms: Sequence[str] = ("cpu", "cuda", "tpu")
) -> dict:
    """Writes the artifact, its weights, export.json, the loader and the signal layer into `out`; returns export.json."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from heartlang_jax.inference import model as inference

    model = inference.load(checkpoint, dtype="float32")
    if model.kind != "finetune":
        raise ExportError(f"{checkpoint} is a {model.kind} run; export takes a fine-tuned classifier run folder")
    graphdef, params, rest = nnx.split(model.model, nnx.Param, ...)  # type: ignore[misc]  # eval mode: no dropout
    leaves, treedef = jax.tree.flatten(params)
    # The rest (dropout RNG state, unused in eval mode) is baked in as constants; rebuilt from plain
    # arrays inside the trace, as nnx variables may not cross trace levels.
    rest_leaves, rest_treedef = jax.tree.flatten(rest)

    def probabilities(weights, words, lead_ids, time_ids):
        state = (jax.tree.unflatten(treedef, weights), jax.tree.unflatten(rest_treedef, rest_leaves))
        classifier = nnx.merge(graphdef, *state)
        return jax.nn.sigmoid(classifier(words, lead_ids, time_ids).astype(jnp.float32))  # [b, C]

    spec = model.tokenizer.spec
    batch = jax.export.symbolic_shape("b")[0]
    args = (
        [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
        jax.ShapeDtypeStruct((batch, spec.max_len, spec.token_len), jnp.float32),
        jax.ShapeDtypeStruct((batch, spec.max_len), jnp.int32),
        jax.ShapeDtypeStruct((batch, spec.max_len), jnp.int32),
    )
    exported = jax.export.export(jax.jit(probabilities), platforms=tuple(platforms))(*args)

    out = pathlib.Path(os.fspath(out))
    out.mkdir(parents=True, exist_ok=True)
    atomic_file.atomic_write(out / ARTIFACT, bytes(exported.serialize()))
    with atomic_file.atomic_open(out / PARAMS) as f:
        np.savez(f, **{f"p{i}": np.asarray(x) for i, x in enumerate(leaves)})  # type: ignore[arg-type]
    info = {
        "format": FORMAT,
        "checkpoint": os.fspath(checkpoint),
        "step": model.step,
        "dataset": model.info.dataset,
        "task": model.info.task,
        "class_names": list(model.class_names or ()),
        "sentence": spec.to_dict(),
        "amplitude": {"mean": model.amplitude_mean, "std": model.amplitude_std},
        "words_storage_dtype": np.dtype(inference.WORDS_STORAGE_DTYPE).name,
        "inputs": {
            "words": ["b", spec.max_len, spec.token_len, "float32"],
            "lead_ids": ["b", spec.max_len, "int32"],
            "time_ids": ["b", spec.max_len, "int32"],
        },
        "outputs": {"probabilities": ["b", len(model.class_names or ()), "float32"]},
        "num_params": len(leaves),
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
    }
    atomic_file.atomic_write(out / INFO, json.dumps(info, indent=2))
    vendored = out / VENDORED
    vendored.mkdir(exist_ok=True)
    atomic_file.atomic_write(
        vendored / "__init__.py", '"""heartlang_jax\'s signal layer, copied by heartlang_jax.export."""\n'
    )
    for source, name in SIGNAL_LAYER:
        atomic_file.atomic_write(vendored / name, vendored_source((_PACKAGE / source).read_text(), source))
    atomic_file.atomic_write(out / LOADER, (_PACKAGE / "inference" / "exported_loader.py").read_text())
    logging.info("exported %r for %s into %s", model, ", ".join(exported.platforms), out)
    return info


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        info = export(str(FLAGS.checkpoint), str(FLAGS.out), platforms=FLAGS.platforms)
    except errors.HeartLangError as e:
        logging.error("%s", e)
        sys.exit(2)
    print(f"{FLAGS.out}: {ARTIFACT} for {', '.join(info['platforms'])}; classes {', '.join(info['class_names'])}")


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["checkpoint", "out"])
    app.run(main)
