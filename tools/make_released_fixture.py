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

Raw records (issue 23): `--num_filtered` (default 1) more bundled records, brought to 500 Hz and
written as MIMIC-IV-ECG records (`mimic_records`; the int16 samples are stored, `filtered_records`),
go through the released MIMIC-IV preprocessing's own functions (its FFT resampling to 100 Hz, its
0.67-40 Hz Butterworth filtfilt), are cut by the same tokenizer (leads I-III for the tiny fixture)
and read by the released `get_codebook_indices` (`filtered_vqhbr_ids`);
`released_comparison.compare_filtered_records` reads the raw records with `heartlang_jax.load`.

`--keep_existing` regenerates a committed fixture without changing any array it has: torch
builds differ in the last bits of the outputs (not of the weights), so it checks them and keeps
the stored ones, adding only arrays the fixture lacks.

Needs torch, einops, numpy, scipy and wfdb (not the project's venv), e.g.

    python3 -m venv /tmp/torch-ref && /tmp/torch-ref/bin/pip install torch einops numpy scipy wfdb
    PYTHONPATH=/work/shared/reference/heartlang-released:/work/shared/reference/timm_shim:. \
        /tmp/torch-ref/bin/python tools/make_released_fixture.py --keep_existing \
        --out=tests/fixtures/released/tiny.npz
    PYTHONPATH=... /tmp/torch-ref/bin/python tools/make_released_fixture.py --released_sizes \
        --num_sentences=16 --num_filtered=16 --out=/tmp/released_sizes.npz

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


# MIMIC-IV-ECG headers list the limb leads I, II, III, aVR, aVF, aVL (the released script's `mimic_leads`).
MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
MIMIC_GAIN = 200.0  # adc units per mV, MIMIC-IV-ECG's


def mimic_records(num: int, first: int) -> np.ndarray:
    """[num, 5000, 12] int16: bundled PTB-XL records `first`, `first + 1`, ... brought to 500 Hz
    (polyphase) and quantized as a MIMIC-IV-ECG record is (leads in its headers' order, 200 adc/mV).
    `filtered_cases` writes them in MIMIC's layout; the fixture keeps these samples so that a test
    writes the very same record."""
    sys.path.insert(0, str(REPO))
    import scipy.signal

    from heartlang_jax.ecg.records import STANDARD_LEADS, load_record

    order = [STANDARD_LEADS.index(lead.upper()) for lead in MIMIC_LEADS]
    headers = sorted((SAMPLE / "records100").rglob("*_lr.hea"))[first : first + num]
    out = []
    for header in headers:
        signal = load_record(header.with_suffix("")).signal.astype(np.float64)
        signal = scipy.signal.resample_poly(signal, 5, 1, axis=1)[order]
        out.append(np.clip(np.round(signal * MIMIC_GAIN), -32767, 32767).astype(np.int16).T)
    return np.stack(out)


def write_mimic_record(directory: pathlib.Path, study: int, digital: np.ndarray) -> pathlib.Path:
    """Writes `digital` [5000, 12] (`mimic_records`) as MIMIC-IV-ECG's `files/.../s{study}/{study}` does."""
    import wfdb

    directory.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        str(study), fs=500, units=["mV"] * 12, sig_name=list(MIMIC_LEADS), d_signal=np.asarray(digital, np.int16),
        fmt=["16"] * 12, adc_gain=[MIMIC_GAIN] * 12, baseline=[0] * 12, write_dir=str(directory),
    )  # fmt: skip
    return directory / str(study)


def released_mimic_preprocess(path: pathlib.Path) -> np.ndarray:
    """[12, 1000] float64: one record through the released MIMIC-IV preprocessing's own functions
    (`datasets/dataset_preprocess/MIMIC-IV/mimic_preprocess.py`, as its `main` and `process_batch`
    call them: wfdb.rdsamp, replace_nan_with_window_average, resample_signals 500 -> 100 Hz (FFT,
    scipy.signal.resample), reorder_leads to the standard order, bandpass_filter 0.67-40 Hz)."""
    import importlib.util

    import wfdb

    for name in ("pandas", "sklearn", "sklearn.model_selection", "sklearn.preprocessing", "tqdm"):
        try:
            __import__(name)
        except ImportError:
            sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["sklearn.model_selection"].__dict__.setdefault("train_test_split", None)
    sys.modules["sklearn.preprocessing"].__dict__.setdefault("StandardScaler", None)
    sys.modules["tqdm"].__dict__.setdefault("tqdm", lambda iterable, **kwargs: iterable)
    script = _released_root() / "datasets" / "dataset_preprocess" / "MIMIC-IV" / "mimic_preprocess.py"
    spec = importlib.util.spec_from_file_location("released_mimic_preprocess", script)
    assert spec is not None and spec.loader is not None
    released = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(released)
    signals, _ = wfdb.rdsamp(str(path))
    batch = np.array([signals.transpose(1, 0)])
    batch = released.replace_nan_with_window_average(batch)
    batch = released.resample_signals(batch, 500, 100)
    batch = released.reorder_leads(batch, released.mimic_leads, released.standard_leads)
    return released.bandpass_filter(batch, lowcut=0.67, highcut=40, fs=100)[0]


def _released_root() -> pathlib.Path:
    import importlib.util

    spec = importlib.util.find_spec("modeling_vqhbr")  # on PYTHONPATH; not imported (torch)
    assert spec is not None and spec.origin is not None, "put the released code on PYTHONPATH"
    return pathlib.Path(spec.origin).resolve().parent


