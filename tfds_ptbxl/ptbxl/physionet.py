"""Checksummed, resumable download of PTB-XL from PhysioNet's per-file tree.

PhysioNet publishes `SHA256SUMS.txt` beside the files, so every file is verified against the
dataset's own checksum list. Files are written under a temporary name and renamed once verified,
so an interrupted download never leaves a half-written file that looks complete; a rerun skips
what is already there and verified.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import pathlib
import urllib.parse
import urllib.request
from collections.abc import Iterable

from heartlang_jax import atomic_file, errors
from tfds_ptbxl.ptbxl import metadata as ptbxl

CHECKSUM_FILE = "SHA256SUMS.txt"
_CHUNK = 1 << 20


class DownloadError(errors.HeartLangError, RuntimeError):
    """A file could not be fetched or failed its checksum; names the file and the URL."""


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, dest: pathlib.Path, expected_sha256: str | None, timeout_s: float) -> None:
    if dest.is_file() and (expected_sha256 is None or _sha256(dest) == expected_sha256):
        return
    digest = hashlib.sha256()
    try:
        # Renamed onto `dest` only when complete and verified: a failure raises inside the block.
        with urllib.request.urlopen(url, timeout=timeout_s) as response, atomic_file.atomic_open(dest) as out:
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                digest.update(block)
            if expected_sha256 is not None and (actual := digest.hexdigest()) != expected_sha256:
                raise DownloadError(f"checksum mismatch for {url}: expected {expected_sha256}, got {actual}")
    except OSError as e:
        raise DownloadError(f"could not download {url} to {dest}: {e}") from e


def parse_checksums(path: pathlib.Path) -> dict[str, str]:
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = digest
    return sums


def download_ptbxl(
    dest: str | os.PathLike,
    *,
    url: str = ptbxl.DOWNLOAD_URL,
    sampling_rate: int = 100,
    max_workers: int = 16,
    timeout_s: float = 60.0,
) -> pathlib.Path:
    """Downloads the metadata and the records of one sampling rate into `dest`, in PTB-XL layout."""
    dest = pathlib.Path(dest)
    base = url if url.endswith("/") else url + "/"
    _fetch(urllib.parse.urljoin(base, CHECKSUM_FILE), dest / CHECKSUM_FILE, None, timeout_s)
    sums = parse_checksums(dest / CHECKSUM_FILE)

    def expected(name: str) -> str:
        if name not in sums:
            raise DownloadError(f"{name} is not listed in {base}{CHECKSUM_FILE}; is {base} PTB-XL?")
        return sums[name]

    for name in (*ptbxl.METADATA_FILES, "LICENSE.txt"):
        _fetch(urllib.parse.urljoin(base, name), dest / name, expected(name), timeout_s)

    rows = ptbxl.read_database(dest)
    names = [f"{row.filename(sampling_rate)}{ext}" for row in rows for ext in (".hea", ".dat")]
    logging.info("Downloading %d PTB-XL files from %s to %s", len(names), base, dest)
    _fetch_all(base, dest, names, expected, max_workers, timeout_s)
    return ptbxl.check_layout(dest, sampling_rate)


def _fetch_all(base, dest, names: Iterable[str], expected, max_workers, timeout_s) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
        futures = [pool.submit(_fetch, urllib.parse.urljoin(base, n), dest / n, expected(n), timeout_s) for n in names]
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            future.result()
            if done % 2000 == 0:
                logging.info("Downloaded %d / %d files", done, len(futures))
