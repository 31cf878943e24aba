"""`tfds build` without TensorFlow: `python -m tfds_ptbxl.build tfds_ptbxl/ptbxl [tfds build flags]`.

tfds 4.9.10's `tfds` command imports all its subcommands, and `convert_format` needs TensorFlow
at import time, so the `tfds` executable cannot start where TensorFlow is absent (as here: the
dataset is written as array_record). This runs TFDS's own `build` command, with the same flags
(`--manual_dir`, `--data_dir`, `--config`, `--file_format`, ...); array_record is the default.
"""

from __future__ import annotations

import sys

from absl import app
from tensorflow_datasets.scripts.cli import build, cli_utils

_parse_build_flags = cli_utils.make_flags_parser(build.Args, description=__doc__.split("\n")[0])


def _parse(argv: list[str]) -> build.Args:
    if not any(a.startswith("--file_format") for a in argv):
        argv = [*argv, "--file_format=array_record"]
    return _parse_build_flags(argv)


def main(args: build.Args) -> None:
    args.execute()


if __name__ == "__main__":
    app.run(main, flags_parser=_parse, argv=sys.argv)
