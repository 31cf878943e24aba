"""The released-weight check of `released_check.py` on the accelerator, in float32 and bfloat16 (issue 20).

Reads a recording of the released PyTorch code at the released sizes (`tools/make_released_fixture.py
--released_sizes`, made in float32 on the CPU), converts its weights with
`heartlang_jax.convert_released` and runs `compare_with_recorded` on the default JAX backend once
per mode:

- `fp32`: float32 at JAX's default matmul precision (on a GPU, XLA may use TF32 tensor cores);
- `fp32_highest`: float32 with `jax.default_matmul_precision("highest")`;
- `bf16`: the converted models built with `dtype=bfloat16` (as `dtype="auto"` runs them on GPU).

For each it prints the relative errors and `word_ids=<equal>/<real words> (<x>%) PASS|FAIL`, the
target being >= 99.9% of the real words given the same vocabulary index as the released code; the
relative errors are judged against 1e-4 in float32 and reported in bfloat16.

    python benchmarks/released_check_device.py /tmp/released_sizes.npz
    python benchmarks/released_check_device.py /tmp/released_sizes.npz --modes=bf16
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from heartlang_jax import convert_released

MODES = ("fp32", "fp32_highest", "bf16")
TOLERANCE = {"fp32": 1e-4, "fp32_highest": 1e-4}  # relative to the largest magnitude of each output
MIN_AGREEMENT = 0.999


@contextlib.contextmanager
def built_in(dtype: str):
    """convert_released builds its models in `dtype` inside this block."""
    original = convert_released.encoder_config

    def encoder_config(*args, **kwargs):
        return dataclasses.replace(original(*args, **kwargs), dtype=dtype)

    convert_released.encoder_config = encoder_config
    try:
        yield
    finally:
        convert_released.encoder_config = original


def check(recorded: dict, mode: str) -> bool:
    if mode == "fp32_highest":
        context = jax.default_matmul_precision("highest")
    elif mode == "bf16":
        context = built_in("bfloat16")
    else:
        context = contextlib.nullcontext()
    with context:
        figures = convert_released.compare_with_recorded(recorded)
    tolerance = TOLERANCE.get(mode)
    failed = []
    errors = []
    for name, value in figures.items():
        if name.endswith("_rel"):
            errors.append(f"{name.removesuffix('_rel')}={value:.2g}")
            if tolerance is not None and not value < tolerance:
                failed.append(name)
    print(f"[{mode}] relative errors: {' '.join(errors)}" + (f" (tolerance {tolerance:g})" if tolerance else ""))
    real = int(figures["real_words"])
    equal = real - int(figures["word_id_mismatches"])
    agreement = figures["word_id_agreement"]
    ids_ok = agreement >= MIN_AGREEMENT
    print(
        f"[{mode}] word_ids={equal}/{real} ({100 * agreement:.2f}%) {'PASS' if ids_ok else 'FAIL'}"
        + (f"; errors over tolerance: {failed}" if failed else "")
    )
    return ids_ok and not failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recording", help="an .npz of tools/make_released_fixture.py --released_sizes")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated of {MODES}")
    args = parser.parse_args()
    recorded = dict(np.load(args.recording))
    print(f"backend={jax.default_backend()} ({jax.devices()[0].device_kind}) recording={args.recording}")
    results = {mode: check(recorded, mode) for mode in args.modes.split(",")}
    print("released_check " + " ".join(f"{mode}={'PASS' if ok else 'FAIL'}" for mode, ok in results.items()))


if __name__ == "__main__":
    main()
