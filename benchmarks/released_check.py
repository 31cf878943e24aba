"""Our converted models against the released PyTorch code at the released sizes (issue 11).

Reads a recording made by `tools/make_released_fixture.py --released_sizes` (random weights of
the released VQ-HBR, K=8192 and d=128, and of the released Base, 12 x 768 with 8 heads of 64 and
MLP 1024, run on real sentences of the bundled sample), converts the weights with
`heartlang_jax.convert_released` and prints the max abs / relative errors and the word-id
agreement over real words. A recording with raw records (`--num_filtered`, default 1) also
reads those through `heartlang_jax.load(run).word_ids` (the released filter in model.json) and
prints the agreement with the released preprocessing + get_codebook_indices (`filtered_*`).

    PYTHONPATH=/work/shared/reference/heartlang-released:/work/shared/reference/timm_shim:. \
        /tmp/torch-ref/bin/python tools/make_released_fixture.py --released_sizes \
        --num_sentences=16 --num_filtered=16 --out=/tmp/released_sizes.npz
    python benchmarks/released_check.py /tmp/released_sizes.npz
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import released_comparison

TOLERANCE = 1e-4  # relative to the largest magnitude of each output
MIN_AGREEMENT = 0.999


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    recorded = dict(np.load(sys.argv[1]))
    figures = released_comparison.compare_with_recorded(recorded)
    if "filtered_records" in recorded:  # raw records through the released filter (issue 23)
        with tempfile.TemporaryDirectory() as scratch:
            figures.update(released_comparison.compare_filtered_records(recorded, scratch))
    failed = []
    for name, value in figures.items():
        print(f"{name}={value:.3g}")
        if name.endswith("_rel") and not value < TOLERANCE:
            failed.append(name)
    for name in ("word_id_agreement", "filtered_word_id_agreement"):
        if figures.get(name, 1.0) < MIN_AGREEMENT:
            failed.append(name)
    print("PASS" if not failed else f"FAIL: {failed}")


if __name__ == "__main__":
    main()
