"""Runs the authors' released PyTorch HeartLang on real sentences and records what it computes.

The output `.npz` holds random weights of the three released models (VQ-HBR, the pre-training
ST_ECGFormer, the fine-tuning classifier, in their own state-dict names), the input sentences and
the released code's outputs. `benchmarks/released_comparison.compare_with_recorded` converts the
weights and checks our models against those outputs; `tests/test_released_conversion.py` does it
for the committed tiny fixture, `benchmarks/released_check.py` for a file written with
`--released_sizes` (not committed: ~350 MB).

Sentences are real: the first records of the bundled PTB-XL sample (raw mV, as the released
pre-training data, which are band-passed but not standardized), cut by our QRSTokenizer with the
released settings (XQRS on lead I, 100 Hz, 96 samples per word; 12 leads at the released sizes,
leads I-III for the tiny 48-word fixture so that its sentences end in padding).

Needs torch, einops, numpy, scipy and wfdb (not the project's venv), e.g.

    python3 -m venv /tmp/torch-ref && /tmp/torch-ref/bin/pip install torch einops numpy scipy wfdb
    PYTHONPATH=/work/shared/reference/heartlang-released:/work/shared/reference/timm_shim:. \
        /tmp/torch-ref/bin/python tools/make_released_fixture.py --out=tests/fixtures/released/tiny.npz
    PYTHONPATH=... /tmp/torch-ref/bin/python tools/make_released_fixture.py --released_sizes \
        --num_sentences=16 --out=/tmp/released_sizes.npz

`heartlang_jax.ecg.records` and `heartlang_jax.ecg.tokenizer` import without JAX, so this script uses
them directly. matplotlib and scikit-learn, imported by the released modeling_vqhbr.py for its
figures only, are replaced by empty modules when they are not installed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import types

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = REPO / "heartlang_jax" / "data" / "ptbxl_mini"

# Tiny shapes for the committed fixture; the released sizes are the released factories'.
TINY = dict(
    max_len=48, hidden=32, mlp=48, heads=2, head_dim=8, layers=2, num_codes=64, code_dim=8, vocab=64, num_classes=5
)


def _stub_plotting_modules() -> None:
    """modeling_vqhbr imports matplotlib/sklearn for figures we never draw."""
    for name, attrs in {
        "matplotlib": ["pyplot", "colors", "patches", "offsetbox"],
        "matplotlib.pyplot": [],
        "matplotlib.colors": ["ListedColormap"],
        "matplotlib.patches": ["Circle"],
        "matplotlib.offsetbox": ["AnnotationBbox", "OffsetImage"],
        "sklearn": ["manifold"],
        "sklearn.manifold": ["TSNE"],
    }.items():
        try:
            __import__(name)
        except ImportError:
            module = sys.modules.setdefault(name, types.ModuleType(name))
            for attr in attrs:
                setattr(module, attr, sys.modules.get(f"{name}.{attr}", object))
    for parent, child in (
        ("matplotlib", "pyplot"),
        ("matplotlib", "colors"),
        ("matplotlib", "patches"),
        ("matplotlib", "offsetbox"),
        ("sklearn", "manifold"),
    ):
        setattr(sys.modules[parent], child, sys.modules[f"{parent}.{child}"])


def real_sentences(num: int, max_len: int, leads=None) -> dict[str, np.ndarray]:
    """Sentences of the first `num` tokenizable records of the bundled sample, raw mV."""
    sys.path.insert(0, str(REPO))
    from heartlang_jax.ecg.records import load_record
    from heartlang_jax.ecg.tokenizer import QRSTokenizer

    kwargs = {"leads": tuple(leads)} if leads else {}
    tokenizer = QRSTokenizer(fs=100.0, max_len=max_len, token_len=96, detector="xqrs", **kwargs)
    words, leads, times = [], [], []
    for header in sorted((SAMPLE / "records100").rglob("*_lr.hea")):
        record = load_record(header.with_suffix(""))
        try:
            sentence = tokenizer.tokenize(record.signal, record.fs, record.lead_names, record_name=record.name)
        except ValueError:
            continue
        words.append(sentence.words)
        leads.append(sentence.lead_ids)
        times.append(sentence.time_ids)
        if len(words) == num:
            break
    return {
        "words": np.stack(words).astype(np.float32),
        "lead_ids": np.stack(leads).astype(np.int64),
        "time_ids": np.stack(times).astype(np.int64),
    }


def _perturb_norms(model, torch, generator) -> None:
    """LayerNorms start at weight 1, bias 0, which would hide a swapped scale and bias."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.add_(0.2 * torch.randn(module.bias.shape, generator=generator))


