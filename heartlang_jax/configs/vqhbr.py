"""VQ-HBR (the ECG vocabulary) with the released code's sizes; `:tiny` for tests and CPU.

    python -m heartlang_jax.main --config=configs/vqhbr.py --workdir=runs/vqhbr
    python -m heartlang_jax.main --config=configs/vqhbr.py:released --workdir=runs/vqhbr_released

The default keeps the paper's choices where it makes one (RoPE, padding masked out of attention,
the multi-lead detector) at the released sizes. `:released` is the released run
(scripts/vqhbr/MIMIC-IV.sh) on this config's dataset: XQRS on lead I, learned positions + CLS,
padding attended, its optimizer, schedule and global batch.
"""

import ml_collections

from heartlang_jax.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Which stage main.py runs.
    config.stage = "vqhbr"
    config.data = common.data_config()

    common.train_examples_config(config)
    model = ml_collections.ConfigDict()
    # Encoder ECGFormer (released: 4 layers, D=768, MLP 2048, 2 heads of the backbone's default
    # dim_head=64, so an attention width of 128).
    model.encoder = common.encoder_config("small")
    model.encoder.update(common.RELEASED_SIZES["vqhbr_encoder"])
    # Decoder Transformer fed the l2-normalized codes (released: 2 layers, 2 heads of 64).
    model.decoder = common.encoder_config("small")
    model.decoder.update(common.RELEASED_SIZES["vqhbr_decoder"])
    # Vocabulary size K.
    model.num_codes = 8192
    # Code dimension d.
    model.code_dim = 128
    # EMA decay of the codebook.
    model.decay = 0.99
    # Spherical k-means iterations initializing the codebook on the first batch.
    model.kmeans_iters = 10
    # Restart a code no word chose for this many consecutive steps; 0 = never, as released.
    model.dead_code_patience = 0
    # Codebook/commitment terms over the code dimension: "mean" as the released code's
    # F.mse_loss (utils/norm_ema_quantizer.py), "sum" as the paper's squared l2 norm, code_dim
    # times stronger (128x at d=128); see benchmarks/RESULTS.md for what it does to the tiny run.
    model.commitment_weighting = "mean"
    config.model = model

    # Released: AdamW (0.9, 0.99), weight decay 1e-4, lr 5e-5 -> 1e-5, 100 epochs, 10 warm-up
    # (it neither clips nor uses batch 64 globally: 64 per GPU on 8 GPUs; see `:released`).
    config.optimizer = common.optimizer_config(
        learning_rate=5e-5, end_learning_rate=1e-5, b1=0.9, b2=0.99, weight_decay=1e-4, clip=3.0
    )
    common.loop_config(config, epochs=100, warmup_epochs=10, batch=64)
    common.length_bucket_config(config)

    if variant == "tiny":
        for part in (model.encoder, model.decoder):
            part.update(common.PAPER_SIZES["tiny"])
        model.decoder.num_layers = 1
        model.num_codes = 256
        model.code_dim = 32
        # A short, fast run whose encoder drifts faster than the 0.99 EMA follows: without restarts
        # 75% of the codes are in use on validation after 220 steps with the "mean" weighting (22%
        # with "sum"; benchmarks/commitment_weighting.py). Restarts keep nearly all in use.
        model.dead_code_patience = 10
        config.optimizer.learning_rate = 2e-3
        config.optimizer.end_learning_rate = 1e-4
        config.batch_size = 32
        # 30 epochs reach 0.350 of the predict-zeros MSE on the bundled sample; 40 leave margin.
        config.num_epochs = 40
        config.warmup_epochs = 2
        config.log_every_steps = 20
        config.eval_every_steps = 0
        config.checkpoint_every_steps = 0
        # One compiled step on CPU: no length buckets at tiny size.
        config.length_bucket_step = 0
    elif variant == common.RELEASED:
        # scripts/vqhbr/MIMIC-IV.sh and run_vqhbr_training.py's defaults. The released run trained
        # on MIMIC-IV-ECG (set data.dataset=mimic_iv_ecg for that); on PTB-XL the training folds
        # alone keep the downstream test unseen, as MIMIC-IV is.
        config.data.builder_config = common.RELEASED_BUILDER_CONFIG
        model.encoder = common.released_encoder("vqhbr_encoder", common.RELEASED_DROPOUT["vqhbr"])
        model.decoder = common.released_encoder("vqhbr_decoder", common.RELEASED_DROPOUT["vqhbr"])
        # --codebook_n_emd 8192 --codebook_emd_dim 128 --quantize_kmeans_init, --ema_decay 0.99
        # (default); no restarts and F.mse_loss weighting as above.
        # --opt adamw --opt_betas 0.9 0.99 --weight_decay 1e-4 --lr 5e-5 --min_lr 1e-5, no
        # --clip_grad (default None: no clipping).
        config.optimizer = common.optimizer_config(
            learning_rate=5e-5, end_learning_rate=1e-5, b1=0.9, b2=0.99, weight_decay=1e-4, clip=0.0
        )
        # --epochs 100 --warmup_epochs 10; --batch_size 64 per process x --world_size 8 = 512.
        common.loop_config(config, epochs=100, warmup_epochs=10, batch=512)
        # The released model attends padding words: cutting them off would change its sentences.
        config.length_bucket_step = 0
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of configs/vqhbr.py; known: 'tiny', 'released'")
    if variant != "tiny":
        common.large_dataset_intervals(config)
    return config
