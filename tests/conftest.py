"""Shared fixtures. The bundled sample is built once per test session (about 20 s on 2 cores)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bundled_builder(tmp_path_factory):
    """The `ptbxl/leads12` dataset built from the 500-record sample shipped with the package."""
    from heartlang_jax import input_pipeline

    return input_pipeline.prepare_dataset(tmp_path_factory.mktemp("tfds"), ptbxl_dir="bundled", num_workers=2)


@pytest.fixture(scope="session")
def bundled_sources(bundled_builder):
    return bundled_builder.as_data_source()
