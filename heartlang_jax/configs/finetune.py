"""Downstream fine-tuning on one PTB-XL task (paper §3): linear probing or full fine-tuning.

    python -m heartlang_jax.main --config=configs/finetune.py --workdir=runs/ft_rhythm \
        --config.init_workdir=runs/pretrain_base \
        --config.task=rhythm --config.mode=full --config.label_fraction=0.1

`:tiny` is the CPU-sized variant for tests and the demo. Both modes' optimizers live in the
config (`optimizer.linear`, `optimizer.full`), so `--config.mode` alone switches between them.
`:released` is the linear probing of the released scripts (scripts/finetune/PTBXL/12Leads/*/
base_*_linear_prob.sh) on a released-architecture Base: lr 5e-3, weight decay 0.05, batch 256,
100 epochs, 10 warm-up.
"""

import ml_collections

from heartlang_jax.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Which stage main.py runs.
    config.stage = "finetune"
    config.data = common.data_config()
    # PTB-XL task: superdiagnostic, subdiagnostic, form or rhythm; "classes" for data.dataset="csv";
    # "default": the dataset's first (superdiagnostic on PTB-XL, classes on a CSV).
    config.task = "default"
    # "linear" (frozen encoder, only a new linear head trains) or "full" (everything trains).
    config.mode = "linear"
    # Seeded random fraction of the labelled training records used (paper: 0.01, 0.1, 1.0).
    config.label_fraction = 1.0
    # Workdir of a finished pre-training run to initialize the encoder from; "" = random init.
    config.init_workdir = ""
    # Encoder of a randomly initialized run. With init_workdir set, the architecture is the
    # pre-training run's own and only the dropout rates here apply.
    config.encoder = common.encoder_config("small")

    optimizer = ml_collections.ConfigDict()
    # Linear probing trains only a [D, C] head on fixed features: a high lr converges in few
    # epochs, and weight decay is kept small (the head is the only thing that can overfit).
    optimizer.linear = common.optimizer_config(
        learning_rate=1e-3, end_learning_rate=1e-5, b1=0.9, b2=0.999, weight_decay=1e-4, clip=0.0
    )
    # Full fine-tuning: BEiT/LaBraM-style recipe the released code follows: AdamW (0.9, 0.999),
    # lr 5e-4 with cosine decay, weight decay 0.05, layer-wise lr decay 0.9.
    optimizer.full = common.optimizer_config(
        learning_rate=5e-4, end_learning_rate=1e-6, b1=0.9, b2=0.999, weight_decay=0.05, clip=3.0
    )
    # Learning-rate factor per layer below the head: head 1, last block 0.9, ..., embeddings
    # 0.9^(num_layers + 1); 1.0 disables.
    optimizer.full.layer_decay = 0.9
    config.optimizer = optimizer
    model = ml_collections.ConfigDict()
    # Weight of each class's positive term in the BCE: "none" (plain mean BCE), "balanced"
    # (n_negative / n_positive per class over the training examples; 1 for a class without a
    # positive) or comma-separated floats, one per class ("1,4.5,2").
    model.pos_weight = "none"
    config.model = model

    # 50 epochs with 5 warm-up; validation + test macro AUC are computed every epoch and the
    # epoch with the best validation AUC is reported.
    common.loop_config(config, epochs=50, warmup_epochs=5, batch=64)
    # Fine-tuning runs are short and a Base checkpoint (with Adam state) is large, so save every
    # 1000 steps (and at the end, and on SIGTERM) rather than every epoch.
    config.checkpoint_every_steps = 1000

    if variant == "tiny":
        config.encoder.update(common.PAPER_SIZES["tiny"])
        # The bundled sample has ~350 training records: few steps per epoch, so a higher lr.
        optimizer.linear.learning_rate = 1e-2
        optimizer.full.learning_rate = 1e-3
        config.batch_size = 32
        config.num_epochs = 20
        config.warmup_epochs = 1
        config.log_every_steps = 20
        config.checkpoint_every_steps = 100
    elif variant == common.RELEASED:
        # scripts/finetune/PTBXL/12Leads/{super,sub,form,rhythm}/base_*_linear_prob.sh (the same
        # flags for CPSC2018 and CSN) and run_class_finetuning.py's defaults.
        config.data.builder_config = common.RELEASED_BUILDER_CONFIG
        # --model HeartLang_finetune_base: the released Base, dropout 0.1 (a pre-trained run's own
        # architecture wins, see `encoder` above).
        config.encoder = common.released_encoder("base", common.RELEASED_DROPOUT["base"])
        config.mode = "linear"  # --trainable linear
        # --lr 5e-3 --weight_decay 0.05; --min_lr 1e-5 by default; no --opt_betas (timm AdamW's
        # 0.9, 0.999) and no --clip_grad. --layer_decay 0.9 scales the head by 0.9^0 = 1, as here.
        optimizer.linear = common.optimizer_config(
            learning_rate=5e-3, end_learning_rate=1e-5, b1=0.9, b2=0.999, weight_decay=0.05, clip=0.0
        )
        # The released scripts run no full fine-tuning: optimizer.full stays this project's.
        # --epochs 100 --warmup_epochs 10 --batch_size 256 (one process; lowered to the training
        # records when fewer, see stages/finetune.py).
        common.loop_config(config, epochs=100, warmup_epochs=10, batch=256)
        config.checkpoint_every_steps = 1000
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of configs/finetune.py; known: 'tiny', 'released'")
    return config
