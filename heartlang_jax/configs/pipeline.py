"""Everything in one command and one workdir: dataset, VQ-HBR, pre-training, downstream sweep.

    python -m heartlang_jax.main --config=configs/pipeline.py --workdir=runs/heartlang \
        --config.data.manual_dirs.ptbxl=/path/to/ptb-xl-1.0.3
    python -m heartlang_jax.main --config=configs/pipeline.py:demo --workdir=runs/demo

Default: the paper's sizes (released VQ-HBR, HeartLang-Base, the full grid of Tables 1-2).
`:demo`: tiny models on the bundled 500-record sample, linear probing of two tasks, pre-trained vs
random init, three seeds; about 6 minutes on 2 CPU cores. Set `data` here: every stage reads the same dataset.
`:released`: the released code's recipe end to end (README, "Paper, released code and this
project"): XQRS on lead I, `configs/vqhbr.py:released`, `configs/pretrain_base.py:released`, and
the linear probing of its scripts (`configs/sweep.py:released`).
"""

import ml_collections

from heartlang_jax.configs import common, pretrain_common, sweep, vqhbr


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    # The stage configs' variant for each variant of this file.
    stage_variants = {"": "", "demo": "tiny", common.RELEASED: common.RELEASED}
    if variant not in stage_variants:
        raise ValueError(f"unknown variant {variant!r} of configs/pipeline.py; known: 'demo', 'released'")
    demo = variant == "demo"
    size = stage_variants[variant]
    config = ml_collections.ConfigDict()
    # Which stage main.py runs.
    config.stage = "pipeline"
    # The dataset of every stage, built once into <workdir>/tfds (unless data.tfds_dir is set);
    # with data.mixture, VQ-HBR and pre-training train on the mixture and the sweep on data.dataset.
    config.data = common.data_config()
    if variant == common.RELEASED:
        # The released tokenization: XQRS on lead I (QRSTokenizer.py).
        config.data.builder_config = common.RELEASED_BUILDER_CONFIG
    # Stage configs; their `data`, `vqhbr_workdir` and `init_workdir` are set by the pipeline.
    config.vqhbr = vqhbr.get_config(size)
    config.pretrain = pretrain_common.get_pretrain_config("base", size)
    config.sweep = sweep.get_config(size)
    for stage in (config.vqhbr, config.pretrain, config.sweep):
        del stage["data"]
    del config.pretrain["vqhbr_workdir"]
    del config.sweep["init_workdir"]

    if demo:
        # Linear probing at 100% of the labels on superdiagnostic (all 5 classes occur in every
        # split of the sample) and rhythm (mostly sinus rhythm; classes absent from the small
        # validation/test splits are left out of the macro AUC); pre-trained vs random init.
        config.sweep.tasks = ("superdiagnostic", "rhythm")
        config.sweep.label_fractions = (1.0,)
        config.sweep.modes = ("linear",)
        config.sweep.seeds = (0, 1, 2)
    return config
