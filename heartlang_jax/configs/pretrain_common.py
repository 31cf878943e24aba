"""Masked ECG-sentence pre-training: what the Small, Base and Large configs share (paper §2.4, Table 3)."""

import ml_collections

from heartlang_jax.configs import common


def get_pretrain_config(size: str, variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Which stage main.py runs.
    config.stage = "pretrain"
    config.data = common.data_config()
    common.train_examples_config(config)
    # Workdir of the finished VQ-HBR run whose codebook indices are the targets (required).
    config.vqhbr_workdir = ""

    model = ml_collections.ConfigDict()
    # The ECGFormer being pre-trained (paper Table 3 sizes).
    model.encoder = common.encoder_config(size)
    # The released code pre-trains with dropout 0.1.
    model.encoder.dropout_rate = 0.1
    # Fraction of each sentence's real words replaced by the mask token.
    model.mask_ratio = 0.5
    config.model = model

    # Paper: AdamW (0.9, 0.98), weight decay 0.05, lr 5e-4 cosine to 1e-5, clip 3.0.
    config.optimizer = common.optimizer_config(
        learning_rate=5e-4, end_learning_rate=1e-5, b1=0.9, b2=0.98, weight_decay=0.05, clip=3.0
    )
    # Paper: 100 epochs, 20 warm-up, global batch 256 (the same schedule on any device count).
    common.loop_config(config, epochs=100, warmup_epochs=20, batch=256)
    common.length_bucket_config(config)

    if variant == "tiny":
        model.encoder.update(common.PAPER_SIZES["tiny"])
        model.encoder.dropout_rate = 0.0
        config.optimizer.learning_rate = 1e-3
        config.batch_size = 32
        config.num_epochs = 20
        config.warmup_epochs = 2
        config.log_every_steps = 20
        # One compiled step on CPU: no length buckets at tiny size.
        config.length_bucket_step = 0
    elif variant == common.RELEASED:
        if size != "base":
            raise ValueError(
                "the released code pre-trains one size, HeartLang-Base (modeling_pretrain.HeartLang): "
                "use configs/pretrain_base.py:released"
            )
        # scripts/pretrain/MIMIC-IV.sh and run_heartlang_pretraining.py's defaults. The released
        # run pre-trained on MIMIC-IV-ECG (set data.dataset=mimic_iv_ecg for that); on PTB-XL the
        # training folds alone keep the downstream test unseen, as MIMIC-IV is.
        config.data.builder_config = common.RELEASED_BUILDER_CONFIG
        # 12 layers, 8 heads of 64, MLP 1024; dropout 0.1 on embeddings, attention weights and
        # block outputs (modeling_pretrain.get_model_default_params).
        model.encoder = common.released_encoder("base", common.RELEASED_DROPOUT["base"])
        # engine_for_pretraining.random_masking(samples, mask_ratio=0.5).
        model.mask_ratio = 0.5
        # --opt_betas 0.9 0.98 --opt_eps 1e-8 --lr 5e-4 --clip_grad 3.0, --weight_decay 0.05 and
        # --min_lr 1e-5 by default.
        config.optimizer = common.optimizer_config(
            learning_rate=5e-4, end_learning_rate=1e-5, b1=0.9, b2=0.98, weight_decay=0.05, clip=3.0
        )
        # --epochs 200 --warmup_epochs 5; --batch_size 64 per process x --world_size 8 = 512.
        common.loop_config(config, epochs=200, warmup_epochs=5, batch=512)
        # The released model attends padding words: cutting them off would change its sentences.
        config.length_bucket_step = 0
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of the pre-training configs; known: 'tiny', 'released'")
    if variant != "tiny":
        common.large_dataset_intervals(config)
    return config
