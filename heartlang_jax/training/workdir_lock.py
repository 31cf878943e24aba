"""One run per workdir: a lock file naming the process that holds it.

Two runs in one workdir would write the same checkpoint steps and interleave their logs. Every
stage claims its workdir through `checkpointing.claim_workdir`, which takes this lock:
`<workdir>/heartlang.lock` holds {"host", "pid"} of the holder. A lock left by a process that is
no longer alive on this host (a kill -9, an OOM) is taken over with a warning; one held by a live
process, or by a process on another host (whose liveness cannot be seen from here), is refused
naming its host and pid. On many hosts process 0 holds it for all of them and tells the others
whether it got it. The lock is released when the process exits; the same process may claim the
same workdir again (a notebook that runs a stage twice).

A local lock is created exclusively (O_EXCL); on an object store (`gs://`) there is no exclusive
create, so two runs started in the same second can both pass: the lock is a guard against the
common mistake, not a mutex.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from heartlang_jax.errors import CheckpointError

LOCK_FILE = "heartlang.lock"
_held: dict[str, str] = {}  # lock path -> the content this process wrote


class WorkdirLockedError(CheckpointError):
    """Another live process (named) runs in this workdir."""


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _create(path: epath.Path, text: str) -> bool:
    """Writes `text` to `path` if it does not exist yet; False if it does."""
    if "://" in os.fspath(path):
        if path.exists():
            return False
        path.write_text(text)
        return True
    try:
        fd = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def _holder(path: epath.Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and "host" in holder and "pid" in holder else None


def _take(path: epath.Path) -> None:
    """Takes the lock at `path` or raises WorkdirLockedError (this process only)."""
    key = os.fspath(path)
    if key in _held:
        return
    me = _me()
    text = json.dumps(me)
    for _ in range(3):
        try:
            created = _create(path, text)
        except OSError as e:  # EROFS, EACCES, ENOSPC: nothing can be written there
            raise CheckpointError(f"cannot write to the workdir {path.parent}: {e.strerror or e}") from e
        if created:
            _held[key] = text
            return
        holder = _holder(path)
        if holder is not None and holder["host"] == me["host"] and int(holder["pid"]) == me["pid"]:
            _held[key] = path.read_text()  # left by this process (e.g. an earlier claim, released late)
            return
        if holder is not None and (holder["host"] != me["host"] or _alive(int(holder["pid"]))):
            raise WorkdirLockedError(
                f"{path.parent} is in use by process {holder['pid']} on host {holder['host']} (lock file {path}); "
                f"wait for that run to end, or delete {path} if it is no longer running"
            )
        what = "unreadable" if holder is None else f"of process {holder['pid']}, which is no longer running"
        logging.warning("Taking over the stale lock %s (%s)", path, what)
        path.unlink(missing_ok=True)
    raise WorkdirLockedError(f"could not take the lock {path}: another run keeps creating it")


def acquire(workdir: str | os.PathLike) -> None:
    """Locks `workdir` for this run until the process exits (process 0 for all hosts)."""
    path = epath.Path(workdir) / LOCK_FILE
    error: WorkdirLockedError | None = None
    if jax.process_index() == 0:
        try:
            _take(path)
        except WorkdirLockedError as e:
            error = e
    if jax.process_count() > 1:
        ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok and error is None:
            error = WorkdirLockedError(f"{workdir} is in use by another run (process 0 could not lock {path})")
    if error is not None:
        raise error


def release(workdir: str | os.PathLike) -> None:
    """Removes this process's lock on `workdir`, if it holds one (also done at exit)."""
    _release(os.fspath(epath.Path(workdir) / LOCK_FILE))


def _release(key: str) -> None:
    text = _held.pop(key, None)
    if text is None:
        return
    path = epath.Path(key)
    try:
        if path.read_text() == text:
            path.unlink(missing_ok=True)
    except Exception:  # already gone, a read-only folder, a file system gone at exit: nothing to undo
        pass


@atexit.register
def _release_all() -> None:
    for key in list(_held):
        _release(key)
