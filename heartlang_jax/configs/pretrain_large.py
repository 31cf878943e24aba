"""HeartLang-Large pre-training (paper Table 3); `:tiny` keeps its structure at CPU size.

    python -m heartlang_jax.main --config=configs/pretrain_large.py --workdir=runs/pretrain_large \
        --config.vqhbr_workdir=runs/vqhbr
"""

from heartlang_jax.configs import pretrain_common


def get_config(variant: str = ""):
    return pretrain_common.get_pretrain_config("large", variant)
