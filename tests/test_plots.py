"""Every plot function returns a figure that renders, on the bundled sample."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from test_inference import RECORDS, write_run  # tiny run folders, see the note there

import heartlang_jax
from heartlang_jax.evaluation import plots


@pytest.fixture(scope="module")
def vqhbr(tmp_path_factory):
    return heartlang_jax.load(write_run(tmp_path_factory.mktemp("run") / "vqhbr", "vqhbr"))


def _renders(figure) -> np.ndarray:
    assert isinstance(figure, Figure)
    image = plots.figure_to_image(figure)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0
    return image


def test_ecg_with_beats_and_words_coloured_by_vocabulary_index(vqhbr):
    sentence = vqhbr.sentence(RECORDS[0])
    _renders(plots.ecg_figure(sentence, vqhbr.word_ids(RECORDS[0]), num_codes=vqhbr.num_codes))
    _renders(plots.ecg_figure(sentence, leads=["II", "v1"]))


def test_reconstructions_over_the_input_words(vqhbr):
    reconstruction = vqhbr.reconstruct(RECORDS[1])
    _renders(plots.reconstruction_figure(reconstruction))
    # From a batch of padded sentences, as the VQ-HBR evaluation has them, to an RGB image.
    s = reconstruction.sentence
    batch = np.stack([s.words, s.words]), np.stack([s.words, s.words]) * 0.5
    image = plots.reconstruction_figure_image(*batch, lead_ids=np.stack([s.lead_ids, s.lead_ids]), max_words=8)
    assert image.dtype == np.uint8 and image.shape[2] == 3 and image.shape[0] > 100


def test_codebook_usage(vqhbr):
    outs = [vqhbr.reconstruct(path) for path in RECORDS[:3]]
    _renders(
        plots.codebook_usage_figure([o.word_ids for o in outs], [o.words for o in outs], num_codes=vqhbr.num_codes)
    )
    _renders(plots.codebook_usage_figure(np.concatenate([o.word_ids for o in outs]), num_codes=8192))
    with pytest.raises(ValueError, match="words for"):
        plots.codebook_usage_figure(outs[0].word_ids, outs[1].words[:3])


def test_embedding_projection(vqhbr):
    embeddings = vqhbr.embed_many(RECORDS, progress=False)
    _renders(plots.embedding_projection_figure(embeddings, ["NORM", "MI", "NORM", "STTC", "NORM"], method="pca"))
    _renders(plots.embedding_projection_figure(np.random.default_rng(0).normal(size=(40, 16)), list(range(40))))
    coords, method = plots.project(embeddings, "pca")
    assert coords.shape == (5, 2) and method == "pca"
    if "umap" not in sys.modules:
        try:
            import umap  # noqa: F401
        except ImportError:
            with pytest.raises(ImportError, match="umap-learn"):
                plots.project(embeddings, "umap")


def test_results_bar_chart(tmp_path):
    rows = [
        {
            "init": init,
            "mode": "linear",
            "task": task,
            "label_fraction": 1.0,
            "seeds": [0, 1, 2],
            "n": 3,
            "test_auc_mean": mean,
            "test_auc_std": 0.02,
        }
        for init, mean in (("pretrained", 0.81), ("random", 0.78))
        for task in ("superdiagnostic", "rhythm")
    ]
    _renders(plots.results_figure(rows))
    rows[0].update(ci_low=0.76, ci_high=0.85)
    rows.append({**rows[1], "mode": "full", "test_auc_std": None})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"cells": [], "summary": rows}))
    figure = plots.results_figure(path)
    _renders(figure)
    # The bar with an interval gets it as its error bar (0.81 - 0.76 below, 0.85 - 0.81 above).
    ax = figure.axes[0]
    bars = sorted(
        (
            round(float(bar.get_center()[0]), 6),
            round(float(bar.get_height()), 6),
            tuple(np.round(np.sort(segment[:, 1]), 6)),
        )
        for container in ax.containers
        if hasattr(container, "errorbar")
        for bar, segment in zip(container.patches, container.errorbar.lines[2][0].get_segments())
    )
    # Groups in order full/rhythm, linear/rhythm, linear/superdiagnostic; pre-trained left of random.
    assert [(height, ends) for _, height, ends in bars] == [
        (0.81, (0.81, 0.81)),  # no std (one seed), no interval: no bar
        (0.81, (0.79, 0.83)),
        (0.78, (0.76, 0.8)),  # std over seeds
        (0.81, (0.76, 0.85)),
        (0.78, (0.76, 0.8)),  # the pre-trained one has an interval
    ]
    assert "interval" in ax.get_title()


# ------------------------------------------------------------------ figures in TensorBoard


def _tensorboard_images(logdir) -> list[tuple[str, int, np.ndarray]]:
    """(tag, step, decoded RGB image) of every image summary in a TensorBoard log folder.

    Event files are TFRecords (length, its CRC, an `Event` proto, its CRC); read with
    tensorboardX's protos, no TensorFlow."""
    import io
    import pathlib
    import struct

    from PIL import Image
    from tensorboardX.proto import event_pb2

    found = []
    for path in sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("image"):
                    pixels = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)).convert("RGB"))
                    assert pixels.shape == (value.image.height, value.image.width, 3)
                    found.append((value.tag, event.step, pixels))
    return found


def test_metric_writer_writes_images_that_read_back(tmp_path):
    from heartlang_jax.training import metric_writer

    image = np.zeros((30, 40, 3), np.uint8)
    image[5:10, :, 0], image[:, 20:, 2] = 255, 128
    writer = metric_writer.MetricWriter(tmp_path)
    writer.write_images(7, {"eval/picture": image})
    writer.write_images(8, {})
    writer.close()
    [(tag, step, pixels)] = _tensorboard_images(tmp_path / "tensorboard")
    assert (tag, step) == ("eval/picture", 7)
    np.testing.assert_array_equal(pixels, image)  # PNG is lossless


def test_vqhbr_logs_a_reconstruction_figure_at_each_evaluation(tiny_vqhbr_workdir):
    # conftest's tiny run: 40 steps, evaluated at step 40.
    [(tag, step, pixels)] = _tensorboard_images(tiny_vqhbr_workdir / "tensorboard")
    assert (tag, step) == ("eval/reconstruction", 40)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 300 and pixels.std() > 0
