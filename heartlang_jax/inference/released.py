"""The authors' released weights in one call: `heartlang_jax.load_released()`.

    model = heartlang_jax.load_released()                       # the Hub's PKUDigitalHealth/HeartLang
    model = heartlang_jax.load_released("/data/HeartLang")      # a local folder of the same layout
    model.embed(record); model.word_ids(record)                 # the released pre-trained encoder + vocabulary

It finds the released checkpoints in the source, converts them once (`convert_released.write_run`)
into run folders under a cache keyed by the files' SHA-256 (`<cache_dir>/released/<key>/vqhbr`,
`.../pretrain`), and loads one with `heartlang_jax.load`. A later call with the same files finds
the cached folders and converts nothing.

Which file is which model is read from its tensors, not its name: VQ-HBR holds
`quantize.embedding.weight`, pre-training `lm_head.weight`, fine-tuning `mlp_head.weight`
(fine-tuned files are ignored: their class names are not in the file; use `convert_released`).
The Hub repository's layout is taken from the released README, whose scripts read
`checkpoints/vqhbr/MIMIC-IV/checkpoint-100.pth` (VQ-HBR) and
`checkpoints/heartlang_base/checkpoint-200.pth` (pre-training) after "place the downloaded
checkpoints into the checkpoints folder"; any layout of `*.pth` files works. Besides `.pth`
(needs PyTorch, the converter's optional extra) a file may be `.npz`, the same state dict as
NumPy arrays (no PyTorch needed).

A function, not a `load("hf://...")` scheme: `load` reads run folders (local or gs://) and never
converts or downloads; fetching and converting the authors' PyTorch files is a different job with
its own cache and optional dependencies (`pip install "heartlang-jax[hub]"` for the Hub, torch for
`.pth`), so it stays out of `load`'s path.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import uuid
from collections.abc import Mapping

import numpy as np

from heartlang_jax import errors

DEFAULT_REPO = "PKUDigitalHealth/HeartLang"
# The released README's paths (under its checkpoints/ folder), per stage; see the module docstring.
HUB_FILES = {"vqhbr": "vqhbr/MIMIC-IV/checkpoint-100.pth", "pretrain": "heartlang_base/checkpoint-200.pth"}
WEIGHT_SUFFIXES = (".pth", ".npz")
# Part of the cache key: a converter that writes different folders gets a new one.
CONVERTER_VERSION = 2  # 2: the folders record the released MIMIC-IV band-pass
KINDS = ("pretrain", "vqhbr")


class ReleasedWeightsError(errors.HeartLangError, ValueError):
    """The source has no usable released checkpoint, or the Hub/PyTorch extra is missing."""


def default_cache_dir() -> pathlib.Path:
    """`$HEARTLANG_JAX_CACHE`, else `$XDG_CACHE_HOME/heartlang_jax`, else `~/.cache/heartlang_jax`."""
    if os.environ.get("HEARTLANG_JAX_CACHE"):
        return pathlib.Path(os.environ["HEARTLANG_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "heartlang_jax"


def read_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A released state dict from `.npz` (NumPy) or `.pth` (PyTorch)."""
    path = pathlib.Path(path)
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return {k.removeprefix("module."): arrays[k] for k in arrays.files}
    from heartlang_jax.convert_released import read_pth

    return read_pth(path)


def kind_of(state: Mapping[str, np.ndarray]) -> str | None:
    """'vqhbr', 'pretrain', 'finetune' or None, from the released state dict's tensor names."""
    if "quantize.embedding.weight" in state:
        return "vqhbr"
    if "lm_head.weight" in state:
        return "pretrain"
    if "mlp_head.weight" in state:
        return "finetune"
    return None


def _snapshot(repo_id: str, revision: str | None) -> pathlib.Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ReleasedWeightsError(
            f"{repo_id!r} is not a local folder, and fetching it from the Hugging Face Hub needs huggingface_hub: "
            'pip install "heartlang-jax[hub]"'
        ) from e
    return pathlib.Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=["*.pth", "*.npz"]))


