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
# The released tokenization (QRSTokenizer.py): XQRS on lead I of the 12 leads at 100 Hz.
RELEASED_BUILDER_CONFIG = "leads12_xqrs"


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
    # leads1; mimic_iv_ecg: leads12, leads12_xqrs.
    data.builder_config = "leads12"
    # Processes used to tokenize records while building (0 = all cores).
    data.num_workers = 0
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
