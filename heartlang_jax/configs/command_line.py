"""`--config` on the command line: the config file found from anywhere, and an override of no
field named in one line.

ml_collections handles a wrong-typed override well ("flag --config.x=abc: invalid literal for
int()"), but an override naming no field (`--config.model.num_codez=3`) escapes flag parsing as a
bare KeyError/AttributeError with a traceback and only the last name.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

import ml_collections
from absl import app, flags

from heartlang_jax.configs.typed import unknown_field_message


def parse_flags(argv: list[str], flag_name: str = "config") -> list[str]:
    """`app.run`'s flags_parser: absl's, plus a clear error for an override of no field."""
    from heartlang_jax import configs

    try:
        argv = _resolve_config_flag(argv, flag_name, configs.resolve_config_path)
    except configs.ConfigFileError as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
        sys.exit(1)
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError):
        config = flags.FLAGS[flag_name].parser.parse(_flag_value(argv, flag_name))
        problems = unknown_overrides(config, argv, flag_name)
        if not problems:
            raise
        sys.stderr.write("FATAL Flags parsing error: " + "; ".join(problems) + "\n")
        sys.exit(1)


def unknown_overrides(config: ml_collections.ConfigDict, argv: Sequence[str], flag_name: str = "config") -> list[str]:
    """One message per `--<flag_name>.<path>` in `argv` whose path is no field of `config`."""
    known = _dotted_paths(config)
    problems = []
    for arg in argv:
        match = re.match(rf"^--?(?:no)?{re.escape(flag_name)}\.([^=]+)", arg)
        if match and match.group(1) not in known:
            problems.append(f"--{flag_name}.{unknown_field_message(match.group(1), known)}")
    return problems


def _dotted_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in config.items():
        paths.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            paths += _dotted_paths(value, f"{prefix}{key}.")
    return paths


def _resolve_config_flag(argv: list[str], flag_name: str, resolve) -> list[str]:
    """Rewrites the `--config` value (either `--config=X` or `--config X`) to an existing file."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg in (f"--{flag_name}", f"-{flag_name}") and i + 1 < len(argv):
            argv[i + 1] = resolve(argv[i + 1])
        elif match := re.match(rf"^(--?{re.escape(flag_name)}=)(.*)$", arg):
            argv[i] = match.group(1) + resolve(match.group(2))
    return argv


def _flag_value(argv: Sequence[str], flag_name: str) -> str:
    for i, arg in enumerate(argv):
        if arg in (f"--{flag_name}", f"-{flag_name}") and i + 1 < len(argv):
            return argv[i + 1]
        if match := re.match(rf"^--?{re.escape(flag_name)}=(.*)$", arg):
            return match.group(1)
    raise ValueError(f"--{flag_name} not given")