def _weight_files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _convert(files: list[pathlib.Path], root: pathlib.Path, out: pathlib.Path, head_dim: int) -> dict[str, str]:
    """Converts the source's VQ-HBR and pre-training files into run folders under `out`."""
    from heartlang_jax import convert_released
    from heartlang_jax.models import released_weights

    if any(p.suffix == ".pth" for p in files):
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise ReleasedWeightsError(
                f"{root} holds PyTorch .pth checkpoints; converting them needs PyTorch: pip install torch "
                "(the CPU wheel is enough)"
            ) from e
    found: dict[str, str] = {}
    for path in files:
        state = read_state(path)
        kind = kind_of(state)
        if kind not in KINDS:
            continue
        relative = path.relative_to(root).as_posix()
        if kind in found:
            raise ReleasedWeightsError(f"{root} holds two released {kind} checkpoints: {found[kind]} and {relative}")
        build = released_weights.build_vqhbr if kind == "vqhbr" else released_weights.build_pretrain
        convert_released.write_run(out / kind, kind, build(state, head_dim=head_dim))
        found[kind] = relative
        del state
    return found


def released_run_folders(
    source: str | os.PathLike = DEFAULT_REPO,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    head_dim: int | None = None,
) -> pathlib.Path:
    """The cached folder holding `vqhbr/` and `pretrain/` converted from `source` (converted on first use)."""
    from heartlang_jax.models.released_weights import RELEASED_HEAD_DIM

    head_dim = RELEASED_HEAD_DIM if head_dim is None else head_dim
    local = pathlib.Path(os.fspath(source)).expanduser()
    root = local if local.is_dir() else _snapshot(os.fspath(source), revision)
    files = _weight_files(root)
    if not files:
        raise ReleasedWeightsError(
            f"{root} holds no released checkpoint (*.pth or *.npz); the Hub repository's layout is {HUB_FILES}"
        )
    key = hashlib.sha256(
        json.dumps(
            {"files": {p.relative_to(root).as_posix(): _sha256(p) for p in files}, "head_dim": head_dim,
             "converter": CONVERTER_VERSION}, sort_keys=True,
        ).encode()
    ).hexdigest()[:24]  # fmt: skip
    cache = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / "released" / key
    if (target / "source.json").is_file():
        return target
    staging = cache / "released" / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        found = _convert(files, root, staging, head_dim)
        if not found:
            raise ReleasedWeightsError(
                f"none of {[p.relative_to(root).as_posix() for p in files]} in {root} is a released VQ-HBR or "
                "pre-training checkpoint"
            )
        (staging / "source.json").write_text(json.dumps({"source": os.fspath(source), "files": found}, indent=2))
        try:
            staging.rename(target)  # atomic: a folder is either absent or complete
        except OSError:
            if not (target / "source.json").is_file():  # not a concurrent conversion that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_released(
    source: str | os.PathLike = DEFAULT_REPO,
    *,
    kind: str = "pretrain",
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    head_dim: int | None = None,
    dtype: str = "float32",
):
    """The released model of `kind` ("pretrain", with the VQ-HBR vocabulary for `word_ids`, or
    "vqhbr") as a `HeartLangModel`.

    Args:
      source: a Hugging Face Hub repository id (default "PKUDigitalHealth/HeartLang"; needs the
        `hub` extra) or a local folder holding the released `.pth` (or `.npz`) checkpoints.
      kind: which converted run folder to load.
      cache_dir: where converted run folders are kept (default `default_cache_dir()`).
      revision: a Hub branch, tag or commit.
      head_dim: the attention head size the state dicts do not record (64 in every released model).
      dtype: compute dtype, as `heartlang_jax.load`.
    """
    from heartlang_jax.inference.model import load

    if kind not in KINDS:
        raise ReleasedWeightsError(f"kind must be one of {KINDS}, got {kind!r}")
    folders = released_run_folders(source, cache_dir=cache_dir, revision=revision, head_dim=head_dim)
    if not (folders / kind).is_dir():
        raise ReleasedWeightsError(f"{source} holds no released {kind} checkpoint (converted: {folders})")
    vocabulary = folders / "vqhbr" if kind == "pretrain" and (folders / "vqhbr").is_dir() else None
    return load(folders / kind, dtype=dtype, vocabulary=vocabulary)
