"""HeartLang in JAX: ECG heartbeats as words, rhythms as sentences.

Stages: `tokenizer` (QRS detection, ECG sentences) -> `tfds_ptbxl` (the dataset) ->
`stages.vqhbr` (the vocabulary) -> `stages.pretrain` (masked sentence modelling) ->
`stages.finetune` (linear probing / full fine-tuning, macro AUC).

`heartlang_jax.load(run_folder)` returns a trained model ready for raw ECGs (see `inference`);
it imports JAX on first use, so `import heartlang_jax` stays light.
"""

__version__ = "0.1.0"

__all__ = ["load"]


def __getattr__(name: str):
    if name == "load":
        from heartlang_jax.inference.model import load

        return load
    raise AttributeError(f"module 'heartlang_jax' has no attribute {name!r}")
