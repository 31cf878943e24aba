"""HeartLang-Base pre-training (paper Table 3); `:tiny` keeps its structure at CPU size.

    python -m heartlang_jax.main --config=configs/pretrain_base.py --workdir=runs/pretrain_base \
        --config.vqhbr_workdir=runs/vqhbr

`:released` is the released code's Base and run (scripts/pretrain/MIMIC-IV.sh): 12 x 768, 8 heads
of 64, MLP 1024, learned positions + CLS, dropout 0.1, 200 epochs, global batch 512; give it a
`configs/vqhbr.py:released` vocabulary.
"""

from heartlang_jax.configs import pretrain_common


def get_config(variant: str = ""):
    return pretrain_common.get_pretrain_config("base", variant)
