"""Converts the authors' released PyTorch checkpoints into this project's run folders.

    python -m heartlang_jax.convert_released --vqhbr=checkpoint-100.pth \
        --pretrain=checkpoint-200.pth --finetune=checkpoint-best.pth --out=runs/released

Each released file holds {"model": state_dict, ...}. The command writes one self-contained run
folder per file given (`<out>/vqhbr`, `<out>/pretrain`, `<out>/finetune`: `model.json` and
`checkpoints/0/`), which the stages and `heartlang_jax.load` read like folders they made
themselves:

  - VQ-HBR (`modeling_vqhbr.vqhbr`): the vocabulary; `VQHBR.word_ids` gives the released
    `get_codebook_indices` ids for real words (padding words, whose ids the released code leaves
    to its task head, are 0 here).
  - pre-training (`modeling_pretrain.HeartLang`): a `MaskedEcgModel`; its encoder initialises
    fine-tuning (`--config.init_workdir`).
  - fine-tuning (`modeling_finetune.HeartLang_finetune_base`): an `EcgClassifier` reading the
    CLS token (give `--class_names` and `--task`).

The state-dict mapping lives beside the models (`heartlang_jax.models.released_weights`); this
module is the command and the run-folder writer. Every converted encoder is
`position="learned"` with the released block details (no Q/K/V bias, LayerNorm epsilon 1e-5) and
`mask_padding=False` (the released attention attends padding words).
Sizes come from the tensors' shapes, except the split of the attention width into heads, which
the state dict does not record: `--head_dim` (64 in every released model).

Reading `.pth` needs PyTorch, an optional extra for this command only (`pip install torch`); the
mapping functions (`released_weights`) take a dict of NumPy arrays and are tested without it. A
state dict saved as `.npz` (`np.savez(path, **state_dict)`) needs no PyTorch.
`heartlang_jax.load_released()` does the same in one call, from the Hub or a local folder, cached.

Input facts recorded in `model.json`, from the released code (`sentence_spec.RELEASED`): sentences
are cut by XQRS on lead I at 100 Hz, 256 words of 96 samples, 12 leads. The released MIMIC-IV pre-processing
(`mimic_preprocess.py`, `is_norm=False`) band-passes (0.67-40 Hz, 5th-order Butterworth, filtfilt at
100 Hz) but does not standardize, so the VQ-HBR and pre-training folders record that filter
(`sentence_spec.RELEASED_MIMIC`, applied by `load(...)` to raw records) and amplitude mean 0, std 1
(raw mV). The fine-tuned folder records no filter (the released PTB-XL data are not filtered). Its PTB-XL fine-tuning
data come from the PTB-XL benchmark code, which standardizes with the training folds' mean and std;
pass those as `--amplitude_mean/--amplitude_std` for a fine-tuned model (default 0 and 1).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pickle
from collections.abc import Mapping, Sequence

import numpy as np
from absl import app, flags

from heartlang_jax.ecg import sentence_spec
from heartlang_jax.models.released_weights import (
    RELEASED_HEAD_DIM,
    ConversionError,
    build_finetune,
    build_pretrain,
    build_vqhbr,
)

RELEASED_DATASET = {
    "vqhbr": "mimic-iv-ecg (released)",
    "pretrain": "mimic-iv-ecg (released)",
    "finetune": "ptbxl (released)",
}


def write_run(
    out_dir: str | os.PathLike,
    kind: str,
    model,
    *,
    amplitude: Mapping[str, float] | None = None,
    task: str | None = None,
    class_names: Sequence[str] | None = None,
    spec: sentence_spec.SentenceSpec | None = None,
) -> None:
    """One run folder: model.json (ModelInfo) and checkpoints/0 with the converted weights.

    `spec`: the sentences the weights read; default the released ones of their training data
    (`RELEASED_MIMIC` for VQ-HBR and pre-training, `RELEASED`, unfiltered PTB-XL, for fine-tuning)."""
    from heartlang_jax.inference import model_info
    from heartlang_jax.training import checkpointing

    encoder = model.config.encoder if kind == "vqhbr" else model.encoder.config
    # The released sentence facts, with the model's own sentence length (256 when released).
    if spec is None:
        spec = sentence_spec.RELEASED if kind == "finetune" else sentence_spec.RELEASED_MIMIC
    sentence = dataclasses.replace(spec, max_len=encoder.max_len, token_len=encoder.token_len)
    os.makedirs(out_dir, exist_ok=True)
    checkpoints = checkpointing.RunCheckpoints(out_dir)
    checkpoints.save(0, model, None, {}, {"converted_from": "released PyTorch checkpoint"})
    checkpoints.close()
    model_info.write_model(
        out_dir,
        kind,
        model,
        sentence=sentence.to_dict(),
        amplitude=amplitude or {"mean": 0.0, "std": 1.0},
        dataset=RELEASED_DATASET[kind],
        task=task,
        class_names=class_names,
    )


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict of a released checkpoint file as NumPy arrays (needs PyTorch)."""
    try:
        import torch
    except ImportError as e:
        raise SystemExit("reading .pth checkpoints needs PyTorch: pip install torch (CPU wheel is enough)") from e
    # weights_only: a .pth is a pickle, and unpickling without it runs any code the file names. The
    # released files also hold their argparse.Namespace of arguments, the one class allowed besides tensors.
    allow = getattr(getattr(torch, "serialization", None), "safe_globals", None)
    with allow([argparse.Namespace]) if allow is not None else contextlib.nullcontext():
        try:
            checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ConversionError(f"{path}: refused to unpickle a non-tensor object (weights_only=True): {e}") from e
    state = checkpoint.get("model", checkpoint.get("state_dict", checkpoint)) if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: expected {{'model': state_dict, ...}}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def define_flags() -> None:
    """The command's flags (the names of the earlier argparse command); defined only when it runs,
    so importing this module beside another absl command (embed.py has --out too) is fine."""
    flags.DEFINE_string("vqhbr", None, "Released VQ-HBR checkpoint (.pth, or its state dict as .npz).")
    flags.DEFINE_string("pretrain", None, "Released pre-training checkpoint (.pth or .npz).")
    flags.DEFINE_string("finetune", None, "Released fine-tuning checkpoint (.pth or .npz).")
    flags.DEFINE_string("out", None, "Folder for the run folders vqhbr/, pretrain/, finetune/.")
    flags.DEFINE_integer("head_dim", RELEASED_HEAD_DIM, "Attention head size (released: 64).")
    flags.DEFINE_string("task", None, "Fine-tuning task name, e.g. superdiagnostic.")
    flags.DEFINE_string("class_names", "", "Comma-separated class names of the fine-tuned head.")
    flags.DEFINE_float("amplitude_mean", 0.0, "Fine-tuning data standardization mean.")
    flags.DEFINE_float("amplitude_std", 1.0, "Fine-tuning data standardization std.")
    flags.mark_flags_as_required(["out"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if not (f.vqhbr or f.pretrain or f.finetune):
        raise app.UsageError("give at least one of --vqhbr, --pretrain, --finetune")
    from heartlang_jax.inference.released import read_state  # .pth (PyTorch) or .npz (NumPy)

    out = str(f.out)  # a required flag: never None
    done = []
    if f.vqhbr:
        write_run(os.path.join(out, "vqhbr"), "vqhbr", build_vqhbr(read_state(f.vqhbr), head_dim=f.head_dim))
        done.append("vqhbr")
    if f.pretrain:
        model = build_pretrain(read_state(f.pretrain), head_dim=f.head_dim)
        write_run(os.path.join(out, "pretrain"), "pretrain", model)
        done.append("pretrain")
    if f.finetune:
        model = build_finetune(read_state(f.finetune), head_dim=f.head_dim)
        num_classes = int(model.head.kernel.shape[1])
        names = [n for n in f.class_names.split(",") if n] or [f"class_{i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise app.UsageError(f"--class_names has {len(names)} names, the head has {num_classes} outputs")
        write_run(
            os.path.join(out, "finetune"),
            "finetune",
            model,
            task=f.task,
            class_names=names,
            amplitude={"mean": f.amplitude_mean, "std": f.amplitude_std},
        )
        done.append("finetune")
    for kind in done:
        print(f"{kind}: {os.path.join(out, kind)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
