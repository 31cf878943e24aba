"""Tokenizes one part of MIMIC-IV-ECG into the build's chunk checkpoints (see the builder's docstring).

Run parts 0..N-1 at once (processes or machines sharing --data_dir), then the plain build, which
finds every chunk done and only writes the TFDS files:

    python -m tfds_ptbxl.mimic_iv_ecg.prepare_chunks --manual_dir=/data/mimic-iv-ecg --data_dir=DIR --part=0 --num_parts=4
    python -m tfds_ptbxl.build tfds_ptbxl/mimic_iv_ecg --manual_dir=/data/mimic-iv-ecg --data_dir=DIR
"""

from __future__ import annotations

import argparse
import logging

from tfds_ptbxl.mimic_iv_ecg import mimic_iv_ecg_dataset_builder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manual_dir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--config", default="leads12")
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--num_parts", type=int, default=1)
    parser.add_argument("--num_workers", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    builder = mimic_iv_ecg_dataset_builder.Builder(
        config=args.config, data_dir=args.data_dir, num_workers=args.num_workers
    )
    written = builder.prepare_chunks(args.manual_dir, part=args.part, num_parts=args.num_parts)
    print(f"part {args.part} of {args.num_parts}: {written} chunks ready")


if __name__ == "__main__":
    main()
