"""Synthetic 12-lead ECGs whose beat times are known, and beat matching for detector scores.

No expert-annotated recordings can be downloaded here, so QRS detection is scored on signals
built from Gaussian P/QRS/T waves with realistic variation (tests and benchmarks/qrs_quality.py).
"""

from __future__ import annotations

import numpy as np

from heartlang_jax.ecg.records import STANDARD_LEADS

_QRS_WAVES = ((-0.022, 0.008, -0.15), (0.0, 0.010, 1.0), (0.024, 0.009, -0.3))


def synthetic_ecg(
    rng: np.random.Generator,
    bpm: float,
    rhythm: str = "regular",
    fs: float = 100.0,
    duration_s: float = 10.0,
    noise_mv: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """A 12-lead ECG of Gaussian P/QRS/T waves whose beat times are known.

    Per lead: QRS amplitude 0.2-2 mV with random polarity, T wave 10-60% of it (inverted in 30%
    of leads), P wave 0.05-0.2 mV, +-15% beat-to-beat amplitude jitter, a linear amplitude drift,
    0.1-0.5 Hz baseline wander up to 0.5 mV, and white noise of `noise_mv` mV std (0 for a
    noise-free signal that depends only on the rng, not on `fs`).

    Args:
      rhythm: "regular" (RR +-3%), "irregular" (RR +-30%, no P waves, like atrial fibrillation)
        or "ectopic" (regular with 15% premature beats at 60-80% of the RR).
    Returns:
      [12, duration_s * fs] float32 in mV, and the R-peak times in seconds.
    """
    mean_rr = 60.0 / bpm
    spread = 0.3 if rhythm == "irregular" else 0.03
    beats = [rng.uniform(0.05, 1.0) * mean_rr]
    while True:
        rr = mean_rr * rng.uniform(1 - spread, 1 + spread)
        if rhythm == "ectopic" and rng.random() < 0.15:
            rr *= rng.uniform(0.6, 0.8)
        next_beat = beats[-1] + max(rr, 0.3)  # 200 bpm at most
        if next_beat >= duration_s:
            break
        beats.append(next_beat)
    beats = np.asarray(beats)

    t = np.arange(round(duration_s * fs)) / fs
    num_leads = len(STANDARD_LEADS)
    qrs_mv = rng.uniform(0.2, 2.0, num_leads) * rng.choice([-1, 1], num_leads)
    t_mv = rng.uniform(0.1, 0.6, num_leads) * np.abs(qrs_mv) * rng.choice([-1, 1], num_leads, p=[0.3, 0.7])
    p_mv = rng.uniform(0.05, 0.2, num_leads) * (rhythm != "irregular")
    qt_s = 0.28 * np.sqrt(min(mean_rr, 1.2))
    signal = np.zeros((num_leads, t.size))
    for beat in beats:
        jitter = 1 + 0.15 * np.clip(rng.standard_normal(num_leads), -2, 2) / 2
        waves = [(offset, width, qrs_mv * rel) for offset, width, rel in _QRS_WAVES]
        waves += [(qt_s, 0.05, t_mv), (-0.16, 0.025, p_mv)]
        for offset, width, amplitude in waves:
            shape = np.exp(-0.5 * ((t - beat - offset) / width) ** 2)
            signal += (jitter * amplitude)[:, None] * shape[None, :]
    signal *= np.linspace(rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.3), t.size)[None, :]
    phase = rng.uniform(0, 2 * np.pi, (num_leads, 1))
    signal += rng.uniform(0.1, 0.5, (num_leads, 1)) * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + phase)
    signal += noise_mv * rng.standard_normal(signal.shape)
    return signal.astype(np.float32), beats


def match_beats(detected_s: np.ndarray, true_s: np.ndarray, tolerance_s: float = 0.1) -> tuple[int, int, int]:
    """One-to-one matching of detected to true beat times: (true positives, misses, false)."""
    unmatched = list(detected_s)
    hits = 0
    for beat in true_s:
        if unmatched:
            nearest = int(np.argmin(np.abs(np.asarray(unmatched) - beat)))
            if abs(unmatched[nearest] - beat) <= tolerance_s:
                hits += 1
                unmatched.pop(nearest)
    return hits, len(true_s) - hits, len(unmatched)
