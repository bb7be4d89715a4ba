"""Raindrops on the lens or a window (RainDrop)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mofme.data.weather import common


@dataclass(frozen=True)
class RaindropParams:
    """Lens raindrop parameters (pixels of a 256-pixel image).

    count: range of the number of drops per 256 x 256 image.
    radius: drop radius range (sampled log-uniformly, so small drops are common).
    zoom: how much wider than the drop the (inverted) scene area seen through it is.
    defocus: Gaussian sigma of the out-of-focus drop layer (drop content and rims).
    rim: darkening at the drop rim (0 = none, 1 = black).
    scene_blur: sigma of the blur of the scene right behind the drops.
    """

    count: tuple[int, int]
    radius: tuple[float, float]
    zoom: tuple[float, float] = (2.0, 4.0)
    defocus: float = 1.2
    rim: float = 0.35
    scene_blur: float = 1.5


RAINDROP_PARAMS: dict[str, RaindropParams] = {
    "light": RaindropParams(count=(18, 30), radius=(4.0, 16.0), defocus=1.5),
    "medium": RaindropParams(count=(35, 60), radius=(5.0, 20.0), defocus=1.8),
    "heavy": RaindropParams(count=(60, 100), radius=(6.0, 28.0), defocus=2.2, scene_blur=2.0),
}


def raindrop(
    clean: np.ndarray, rng: np.random.Generator, severity: str = "medium", view: float = 1.0
) -> np.ndarray:
    """Raindrops on the lens or a window, like RainDrop (parameters: :data:`RAINDROP_PARAMS`).

    ``(H, W, 3)`` -> ``(H, W, 3)``; pixels away from drops are unchanged.
    """
    img, p, view = common.checked(clean, RAINDROP_PARAMS, severity, view)
    h, w = img.shape[:2]
    s = common.pixel_scale(h, w, view)
    n = round(float(rng.integers(p.count[0], p.count[1] + 1)) * common.area_factor(h, w, view))
    radii = np.exp(rng.uniform(math.log(p.radius[0]), math.log(p.radius[1]), size=n)) * s
    # Centres may lie a little outside the frame: drops cut by the border are common.
    cx = rng.uniform(0.0, 1.0, size=n) * (w + 0.6 * radii) - 0.3 * radii
    cy = rng.uniform(0.0, 1.0, size=n) * (h + 0.6 * radii) - 0.3 * radii
    aspect = rng.uniform(0.8, 1.25, size=n)
    rx = np.maximum(radii * aspect, 1.0)
    ry = np.maximum(radii / aspect, 1.0)
    e2 = rng.uniform(0.0, 0.08, size=n)
    e3 = rng.uniform(0.0, 0.05, size=n)
    ph2 = rng.uniform(0.0, 2 * np.pi, size=n)
    ph3 = rng.uniform(0.0, 2 * np.pi, size=n)
    cos2, sin2, cos3, sin3 = np.cos(ph2), np.sin(ph2), np.cos(ph3), np.sin(ph3)
    zoom = rng.uniform(p.zoom[0], p.zoom[1], size=n)
    glint = rng.uniform(0.15, 0.45, size=n)

    # Rasterise: each pixel belongs to the drop in which its normalised radius is smallest.
    rho_map = np.full((h, w), np.inf, dtype=np.float32)
    id_map = np.full((h, w), -1, dtype=np.int64)
    for i in range(n):
        ext = 1.15 * max(rx[i], ry[i])
        x0, x1 = max(0, int(cx[i] - ext)), min(w, int(cx[i] + ext) + 2)
        y0, y1 = max(0, int(cy[i] - ext)), min(h, int(cy[i] + ext) + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = (np.arange(x0, x1, dtype=np.float32)[None, :] - cx[i]) / rx[i]
        dy = (np.arange(y0, y1, dtype=np.float32)[:, None] - cy[i]) / ry[i]
        r = np.sqrt(dx * dx + dy * dy) + 1e-6
        c, sn = dx / r, dy / r  # cos and sin of the polar angle, without trigonometry
        c2, s2 = c * c - sn * sn, 2.0 * c * sn
        c3, s3 = c * (4.0 * c * c - 3.0), sn * (3.0 - 4.0 * sn * sn)
        wobble = e2[i] * (c2 * cos2[i] - s2 * sin2[i]) + e3[i] * (c3 * cos3[i] - s3 * sin3[i])
        rho = r / (1.0 + wobble)
        sub_rho = rho_map[y0:y1, x0:x1]
        take = rho < np.minimum(sub_rho, 1.0)
        sub_rho[take] = rho[take]
        id_map[y0:y1, x0:x1][take] = i

    inside = id_map >= 0
    if not inside.any():
        return img.copy()
    ys, xs = np.nonzero(inside)
    ids = id_map[ys, xs]
    rho = rho_map[ys, xs]
    # Each drop is a tiny wide-angle lens: it shows the scene around it, inverted and zoomed
    # out, more compressed towards the rim.
    k = zoom[ids] * (1.0 + 0.35 * rho * rho)
    src_x = cx[ids] - (xs - cx[ids]) * k
    src_y = cy[ids] - (ys - cy[ids]) * k
    soft = common.gaussian_blur(img, p.scene_blur * s)
    drop = common.bilinear_sample(soft, src_x, src_y)
    drop = 0.88 * drop + 0.12 * drop.mean(axis=1, keepdims=True)  # water mutes colours a bit
    edge = np.clip((rho - 0.6) / 0.4, 0.0, 1.0)
    drop *= (1.0 - p.rim * edge * edge)[:, None]
    gx = (xs - cx[ids]) / rx[ids] + 0.35
    gy = (ys - cy[ids]) / ry[ids] + 0.4
    drop += (glint[ids] * np.exp(-(gx * gx + gy * gy) / (2 * 0.15**2)))[:, None]

    mask = np.zeros((h, w), dtype=np.float32)
    mask[ys, xs] = 1.0
    layer = np.zeros_like(img)
    layer[ys, xs] = np.clip(drop, 0.0, 1.0)
    # The drops are out of focus: blur the premultiplied layer and its coverage alike.
    sigma = p.defocus * s
    mask_b = common.gaussian_blur(mask, sigma)
    layer_b = common.gaussian_blur(layer, sigma)
    around = np.clip(common.gaussian_blur(mask, 2.0 * sigma) * 1.3, 0.0, 1.0)[..., None]
    background = img * (1.0 - around) + soft * around
    out = background * (1.0 - mask_b[..., None]) + layer_b
    # Pixels no drop can reach keep their exact value (only float noise would change them).
    far = around[..., 0] < 1e-4
    out[far] = img[far]
    return np.clip(out, 0.0, 1.0).astype(np.float32)
