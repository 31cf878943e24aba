"""Pieces shared by the stage configs: the dataset, the ECGFormer sizes, the optimizer."""

import ml_collections

from tfds_ptbxl import catalog

# Paper Table 3 (hidden 768, MLP 2048). Attention inner width is heads x head_dim (Base's 10 heads
# do not divide 768).
PAPER_SIZES = {
    "small": dict(num_layers=6, hidden_dim=768, mlp_dim=2048, num_heads=4, head_dim=64),
    "base": dict(num_layers=12, hidden_dim=768, mlp_dim=2048, num_heads=10, head_dim=64),
    "large": dict(num_layers=24, hidden_dim=768, mlp_dim=2048, num_heads=16, head_dim=64),
    # Small enough for CPU tests and the demo; the same code path as the real sizes.
    "tiny": dict(num_layers=2, hidden_dim=64, mlp_dim=128, num_heads=2, head_dim=32),
}

# The `:released` variants: the authors' PyTorch code (shared/reference/heartlang-released). Every
# released backbone keeps the default dim_head=64 (backbone_vqhbr.VqhbrBackbone,
# modeling_pretrain.ST_ECGFormer).
RELEASED = "released"
RELEASED_SIZES = {
    # modeling_vqhbr.vqhbr: get_model_default_params() (embed_dim 768, mlp_dim 2048), encoder
    # depth 4 / heads 2, decoder depth 2 / heads 2.
    "vqhbr_encoder": dict(num_layers=4, hidden_dim=768, mlp_dim=2048, num_heads=2, head_dim=64),
    "vqhbr_decoder": dict(num_layers=2, hidden_dim=768, mlp_dim=2048, num_heads=2, head_dim=64),
    # modeling_pretrain.HeartLang and modeling_finetune.HeartLang_finetune_base: depth 12,
    # heads 8, mlp_dim 1024 (inner width 512 < hidden 768).
    "base": dict(num_layers=12, hidden_dim=768, mlp_dim=1024, num_heads=8, head_dim=64),
}
# Dropout of the released models (get_model_default_params): VQ-HBR 0.0; the pre-training and
# fine-tuning models 0.1, used alike on embeddings, attention weights and block outputs.
RELEASED_DROPOUT = {"vqhbr": 0.0, "base": 0.1}
# The released preprocessing and tokenization: every dataset's builder config `released` is XQRS
# on lead I of the 12 leads at 100 Hz (QRSTokenizer.py) after that dataset's released band-pass:
# MIMIC-IV-ECG and CSN 0.67-40 Hz, 5th-order Butterworth, filtfilt (mimic_preprocess.py,
# make_csn_datasets.py), PTB-XL and CPSC 2018 none (heartlang_jax/ecg/filters.py, RELEASED_FILTERS).
RELEASED_BUILDER_CONFIG = "released"


