"""Released PyTorch pre-training step throughput, at the released base shape (issue 12).

Times the authors' own pre-training step, imported from ../shared/reference/heartlang-released
(MIT; nothing copied): `modeling_pretrain.HeartLang` (12 layers, 768, 8 heads of 64, MLP 1024,
vocabulary 8192) trained against per-step targets from `modeling_vqhbr.vqhbr` (K=8192, d=128,
random weights with an initialised unit-norm codebook, as a trained one is), as the released
`engine_for_pretraining.train_one_epoch` runs it each step:

    mask = random_masking(words, 0.5)
    with no_grad, autocast: labels = vqhbr.get_codebook_indices(words)[mask]
    with autocast: loss = CrossEntropy(model(words, mask, lead_ids, time_ids), labels)
    loss.item(); NativeScaler(loss, optimizer, clip_grad=3.0); zero_grad; synchronize; mlm_acc.item()

with AdamW (lr 5e-4, betas 0.9/0.98, eps 1e-8, weight decay 0.05 off biases and norms) as in
scripts/pretrain/MIMIC-IV.sh. Batches are synthetic PTB-XL-shaped sentences (`synthetic.py`, the
same as our benchmark's), already on the device as ours are, so neither side times host transfers.

Precision: `amp` is the released run (`torch.cuda.amp.autocast()`, fp16, with its GradScaler;
on CPU, CUDA autocast is off, so it runs fp32), `fp32` no autocast, `bf16` `torch.autocast(bf16)`.

    PYTHONPATH=../shared/reference/timm_shim /tmp/torch-ref/bin/python benchmarks/released_throughput.py \
        --precision=bf16 --batch=256 --steps=20

The last line is `released samples_per_s=<x> step_ms=<y> precision=<p>`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_RELEASED = REPO.parent / "shared" / "reference" / "heartlang-released"
TIMM_SHIM = REPO.parent / "shared" / "reference" / "timm_shim"
# scripts/pretrain/MIMIC-IV.sh and run_heartlang_pretraining.py defaults
STUBBED = {"matplotlib", "sklearn"}  # empty stand-ins where not installed (figures only)
LR, BETAS, EPS, WEIGHT_DECAY, CLIP_GRAD, MASK_RATIO = 5e-4, (0.9, 0.98), 1e-8, 0.05, 3.0, 0.5


def import_released(released_dir: pathlib.Path):
    if not (released_dir / "modeling_pretrain.py").is_file():
        raise SystemExit(f"no released code at {released_dir} (pass --released_dir)")
    sys.path.insert(0, str(released_dir))
    try:
        import timm.models  # noqa: F401
    except ImportError:
        sys.path.append(str(TIMM_SHIM))
    sys.path.insert(0, str(REPO / "tools"))
    from make_released_fixture import _stub_plotting_modules

    _stub_plotting_modules()
    for name, module in list(sys.modules.items()):  # torch.optim's dynamo hooks call find_spec on them
        if module is not None and getattr(module, "__spec__", "") is None and name.split(".")[0] in STUBBED:
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    import modeling_pretrain
    import modeling_vqhbr

    return modeling_pretrain, modeling_vqhbr


def released_optimizer_and_scaler(model, torch):
    """The released `create_optimizer` and `NativeScalerWithGradNormCount` where they import (they
    need timm, h5py, tensorboardX, pyhealth, ...); otherwise the same AdamW groups and GradScaler."""
    try:
        from utils.optim_factory import create_optimizer
        from utils.utils import NativeScalerWithGradNormCount

        args = argparse.Namespace(
            opt="adamw", lr=LR, weight_decay=WEIGHT_DECAY, opt_eps=EPS, opt_betas=BETAS, momentum=0.9
        )
        with contextlib.redirect_stdout(sys.stderr):
            optimizer = create_optimizer(args, model)
        return optimizer, NativeScalerWithGradNormCount(), "released create_optimizer + NativeScaler"
    except ImportError as error:
        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            (no_decay if param.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(param)
        groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
        grad_scaler = torch.amp.GradScaler("cuda", enabled=torch.cuda.is_available())

        def scaler(loss, optimizer, clip_grad, parameters):
            grad_scaler.scale(loss).backward()
            grad_scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
            grad_scaler.step(optimizer)
            grad_scaler.update()
            return norm

        return optimizer, scaler, f"equivalent AdamW groups + GradScaler (released utils: {error})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", choices=("amp", "fp32", "bf16"), default="amp")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps after two warm-up steps")
    parser.add_argument("--released_dir", type=pathlib.Path, default=DEFAULT_RELEASED)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(HERE))
    from synthetic import synthetic_batch

    if args.threads:
        torch.set_num_threads(args.threads)
    modeling_pretrain, modeling_vqhbr = import_released(args.released_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(sys.stderr):
        cwd = os.getcwd()
        os.chdir(scratch)  # the released VQHBR makes a figs/ folder in the working directory
        try:
            vqhbr = modeling_vqhbr.vqhbr(n_code=8192, code_dim=128)
            model = modeling_pretrain.HeartLang(vocab_size=8192)
        finally:
            os.chdir(cwd)
    with torch.no_grad():  # a trained tokenizer's codebook: unit-norm and initialised (no k-means on use)
        embedding = vqhbr.quantize.embedding
        embedding.weight.copy_(torch.nn.functional.normalize(torch.randn_like(embedding.weight), dim=-1))
        embedding.initted.fill_(1.0)
    vqhbr = vqhbr.to(device).eval()
    model = model.to(device).train()
    optimizer, loss_scaler, optimizer_source = released_optimizer_and_scaler(model, torch)
    loss_fn = torch.nn.CrossEntropyLoss()

    if args.precision == "amp":
        autocast = torch.cuda.amp.autocast  # the released engine's own context (fp16 on CUDA, off on CPU)
    elif args.precision == "bf16":

        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    max_len = model.pos_embed.shape[1] - 1
    batches = []
    for seed in range(2):
        data = synthetic_batch(args.batch, max_len, 8192, seed)
        batches.append(
            (
                torch.from_numpy(data["words"]).to(device),
                torch.from_numpy(data["lead_ids"].astype(np.int64)).to(device),
                torch.from_numpy(data["time_ids"].astype(np.int64)).to(device),
            )
        )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(samples, in_chan_matrix, in_time_matrix) -> float:
        bool_masked_pos = modeling_pretrain.random_masking(samples, mask_ratio=MASK_RATIO)
        with torch.no_grad(), autocast():
            input_ids = vqhbr.get_codebook_indices(samples)  # as the engine calls it: words only
        labels = input_ids[bool_masked_pos]
        with autocast():
            x_rec = model(
                samples,
                mask_bool_matrix=bool_masked_pos,
                in_chan_matrix=in_chan_matrix,
                in_time_matrix=in_time_matrix,
                return_qrs_tokens=False,
                return_all_tokens=False,
            )
            loss = loss_fn(x_rec, labels)
        loss_value = loss.item()
        loss_scaler(loss, optimizer, clip_grad=CLIP_GRAD, parameters=model.parameters())
        optimizer.zero_grad()
        sync()
        (x_rec.max(-1)[1] == labels).float().mean().item()
        return loss_value

    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"released device={device.type} ({name}) torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"released optimizer={optimizer_source}")
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"released max_len={max_len} params={params} vqhbr_params={sum(p.numel() for p in vqhbr.parameters())}")
    start = time.perf_counter()
    for warm in range(2):
        loss = step(*batches[warm])
    print(f"released first_two_steps_s={time.perf_counter() - start:.1f}")
    start = time.perf_counter()
    for i in range(args.steps):
        loss = step(*batches[i % 2])
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    if not np.isfinite(loss):
        raise SystemExit("the released step produced a non-finite loss")
    print(f"released samples_per_s={args.batch / seconds:.3f} step_ms={seconds * 1e3:.1f} precision={args.precision}")


if __name__ == "__main__":
    main()
