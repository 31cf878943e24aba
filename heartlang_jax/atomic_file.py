"""Writing a file so that no reader ever sees it half-written, on local disks and `gs://` alike.

Every file this project writes outside Orbax (model.json, config.json, results, test scores,
cached targets, embeddings, downloads, dataset build chunks) goes through `atomic_open`: the
bytes go to a temporary name beside the target, which is renamed onto it only once complete.
The rename is atomic on POSIX; on an object store the object appears whole. A write that fails
part-way removes its temporary file and leaves the target as it was; a file-system failure
(disk full, read-only) is one line naming the file (`CheckpointError`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO, Any

from etils import epath

from heartlang_jax.errors import CheckpointError

# Temporary files end with this; tests check that none are left behind.
TEMP_SUFFIX = ".tmp"


def temp_path(path: str | os.PathLike) -> epath.Path:
    """The temporary name `atomic_open` writes `path` under: `<name>.<pid>.tmp` beside it (the
    process id keeps two writers of one file apart)."""
    path = epath.Path(path)
    return path.parent / f"{path.name}.{os.getpid()}{TEMP_SUFFIX}"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yields `path` opened for writing ("wb" or "w") under its temporary name; renames it onto
    `path` when the block ends, or deletes it if the block raised. Creates the parent folder."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'wb' or 'w', got {mode!r}")
    path = epath.Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open(mode) as f:
            yield f
        tmp.replace(path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # disk full, read-only: one line; the old file stays as it was
            raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes `data` (text as UTF-8, or bytes) to `path` through `atomic_open`."""
    if isinstance(data, str):
        data = data.encode()
    with atomic_open(path, "wb") as f:
        f.write(data)