def data_config() -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict()
    # The dataset a stage reads, one TFDS builder of tfds_ptbxl (tfds_ptbxl/catalog.py): ptbxl,
    # cpsc2018, csn, mimic_iv_ecg (unlabelled: VQ-HBR and pre-training only). Fine-tuning trains
    # and tests on it; VQ-HBR and pre-training validate on it and record its amplitude scale.
    data.dataset = "ptbxl"
    # Each dataset's folder in its own published layout (the TFDS manual_dir; README "Data"),
    # e.g. --config.data.manual_dirs.csn=/data/ecg-arrhythmia. ptbxl: "bundled" = the 500-record
    # sample in the package, "" = download from PhysioNet. Others: "" = <tfds_dir>/downloads/manual.
    data.manual_dirs = ml_collections.ConfigDict(
        {name: "bundled" if name == "ptbxl" else "" for name in catalog.FOLDER_DATASETS}
    )
    # VQ-HBR and pre-training only: train on several datasets at once, drawn by weight, e.g.
    # --config.data.mixture='("ptbxl:0.25","mimic_iv_ecg:0.75")' (each "dataset:weight"; weights
    # are relative). Each dataset's train_splits are mixed, each standardized with its own
    # amplitude fit; all must share data.builder_config's sentence spec. () = data.dataset alone.
    data.mixture = ()
    # Where the built TFDS datasets live; "" = <workdir>/tfds.
    data.tfds_dir = ""
    # TFDS builder config, the same for every dataset read. ptbxl: leads12 (default),
    # leads12_xqrs, leads1, leads3, leads6, leads12_500hz; cpsc2018, csn: leads12, leads12_xqrs,
    # leads1; mimic_iv_ecg: leads12, leads12_xqrs; every dataset: released (XQRS on lead I after
    # the dataset's released band-pass, if any).
    data.builder_config = "leads12"
    # Processes used to tokenize records while building (0 = all cores).
    data.num_workers = 0
    # A dataset folder lacking records is refused, naming them; True builds from what is there
    # and logs every missing record (the same rule for every dataset).
    data.allow_missing_records = False
    # Your own data (README "Your own data"): with dataset="csv", the CSV listing each record
    # (a path relative to the CSV), its split and its labels; its one task is "classes".
    data.csv = ""
    # Records longer than a window are cut into windows of csv_window_s seconds every
    # csv_stride_s seconds, each a training example of its record; evaluation averages a
    # record's windows. 0 = the sentence's window (10 s); stride 0 = the window (no overlap).
    data.csv_window_s = 0.0
    data.csv_stride_s = 0.0
    # Sampling rate (Hz) of `.npy` records when the CSV has no `fs` column.
    data.csv_fs = 0.0
    return data


def encoder_config(size: str) -> ml_collections.ConfigDict:
    encoder = ml_collections.ConfigDict(dict(PAPER_SIZES[size]))
    # "rope" (paper) or "learned" (released code: learned absolute positions + CLS token).
    encoder.position = "rope"
    # Mask padding words out of attention (False = the released code's behaviour).
    encoder.mask_padding = True
    # Dropout after embeddings, attention and MLP.
    encoder.dropout_rate = 0.0
    # Dropout on attention weights.
    encoder.attention_dropout_rate = 0.0
    # What each layer keeps for the backward pass: "lean" (the QKV projection, attention output,
    # residual after attention and pre-GELU MLP hidden; the rest is recomputed), "none", "dots"
    # or "full". Base at batch 256 in bfloat16: 10.3 GiB saved for +2.5% FLOPs ("none": 25.7 GiB;
    # benchmarks/step_anatomy.py, benchmarks/RESULTS.md).
    encoder.remat_policy = "lean"
    return encoder


def released_encoder(size: str, dropout_rate: float) -> ml_collections.ConfigDict:
    """An encoder block with the released code's architecture: learned absolute positions and a
    CLS token, its block details (no Q/K/V bias, LayerNorm eps 1e-5, PyTorch init), padding
    words attended, and its dropout on attention weights too."""
    encoder = encoder_config("small")
    encoder.update(RELEASED_SIZES[size])
    encoder.position = "learned"
    # The released block: no bias on Q/K/V (to_qkv, bias=False), PyTorch's LayerNorm epsilon,
    # PyTorch's initialisation.
    encoder.qkv_bias = False
    encoder.layer_norm_epsilon = 1e-5
    encoder.released_init = True
    encoder.mask_padding = False
    encoder.dropout_rate = dropout_rate
    encoder.attention_dropout_rate = dropout_rate
    return encoder


def optimizer_config(*, learning_rate, end_learning_rate, b1, b2, weight_decay, clip) -> ml_collections.ConfigDict:
    opt = ml_collections.ConfigDict()
    # Peak learning rate after warm-up.
    opt.learning_rate = learning_rate
    # Learning rate at the end of the cosine decay.
    opt.end_learning_rate = end_learning_rate
    # AdamW betas.
    opt.b1 = b1
    opt.b2 = b2
    # Decoupled weight decay (not applied to biases, norms, embeddings tables and tokens).
    opt.weight_decay = weight_decay
    # Global gradient-norm clipping; 0 disables.
    opt.grad_clip_norm = clip
    return opt


