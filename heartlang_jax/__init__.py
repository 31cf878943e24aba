"""HeartLang in JAX: ECG heartbeats as words, rhythms as sentences.

Stages: `tokenizer` (QRS detection, ECG sentences) -> `tfds_ptbxl` (the dataset) ->
`stages.vqhbr` (the vocabulary) -> `stages.pretrain` (masked sentence modelling) ->
`stages.finetune` (linear probing / full fine-tuning, macro AUC).
"""

__version__ = "0.1.0"
