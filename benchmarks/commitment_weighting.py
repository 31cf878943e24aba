"""Tiny VQ-HBR with the commitment term weighted as the paper ("sum") and as released ("mean") (issue 11).

The paper's codebook and commitment terms are squared l2 norms over the code dimension (2 - 2 cos
of the l2-normalized vectors); the released code takes `F.mse_loss`, their mean over the code
dimension, code_dim times weaker. This trains `configs/vqhbr.py:tiny` (d=32, K=256) twice, with
the dead-code restart off (`model.dead_code_patience=0`, as released), the same seed, data order
and number of steps, differing only in `model.commitment_weighting`, and prints the validation
figures at the end of each run:

  - codebook use: the fraction of the K codes chosen by at least one real validation word;
  - usage perplexity of those choices;
  - MSE ratio: reconstruction MSE over the real validation words divided by the mean square of
    those words, i.e. the MSE of predicting zeros (the amplitudes are standardized, so this is
    about their variance); the stage logs it as `eval_mse_ratio`.

    python benchmarks/commitment_weighting.py --workdir=/tmp/commitment   # builds the sample dataset once
    python benchmarks/commitment_weighting.py --workdir=/tmp/commitment --epochs=40
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from heartlang_jax.configs import vqhbr as vqhbr_configs  # noqa: E402
from heartlang_jax.stages import vqhbr  # noqa: E402

WEIGHTINGS = ("sum", "mean")  # before (the paper's norm) and after (the released F.mse_loss)


def build_dataset(workdir: pathlib.Path) -> pathlib.Path:
    """The bundled sample as `python -m heartlang_jax.main --config=configs/dataset.py` builds it."""
    tfds_dir = workdir / "data" / "tfds"
    if not tfds_dir.exists():
        subprocess.run(
            [sys.executable, "-m", "heartlang_jax.main", "--config=configs/dataset.py", f"--workdir={workdir / 'data'}"],
            cwd=REPO, check=True,
        )  # fmt: skip
    return tfds_dir


def run(weighting: str, tfds_dir: pathlib.Path, workdir: pathlib.Path, epochs: int, seed: int) -> dict[str, float]:
    config = vqhbr_configs.get_config("tiny")
    config.data.tfds_dir = os.fspath(tfds_dir)
    config.model.dead_code_patience = 0
    config.model.commitment_weighting = weighting
    config.seed = seed
    config.num_epochs = epochs
    # One evaluation and one checkpoint, at the end.
    config.eval_every_steps = 10**9
    config.checkpoint_every_steps = 10**9
    run_dir = workdir / f"vqhbr_{weighting}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resumed one
    start = time.perf_counter()
    figures = vqhbr.train_and_evaluate(config, run_dir)
    figures["seconds"] = time.perf_counter() - start
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/commitment_weighting")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the training split (11 steps each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir).absolute()
    tfds_dir = build_dataset(workdir)
    results = {w: run(w, tfds_dir, workdir, args.epochs, args.seed) for w in WEIGHTINGS}
    print(f"\ntiny VQ-HBR, dead-code restart off, {args.epochs} epochs, seed {args.seed}; validation at the end")
    print("| commitment_weighting | MSE ratio | codebook use | dead codes | usage perplexity | wall s |")
    print("|---|---|---|---|---|---|")
    for weighting, r in results.items():
        print(
            f"| {weighting} | {r['eval_mse_ratio']:.3f} | {r['eval_used_fraction']:.1%} | {r['eval_dead_words']} "
            f"| {r['eval_usage_perplexity']:.1f} | {r['seconds']:.0f} |"
        )
    for weighting, r in results.items():
        print(
            f"weighting={weighting} mse_ratio={r['eval_mse_ratio']:.4f} used_fraction={r['eval_used_fraction']:.4f} "
            f"dead_words={r['eval_dead_words']} perplexity={r['eval_usage_perplexity']:.2f}"
        )


if __name__ == "__main__":
    main()