def build_models(released_sizes: bool, torch):
    import modeling_finetune
    import modeling_pretrain
    import modeling_vqhbr

    if released_sizes:
        vqhbr = modeling_vqhbr.vqhbr(n_code=8192, code_dim=128)
        pretrain = modeling_pretrain.HeartLang(vocab_size=8192)
        classifier = modeling_finetune.HeartLang_finetune_base(num_classes=5)
        return vqhbr, pretrain, classifier, 64
    t = TINY
    backbone = dict(
        seq_len=t["max_len"],
        time_window=96,
        embed_dim=t["hidden"],
        depth=t["layers"],
        heads=t["heads"],
        mlp_dim=t["mlp"],
        dim_head=t["head_dim"],
        dropout=0.0,
        emb_dropout=0.0,
    )
    encoder = dict(backbone, Encoder=True)
    decoder = dict(backbone, depth=1, code_dim=t["code_dim"], Encoder=False)
    vqhbr = modeling_vqhbr.VQHBR(encoder, decoder, t["num_codes"], t["code_dim"], decoder_out_dim=96, model="vqhbr")
    common = dict(
        seq_len=t["max_len"],
        time_window=96,
        depth=t["layers"],
        embed_dim=t["hidden"],
        heads=t["heads"],
        mlp_dim=t["mlp"],
        dim_head=t["head_dim"],
        dropout=0.1,
        emb_dropout=0.1,
    )
    pretrain = modeling_pretrain.ST_ECGFormer(vocab_size=t["vocab"], **common)
    classifier = modeling_finetune.ST_ECGFormerClassifier(num_classes=t["num_classes"], **common)
    return vqhbr, pretrain, classifier, t["head_dim"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--released_sizes", action="store_true", help="K=8192, d=128; Base 12 x 768, 8 x 64, MLP 1024")
    parser.add_argument("--num_sentences", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    _stub_plotting_modules()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    out_path = os.path.abspath(args.out)
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # the released VQHBR makes a figs/ folder in the working directory
        vqhbr, pretrain, classifier, head_dim = build_models(args.released_sizes, torch)
    max_len = pretrain.pos_embed.shape[1] - 1
    # Tiny: 3 leads, so that the 48-word sentences end in padding words as real ones do.
    data = real_sentences(args.num_sentences, max_len, None if args.released_sizes else ("I", "II", "III"))
    x = torch.from_numpy(data["words"])
    chans, times = torch.from_numpy(data["lead_ids"]), torch.from_numpy(data["time_ids"])

    for model in (vqhbr, pretrain, classifier):
        _perturb_norms(model, torch, generator)
        model.eval()
    with torch.no_grad():
        # A trained codebook is unit-norm (k-means init, then normalized EMA steps).
        embedding = vqhbr.quantize.embedding
        num_codes, code_dim = embedding.weight.shape
        embedding.weight.copy_(F.normalize(torch.randn(num_codes, code_dim, generator=generator), dim=-1))
        embedding.cluster_size.copy_(torch.rand(num_codes, generator=generator))
        embedding.initted.fill_(1.0)
        # The fine-tuned classifier starts from the pre-trained backbone (as released fine-tuning
        # does), so the fixture stores the backbone once.
        backbone = {k: v for k, v in pretrain.state_dict().items() if not k.startswith("lm_head.")}
        missing, unexpected = classifier.backbone.load_state_dict(backbone, strict=False)
        assert set(missing) == {"lm_head.weight", "lm_head.bias"} and not unexpected

        features = vqhbr.encoder(x, in_chan_matrix=chans, in_time_matrix=times, return_qrs_tokens=True)
        z = vqhbr.encode_task_layer(features)
        quantize, ids, vq_loss = vqhbr.encode(x, in_chan_matrix=chans, in_time_matrix=times)
        reconstruction = vqhbr.decode(quantize, in_chan_matrix=chans, in_time_matrix=times)
        ids_api = vqhbr.get_codebook_indices(x, in_chan_matrix=chans, in_time_matrix=times)
        assert torch.equal(ids.view(x.shape[0], -1), ids_api)

        mask = sys.modules["modeling_pretrain"].random_masking(x, 0.5)
        hidden = pretrain(x, mask, chans, times, return_all_tokens=True)
        mlm_logits = pretrain(x, mask, chans, times)
        cls_logits = classifier(x, in_chan_matrix=chans, in_time_matrix=times)

    arrays = {
        **data,
        "head_dim": np.asarray(head_dim),
        "mask": mask.numpy(),
        "vqhbr_features": features.numpy(),
        "vqhbr_z": z.numpy(),
        "vqhbr_ids": ids_api.numpy(),
        "vqhbr_loss": np.asarray(vq_loss.item(), np.float32),
        "vqhbr_reconstruction": reconstruction.numpy(),
        "pretrain_hidden": hidden.numpy(),
        "pretrain_logits": mlm_logits.numpy(),
        "finetune_logits": cls_logits.numpy(),
    }
    for prefix, model in (("vqhbr", vqhbr), ("pretrain", pretrain)):
        for name, tensor in model.state_dict().items():
            arrays[f"{prefix}/{name}"] = tensor.detach().numpy()
    for name, tensor in classifier.state_dict().items():
        if not name.startswith("backbone.") or name.startswith("backbone.lm_head."):
            arrays[f"finetune/{name}"] = tensor.detach().numpy()
    arrays = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in arrays.items()}
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    (np.savez if args.released_sizes else np.savez_compressed)(out_path, **arrays)
    real = data["lead_ids"] != 0
    print(
        f"wrote {out_path}: {len(data['words'])} sentences, {int(real.sum())} real words, "
        f"{sum(v.size for k, v in arrays.items() if '/' in k)} weights, {os.path.getsize(out_path)} bytes"
    )


if __name__ == "__main__":
    main()
