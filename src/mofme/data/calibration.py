"""Calibration of the weather generators: the PSNR band of every type and severity.

``python -m mofme.data.calibration -n 200`` re-measures :data:`PSNR_BANDS` (tests check that
fresh samples stay inside them, so a change to a generator that shifts its difficulty shows).
"""

from __future__ import annotations

import numpy as np

from mofme.data.content import clean_sources, random_view
from mofme.data.weather import SEVERITIES, WEATHER_TYPES

# Measured PSNR (dB) of degraded vs clean over 200 random 256 x 256 views of the bundled photos
# (``measure_bands(n=200, seed=0)``): (min − 0.5, max + 0.5) rounded outwards to 0.5 dB.
# Means: rain 29.0 / 22.9 / 16.9, rain_fog 26.8 / 20.4 / 15.3, raindrop 26.7 / 21.7 / 17.6,
# snow 27.9 / 21.4 / 15.8, haze 25.1 / 20.0 / 14.9 (light / medium / heavy). Raindrop and haze
# spread widest: drops over flat areas barely show, and haze depends on how far the scene's
# colours are from the airlight. Re-measure with ``python -m mofme.data.calibration -n 200``.
PSNR_BANDS: dict[str, dict[str, tuple[float, float]]] = {
    "rain": {"light": (25.0, 32.5), "medium": (20.0, 26.0), "heavy": (14.0, 20.0)},
    "rain_fog": {"light": (23.0, 31.5), "medium": (17.5, 25.0), "heavy": (11.5, 19.0)},
    "raindrop": {"light": (19.5, 39.0), "medium": (14.0, 33.5), "heavy": (11.0, 28.5)},
    "snow": {"light": (24.0, 31.0), "medium": (18.5, 24.5), "heavy": (12.5, 19.5)},
    "haze": {"light": (19.0, 32.0), "medium": (14.0, 27.5), "heavy": (10.0, 20.5)},
}


def band_sample(index: int, seed: int = 0, size_hw: tuple[int, int] = (256, 256)) -> np.ndarray:
    """The ``index``-th calibration view ``(h, w, 3)``: a random crop of a bundled photo drawn
    from ``seed``. The weather for it uses ``default_rng([seed, 8, index, type_i, severity_i])``
    (indices into :data:`WEATHER_TYPES` and :data:`SEVERITIES`)."""
    sources = clean_sources()
    rng = np.random.default_rng([seed, 7, index])
    return random_view(sources[int(rng.integers(len(sources)))], size_hw, rng)


def measure_bands(
    n: int = 30, seed: int = 0, size_hw: tuple[int, int] = (256, 256)
) -> dict[str, dict[str, dict[str, float]]]:
    """PSNR and SSIM of degraded vs clean per type and severity over ``n`` random views.

    Returns ``{type: {severity: {"psnr_mean", "psnr_min", "psnr_max", "ssim_mean",
    "ssim_min", "ssim_max"}}}``. Every (type, severity) pair sees the same clean views.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr: dict[tuple[str, str], list[float]] = {}
    ssim: dict[tuple[str, str], list[float]] = {}
    for i in range(n):
        clean = band_sample(i, seed, size_hw)
        for ti, (name, fn) in enumerate(WEATHER_TYPES.items()):
            for si, sev in enumerate(SEVERITIES):
                out = fn(clean, np.random.default_rng([seed, 8, i, ti, si]), sev)
                psnr.setdefault((name, sev), []).append(
                    peak_signal_noise_ratio(clean, out, data_range=1.0)
                )
                ssim.setdefault((name, sev), []).append(
                    structural_similarity(clean, out, channel_axis=2, data_range=1.0)
                )
    result: dict[str, dict[str, dict[str, float]]] = {}
    for (name, sev), values in psnr.items():
        p, s = np.asarray(values), np.asarray(ssim[(name, sev)])
        result.setdefault(name, {})[sev] = {
            "psnr_mean": float(p.mean()),
            "psnr_min": float(p.min()),
            "psnr_max": float(p.max()),
            "ssim_mean": float(s.mean()),
            "ssim_min": float(s.min()),
            "ssim_max": float(s.max()),
        }
    return result


def format_bands(bands: dict[str, dict[str, dict[str, float]]]) -> str:
    """A plain-text table of :func:`measure_bands` output."""
    lines = [
        f"{'type':<10}{'severity':<9}{'PSNR mean':>10}{'min':>8}{'max':>8}"
        f"{'SSIM mean':>11}{'min':>7}{'max':>7}"
    ]
    for name, per_sev in bands.items():
        for sev, m in per_sev.items():
            lines.append(
                f"{name:<10}{sev:<9}{m['psnr_mean']:>10.2f}{m['psnr_min']:>8.2f}"
                f"{m['psnr_max']:>8.2f}{m['ssim_mean']:>11.3f}{m['ssim_min']:>7.3f}"
                f"{m['ssim_max']:>7.3f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Measure PSNR/SSIM of the weather generators.")
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(format_bands(measure_bands(args.n, args.seed)))