def train_examples_config(config: ml_collections.ConfigDict) -> None:
    """What VQ-HBR and pre-training train on, and how the hosts share it, set in place."""
    # Splits the model trains on. ("train",) keeps validation and test unseen (no leakage into
    # the downstream scores); the paper pre-trained on all of PTB-XL: ("train", "validation", "test").
    config.train_splits = ("train",)
    # Host shards of those examples (heartlang_jax/data/input_pipeline.py, HostShards): each host
    # caches and reads only its own shards. 0 = automatic: 1 (every host caches every example)
    # while their cached columns fit 8 GiB (PTB-XL's training folds: 0.9 GB), else 64, or the
    # largest power of two dividing batch_size. Must divide batch_size and be a multiple of the
    # process count. The batches depend on this number, not on how many hosts share it.
    config.train_shards = 0


def length_bucket_config(config: ml_collections.ConfigDict, step: int = 16, window: int = 16) -> None:
    """VQ-HBR's and pre-training's length buckets (heartlang_jax/packing.py), set in place."""
    # Each global batch holds sentences of similar length and is cut to the smallest multiple of
    # this above its longest sentence (one compiled step per bucket); 0 = every row max_len long.
    # Base at batch 256 on the bundled train split: 90.6% of the computed positions are real
    # words with 16 (56% unbucketed; benchmarks/step_anatomy.py).
    config.length_bucket_step = step
    # Global batches sorted by length together (larger: fuller buckets, less mixing of lengths).
    config.length_bucket_window = window


def loop_config(config: ml_collections.ConfigDict, *, epochs: int, warmup_epochs: int, batch: int) -> None:
    """Fields of every training stage, set in place."""
    # Random seed of initialization, shuffling and masking.
    config.seed = 0
    # Global batch: examples per step over all devices and hosts (must divide by the device count).
    config.batch_size = batch
    # Training length in epochs of the training split (the paper's unit).
    config.num_epochs = epochs
    # Linear warm-up length in epochs.
    config.warmup_epochs = warmup_epochs
    # If > 0, overrides num_epochs with an exact number of steps.
    config.num_train_steps = -1
    # Console/TensorBoard logging interval.
    config.log_every_steps = 50
    # Evaluation interval (and at the end); 0 = once per epoch.
    config.eval_every_steps = 0
    # Checkpoint interval (and at the end, and on SIGTERM); 0 = once per epoch.
    config.checkpoint_every_steps = 0
    # Compute dtype: "bfloat16" on accelerators, "float32" on CPU ("auto" picks by backend).
    config.dtype = "auto"


# VQ-HBR and pre-training at the paper's sizes evaluate and checkpoint by steps, not epochs: full
# PTB-XL has 68 steps an epoch at batch 256 (about 6 s on an H200 at 40% MFU), MIMIC-IV-ECG about
# 2,800. Every 2,000 steps an evaluation costs a few percent of the run whatever the dataset; every
# 1,000 steps a checkpoint (asynchronous) loses at most about 1.5 minutes to a hard kill (SIGTERM
# saves at once). The tiny variants keep once per epoch (0), their epochs being a few steps.
LARGE_EVAL_EVERY_STEPS = 2000
LARGE_CHECKPOINT_EVERY_STEPS = 1000


def large_dataset_intervals(config: ml_collections.ConfigDict) -> None:
    """Sets the step-based evaluation and checkpoint intervals above, in place."""
    config.eval_every_steps = LARGE_EVAL_EVERY_STEPS
    config.checkpoint_every_steps = LARGE_CHECKPOINT_EVERY_STEPS
