"""VQ-HBR (the ECG vocabulary) with the released code's sizes; `:tiny` for tests and CPU.

    python -m heartlang_jax.main --config=configs/vqhbr.py --workdir=runs/vqhbr
"""

import ml_collections

from heartlang_jax.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Which stage main.py runs.
    config.stage = "vqhbr"
    config.data = common.data_config()

    # Splits the model trains on. ("train",) keeps validation and test unseen (no leakage into
    # the downstream scores); the paper pre-trained on all of PTB-XL: ("train", "validation", "test").
    config.train_splits = ("train",)
    model = ml_collections.ConfigDict()
    # Encoder ECGFormer (released: 4 layers, 2 heads of 384, D=768, MLP 2048).
    model.encoder = common.encoder_config("small")
    model.encoder.update(num_layers=4, num_heads=2, head_dim=384)
    # Decoder Transformer fed the l2-normalized codes (released: 2 layers, 2 heads).
    model.decoder = common.encoder_config("small")
    model.decoder.update(num_layers=2, num_heads=2, head_dim=384)
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
    config.model = model

    # Released: AdamW (0.9, 0.99), weight decay 1e-4, lr 5e-5 -> 1e-5, 100 epochs, 10 warm-up.
    config.optimizer = common.optimizer_config(
        learning_rate=5e-5, end_learning_rate=1e-5, b1=0.9, b2=0.99, weight_decay=1e-4, clip=3.0
    )
    common.loop_config(config, epochs=100, warmup_epochs=10, batch=64)

    if variant == "tiny":
        for part in (model.encoder, model.decoder):
            part.update(common.PAPER_SIZES["tiny"])
        model.decoder.num_layers = 1
        model.num_codes = 256
        model.code_dim = 32
        # A short, fast run: the encoder drifts faster than the 0.99 EMA follows and ~90% of the
        # codes die within 20 steps without restarts (8% of the codebook in use on validation).
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
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of configs/vqhbr.py; known: 'tiny'")
    return config