def filtered_cases(num: int, max_len: int, leads=None, first: int = 0) -> dict[str, np.ndarray]:
    """Raw 500 Hz MIMIC-layout records and the released preprocessing's sentences of them.

    Records: bundled records `first`, `first + 1`, ... (`mimic_records`; the caller passes the
    number of sentences `real_sentences` read, so that they are other records). Sentences: the
    released preprocessing filters each record (`released_mimic_preprocess`); the sentence cut is
    our QRSTokenizer with the released settings (sentence_spec.RELEASED: XQRS on lead I at 100 Hz,
    96 samples a word), no filter of its own, as `real_sentences` cuts."""
    sys.path.insert(0, str(REPO))
    from heartlang_jax.ecg.records import STANDARD_LEADS
    from heartlang_jax.ecg.tokenizer import QRSTokenizer

    kwargs = {"leads": tuple(leads)} if leads else {}
    tokenizer = QRSTokenizer(fs=100.0, max_len=max_len, token_len=96, detector="xqrs", **kwargs)
    digital = mimic_records(num, first)
    words, lead_ids, time_ids = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for i, record in enumerate(digital):
            path = write_mimic_record(pathlib.Path(scratch), 40000000 + i, record)
            signal = released_mimic_preprocess(path)
            sentence = tokenizer.tokenize(signal, 100.0, STANDARD_LEADS, record_name=path.name)
            words.append(sentence.words)
            lead_ids.append(sentence.lead_ids)
            time_ids.append(sentence.time_ids)
    return {
        "filtered_records": digital,
        "filtered_words": np.stack(words).astype(np.float32),
        "filtered_lead_ids": np.stack(lead_ids).astype(np.int64),
        "filtered_time_ids": np.stack(time_ids).astype(np.int64),
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


def _keep_existing(path: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`arrays` with the values of the fixture at `path` wherever it has them, after checking that
    they agree: a regenerated fixture keeps every existing array bit-identical."""
    existing = dict(np.load(path))
    deviation = 0.0
    for name, old in existing.items():
        new = arrays[name]
        assert old.shape == new.shape and old.dtype == new.dtype, (name, old.shape, new.shape, old.dtype, new.dtype)
        if "/" in name or not np.issubdtype(old.dtype, np.floating):
            assert np.array_equal(old, new), f"{name} differs from {path}"
        else:
            scale = max(float(np.max(np.abs(old))), 1e-30)
            error = float(np.max(np.abs(old.astype(np.float64) - new))) / scale
            assert error < 1e-5, f"{name} differs from {path} by {error:.3g} of its largest magnitude"
            deviation = max(deviation, error)
    print(f"kept the {len(existing)} arrays of {path} (recomputed outputs within {deviation:.3g} of them)")
    return {**arrays, **existing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--released_sizes", action="store_true", help="K=8192, d=128; Base 12 x 768, 8 x 64, MLP 1024")
    parser.add_argument("--num_sentences", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep_existing",
        action="store_true",
        help="--out exists: check its arrays against this run (weights and ints exactly, outputs to 1e-5 of their "
        "largest magnitude: torch builds differ in the last bits), keep them as they are and add the new ones",
    )
    parser.add_argument(
        "--num_filtered", type=int, default=1, help="raw 500 Hz MIMIC-layout records read through the released filter"
    )
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
    # Raw records through the released MIMIC-IV preprocessing, then the released get_codebook_indices
    # (after everything above, so that the arrays above stay what they were).
    leads = None if args.released_sizes else ("I", "II", "III")
    filtered = filtered_cases(args.num_filtered, max_len, leads, first=args.num_sentences)
    with torch.no_grad():
        usage = vqhbr.quantize.cluster_size.clone()  # the released eval forward counts code usage
        filtered_ids = vqhbr.get_codebook_indices(
            torch.from_numpy(filtered["filtered_words"]),
            in_chan_matrix=torch.from_numpy(filtered["filtered_lead_ids"]),
            in_time_matrix=torch.from_numpy(filtered["filtered_time_ids"]),
        )
        vqhbr.quantize.cluster_size.copy_(usage)
    arrays.update(filtered, filtered_vqhbr_ids=filtered_ids.numpy())
    for prefix, model in (("vqhbr", vqhbr), ("pretrain", pretrain)):
        for name, tensor in model.state_dict().items():
            arrays[f"{prefix}/{name}"] = tensor.detach().numpy()
    for name, tensor in classifier.state_dict().items():
        if not name.startswith("backbone.") or name.startswith("backbone.lm_head."):
            arrays[f"finetune/{name}"] = tensor.detach().numpy()
    arrays = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in arrays.items()}
    if args.keep_existing:
        arrays = _keep_existing(out_path, arrays)
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    (np.savez if args.released_sizes else np.savez_compressed)(out_path, **arrays)
    real = data["lead_ids"] != 0
    print(
        f"wrote {out_path}: {len(data['words'])} sentences, {int(real.sum())} real words, "
        f"{len(filtered['filtered_words'])} filtered records, {int((filtered['filtered_lead_ids'] != 0).sum())} "
        "real words, "
        f"{sum(v.size for k, v in arrays.items() if '/' in k)} weights, {os.path.getsize(out_path)} bytes"
    )


if __name__ == "__main__":
    main()
