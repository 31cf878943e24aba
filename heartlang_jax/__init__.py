"""HeartLang in JAX: ECG heartbeats as words, rhythms as sentences.

Stages: `tokenizer` (QRS detection, ECG sentences) -> `tfds_ptbxl` (the dataset) ->
`stages.vqhbr` (the vocabulary) -> `stages.pretrain` (masked sentence modelling) ->
`stages.finetune` (linear probing / full fine-tuning, macro AUC).

`heartlang_jax.load(run_folder)` returns a trained model ready for raw ECGs (see `inference`);
`heartlang_jax.load_released()` the authors' released weights, converted once and cached
(`inference.released`). Both import JAX on first use, so `import heartlang_jax` stays light.
"""

__version__ = "0.1.0"

__all__ = ["load", "load_released"]


def __getattr__(name: str):
    if name == "load":
        from heartlang_jax.inference.model import load

        return load
    if name == "load_released":
        from heartlang_jax.inference.released import load_released

        return load_released
    raise AttributeError(f"module 'heartlang_jax' has no attribute {name!r}")
