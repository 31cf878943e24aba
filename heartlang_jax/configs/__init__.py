"""ml_collections config files, shipped inside the package: `--config=configs/<name>.py[:variant]`.

`configs/<name>.py` is found relative to the working directory first and then here, so the same
flag works from a checkout and from any directory after `pip install`.
"""

from __future__ import annotations

import ast
import os
import pathlib

from heartlang_jax import errors

PACKAGE_DIR = pathlib.Path(__file__).parent


class ConfigFileError(errors.HeartLangError, ValueError):
    """A `--config` path that names no config file."""


def shipped_config_files() -> list[pathlib.Path]:
    """The config files of the package: those defining `get_config` (`typed`, `schema` and the
    shared blocks beside them are the code that reads them)."""
    return sorted(p for p in PACKAGE_DIR.glob("*.py") if _defines_get_config(p))


def _defines_get_config(path: pathlib.Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == "get_config" for node in tree.body)


def resolve_config_path(argument: str) -> str:
    """`configs/x.py[:variant]` -> an existing file path (with the variant kept).

    A path that exists as given wins; otherwise a path under `configs/` is looked up in the
    installed package. Anything else is a one-line ConfigFileError naming both places.
    """
    path, sep, variant = argument.partition(":")
    if os.path.isfile(path):
        return argument
    name = pathlib.PurePath(path)
    if name.parts[:1] == ("configs",):
        candidates = [PACKAGE_DIR / name.relative_to("configs")]
    elif len(name.parts) == 1:  # a bare file name
        candidates = [PACKAGE_DIR / name.name]
    else:  # a path with its own directory is that file or nothing, never a shipped one of that name
        folder = name.parent
        why = f"directory {folder} does not exist" if not os.path.isdir(folder) else f"no file {name.name} in {folder}"
        raise ConfigFileError(f"--config={argument}: {why}")
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".py":
            return os.fspath(candidate) + sep + variant
    shipped = ", ".join(f"configs/{p.name}" for p in shipped_config_files())
    raise ConfigFileError(f"--config={argument}: no such config file here or in the package; shipped: {shipped}")
