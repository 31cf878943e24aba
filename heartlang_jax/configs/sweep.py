"""The downstream grid of paper Tables 1-2: tasks x label fractions x modes x seeds x {pretrained, random}.

    python -m heartlang_jax.main --config=configs/sweep.py --workdir=runs/sweep \
        --config.init_workdir=runs/pretrain_base

Each cell is one fine-tuning run in `<workdir>/cells/<name>/`; finished cells are skipped on a
rerun. `finetune` is the fine-tuning config every cell starts from; the sweep sets its task, mode,
label fraction, seed, initialization and data.
"""

import ml_collections

from heartlang_jax.configs import common, finetune

# Set per cell by the sweep, so they are not fields of the `finetune` sub-config.
PER_CELL_FIELDS = ("stage", "data", "task", "mode", "label_fraction", "seed", "init_workdir")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Which stage main.py runs.
    config.stage = "sweep"
    config.data = common.data_config()
    # Workdir of the finished pre-training run the "pretrained" cells start from. Random-init
    # cells use the same encoder architecture (read from that run's config), randomly initialized.
    config.init_workdir = ""
    # Tasks (columns of the table); "all": every task of the dataset (PTB-XL's superdiagnostic,
    # subdiagnostic, form and rhythm; a CSV's classes).
    config.tasks = ("all",)
    # Seeded random fractions of each task's labelled training records.
    config.label_fractions = (0.01, 0.1, 1.0)
    # "linear" (paper Table 1) and/or "full" (Table 2).
    config.modes = ("linear", "full")
    # One run per seed (initialization of the head, label subset, shuffling); mean +- std over them.
    config.seeds = (0, 1, 2)
    # "pretrained" (from init_workdir) and/or "random" (the paper's "Random Init" baseline).
    config.inits = ("pretrained", "random")
    # Keep each finished cell's last checkpoint (one Base cell with Adam state is ~0.7 GB; the
    # result lives in result.json and metrics.jsonl either way).
    config.keep_cell_checkpoints = False
    # The fine-tuning config of every cell (minus the per-cell fields).
    config.finetune = finetune.get_config(variant)
    if variant == common.RELEASED:
        # What the released scripts run (scripts/finetune/PTBXL/12Leads/*/base_*_linear_prob.sh):
        # split_ratios (0.01 0.1 1), --trainable linear, --seed 0, the pre-trained Base only
        # (add "random" to inits for the baseline; random init here is PyTorch's default init,
        # not the released randomly_initialize_weights' U(-0.1, 0.1)).
        config.data.builder_config = common.RELEASED_BUILDER_CONFIG
        config.label_fractions = (0.01, 0.1, 1.0)
        config.modes = ("linear",)
        config.seeds = (0,)
        config.inits = ("pretrained",)
    for name in PER_CELL_FIELDS:
        del config.finetune[name]
    return config
