"""Device memory figures for the benchmarks: the allocator's peak (GPU/TPU; "n/a" on CPU, whose
client keeps no statistics) and XLA's own account of one compiled step."""

from __future__ import annotations

import jax


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f}GiB"


def peak_memory() -> str:
    """Peak bytes the first local device's allocator has held since the process started, or "n/a"."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return "n/a"
    limit = stats.get("bytes_limit")
    return gib(stats["peak_bytes_in_use"]) + (f" of {gib(limit)}" if limit else "")


def compiled_memory(compiled) -> str:
    """What XLA reserved for one call of a compiled step: arguments + outputs + temporaries - aliased
    (donated) buffers; "n/a" where the backend reports nothing."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        analysis = None
    if analysis is None:
        return "n/a"
    total = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )
    return f"{gib(total)} (temp {gib(analysis.temp_size_in_bytes)})"
