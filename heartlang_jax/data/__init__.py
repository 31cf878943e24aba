"""Datasets as training input: grain pipelines over the TFDS builders; the bundled PTB-XL sample (ptbxl_mini/)."""

import pathlib


def bundled_sample_dir() -> pathlib.Path:
    """The first 500 PTB-XL records (100 Hz) shipped with the package, CC BY 4.0."""
    return pathlib.Path(__file__).parent / "ptbxl_mini"
