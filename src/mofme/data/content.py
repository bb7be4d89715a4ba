"""Clean content for synthetic training and benchmark data, split into train and held-out pools.

Nothing here downloads anything: every photo ships inside an installed package.

* **Held-out photos** (:data:`HELD_OUT_PHOTOS`): scikit-image's astronaut, chelsea, coffee,
  rocket and motorcycle. The demo and the benchmark (``mofme synth bench``) use only these; the
  bundled weights never trained on them.
* **Train photos** (:data:`TRAIN_PHOTOS`): every other colour photo scikit-image and matplotlib
  ship (Hubble deep field, IHC stain, retina, Grace Hopper, a product photo) plus the grey
  photos and textures (camera, coins, moon, brick, grass, gravel) given a random colour cast
  per view, so they add texture statistics without a grey bias.
* **Dead leaves** (:func:`dead_leaves`): a procedural model of natural images — occluding
  shapes with power-law sizes, colours drawn from photo pixels, per-shape gradients and 1/f
  texture, flat sky regions, and a random defocus. Such images have the scale invariance and
  edge statistics of photos and are known to train restoration networks that generalise
  (Achddou et al., 2021); an unlimited supply also keeps a small model from memorising a
  handful of photos.

A user's own photos (``--source DIR``) join the train pool. The pools
(:func:`clean_sources`, :func:`training_sources`, :func:`make_pool`) and the views cut from them
(:func:`random_view`, :func:`training_view`) are at the end of this module.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mofme.data.io import IMAGE_EXTENSIONS, load_image, to_uint8
from mofme.errors import MofmeError

HELD_OUT_PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
"""scikit-image colour photos kept out of every training set (demo and benchmark only)."""

TRAIN_PHOTOS: tuple[str, ...] = (
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "grace_hopper",
    "present_pack",
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
)
"""Photos and textures from installed packages used for training (grey ones get a colour cast)."""

GREY_PHOTOS = frozenset({"camera", "coins", "moon", "brick", "grass", "gravel"})

LEAVES_SHARE = 0.6
"""Share of training views drawn from :func:`dead_leaves` (the rest from photos)."""


def _matplotlib_sample(name: str) -> np.ndarray:
    import matplotlib

    return to_uint8(load_image(Path(matplotlib.get_data_path()) / "sample_data" / name).rgb)


def _loaders() -> dict[str, Callable[[], np.ndarray]]:
    import skimage.data as skd

    return {
        "astronaut": skd.astronaut,
        "chelsea": skd.chelsea,
        "coffee": skd.coffee,
        "rocket": skd.rocket,
        "motorcycle": lambda: skd.stereo_motorcycle()[0],
        "hubble_deep_field": skd.hubble_deep_field,
        "immunohistochemistry": skd.immunohistochemistry,
        "retina": skd.retina,
        "grace_hopper": lambda: _matplotlib_sample("grace_hopper.jpg"),
        "present_pack": lambda: _matplotlib_sample("Minduka_Present_Blue_Pack.png"),
        "camera": skd.camera,
        "coins": skd.coins,
        "moon": skd.moon,
        "brick": skd.brick,
        "grass": skd.grass,
        "gravel": skd.gravel,
    }


@functools.lru_cache(maxsize=32)
def package_photo(name: str) -> np.ndarray:
    """A photo shipped in an installed package as read-only ``(H, W, 3)`` uint8 (grey -> 3 equal
    channels). Longer side capped at 1024 so the pools stay small in memory."""
    loaders = _loaders()
    if name not in loaders:
        raise KeyError(f"unknown package photo {name!r}")
    arr = np.asarray(loaders[name]())
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = np.ascontiguousarray(arr[..., :3], dtype=np.uint8)
    if max(arr.shape[:2]) > 1024:
        f = 1024 / max(arr.shape[:2])
        size = (max(1, round(arr.shape[1] * f)), max(1, round(arr.shape[0] * f)))
        arr = np.asarray(Image.fromarray(arr).resize(size, Image.LANCZOS))
    arr.setflags(write=False)  # shared cache: nobody may alter it
    return arr


def colour_cast(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Give a grey float image ``(H, W, 3)`` a random smooth colour: a tint that varies from the
    shadows to the highlights (a two-colour duotone), so grey textures look like coloured ones."""
    grey = img.mean(axis=2, keepdims=True)
    dark = rng.uniform(0.0, 0.35, 3).astype(np.float32)
    light = rng.uniform(0.65, 1.0, 3).astype(np.float32)
    return np.clip(dark + grey * (light - dark), 0.0, 1.0).astype(np.float32)


LOOK_SHARE = 0.5
"""Share of training items whose clean content gets a photographic :class:`Look`."""


@dataclass(frozen=True)
class Look:
    """How a photo happens to look: veil (natural haze, low contrast), white balance, tone curve
    and saturation. Training content gets one at random, and the *target* keeps it: haze, a
    colour cast or a flat tone already in a photo is content, not weather, so the network must
    learn to leave them alone (and to tell them from weather by more than global colour).

    ``veil``: blend weight toward ``veil_colour`` (0 = none); ``gains``: per-channel white
    balance; ``gamma``: tone curve exponent; ``saturation``: 1 = unchanged.
    """

    veil: float = 0.0
    veil_colour: tuple[float, float, float] = (0.5, 0.5, 0.5)
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    saturation: float = 1.0

    def apply(self, img: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` float in [0, 1] -> float32 ``(H, W, 3)`` in [0, 1] (deterministic, so a
        clip's frames all get the same look)."""
        out = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        out = out * np.asarray(self.gains, dtype=np.float32)
        out = np.clip(out, 0.0, 1.0) ** np.float32(self.gamma)
        grey = out.mean(axis=2, keepdims=True)
        out = grey + np.float32(self.saturation) * (out - grey)
        colour = np.asarray(self.veil_colour, dtype=np.float32)
        out = (1.0 - self.veil) * out + self.veil * colour
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def draw_look(rng: np.random.Generator, share: float = LOOK_SHARE) -> Look | None:
    """A random :class:`Look` for a share ``share`` of items (else ``None``); each part is
    present half of the time, at strengths seen in ordinary photos."""
    if rng.random() >= share:
        return None
    on = rng.random(4) < 0.5
    if not on.any():
        on[int(rng.integers(4))] = True
    tone = rng.uniform(0.45, 0.9)
    tint = np.exp(rng.normal(0.0, 0.06, 3))
    veil_colour = tuple(float(c) for c in np.clip(tone * tint, 0.0, 1.0))
    gains = np.exp(rng.normal(0.0, 0.07, 3))
    gains = gains / gains.mean()
    return Look(
        veil=float(rng.uniform(0.08, 0.4)) if on[0] else 0.0,
        veil_colour=veil_colour,  # type: ignore[arg-type]
        gains=tuple(float(g) for g in gains) if on[1] else (1.0, 1.0, 1.0),  # type: ignore[arg-type]
        gamma=float(math.exp(rng.uniform(math.log(0.8), math.log(1.25)))) if on[2] else 1.0,
        saturation=float(rng.uniform(0.6, 1.35)) if on[3] else 1.0,
    )


# --------------------------------------------------------------------------------------------
# Dead leaves
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    """``(M, 3)`` float32 colours sampled from the train photos (natural colour statistics)."""
    rng = np.random.default_rng(1234)
    cols = []
    for name in TRAIN_PHOTOS:
        if name in GREY_PHOTOS:
            continue
        px = package_photo(name).reshape(-1, 3)
        px = px[px.max(axis=1) > 20]  # drop the black backgrounds (Hubble, retina)
        cols.append(px[rng.integers(0, len(px), 4000)])
    return (np.concatenate(cols).astype(np.float32) / 255.0).copy()


def _pink_noise(h: int, w: int, rng: np.random.Generator, slope: float) -> np.ndarray:
    """Zero-mean, unit-std ``(h, w)`` noise with a ``1/f^slope`` amplitude spectrum."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f**slope
    spec[0, 0] = 0.0
    noise = np.fft.irfft2(spec, s=(h, w))
    return (noise / (noise.std() + 1e-8)).astype(np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        pal = _palette()
        return pal[int(rng.integers(len(pal)))]
    # Natural-looking HSV: mostly muted saturation, mid-to-bright values.
    import colorsys

    rgb = colorsys.hsv_to_rgb(rng.random(), rng.beta(1.2, 2.5), rng.beta(2.5, 1.5))
    return np.asarray(rgb, dtype=np.float32)


def dead_leaves(size_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A procedural natural-looking image, float32 ``(H, W, 3)`` in [0, 1].

    Shapes (ellipses, rectangles, polygons) with radii ``p(r) ∝ r^-3`` fall front to back
    (painted back to front, so later shapes occlude earlier ones) until the canvas is covered.
    Each shape has a colour from photo pixels, a linear shading gradient and a share of one of
    a few 1/f texture fields (some shapes stay flat). Optionally a smooth sky gradient fills
    the top, then a random Gaussian defocus and faint sensor noise.
    """

    h, w = size_hw
    side = min(h, w)
    r_min, r_max = max(1.5, side / 48), side * rng.uniform(0.25, 0.7)
    n = int(rng.integers(200, 600))
    u = rng.random(n)
    # Inverse CDF of p(r) ∝ r^-3 on [r_min, r_max].
    radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
    label = Image.new("I", (w, h), 0)
    draw = ImageDraw.Draw(label)
    # Random painting order: each shape is equally likely to lie in front of any other, which
    # is the dead-leaves occlusion model (big shapes sometimes cover a field of small ones).
    for idx in range(1, n + 1):
        r = float(radii[idx - 1])
        cx, cy = rng.uniform(-r, w + r), rng.uniform(-r, h + r)
        kind = rng.random()
        if kind < 0.6:  # ellipse, random aspect and angle
            a, b = r, r * rng.uniform(0.3, 1.0)
            t = rng.uniform(0, math.pi)
            ang = np.linspace(0, 2 * math.pi, 24, endpoint=False)
            xs = cx + a * np.cos(ang) * math.cos(t) - b * np.sin(ang) * math.sin(t)
            ys = cy + a * np.cos(ang) * math.sin(t) + b * np.sin(ang) * math.cos(t)
        elif kind < 0.85:  # rotated rectangle
            a, b = r, r * rng.uniform(0.2, 1.0)
            t = rng.uniform(0, math.pi)
            corners = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
            rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
            pts = corners @ rot.T
            xs, ys = cx + pts[:, 0], cy + pts[:, 1]
        else:  # irregular polygon
            k = int(rng.integers(3, 8))
            ang = np.sort(rng.uniform(0, 2 * math.pi, k))
            rad = r * rng.uniform(0.5, 1.0, k)
            xs, ys = cx + rad * np.cos(ang), cy + rad * np.sin(ang)
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=idx)
    ids = np.asarray(label, dtype=np.int64)  # (H, W), 0 = background

    m = n + 1
    base = np.stack([_random_colour(rng) for _ in range(m)])  # (M, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / side, xx / side
    grad = rng.normal(0.0, 0.25, (m, 2)).astype(np.float32) * (rng.random((m, 1)) < 0.7)
    textures = [_pink_noise(h, w, rng, rng.uniform(0.8, 1.6)) for _ in range(3)]
    tex_id = rng.integers(0, 3, m)
    tex_amp = rng.uniform(0.0, 0.12, m).astype(np.float32) * (rng.random(m) < 0.6)
    tex = np.stack(textures)[tex_id[ids], np.arange(h)[:, None], np.arange(w)[None, :]]
    shade = grad[ids, 0] * (yy - yy.mean()) + grad[ids, 1] * (xx - xx.mean())
    img = base[ids] * (1.0 + shade + tex_amp[ids] * tex)[..., None]

    if rng.random() < 0.35:  # a smooth sky over the top part: large flat areas
        horizon = rng.uniform(0.2, 0.6) * h
        top, bottom = _random_colour(rng), _random_colour(rng)
        tt = (np.arange(h, dtype=np.float32) / max(horizon, 1.0))[:, None, None].clip(0, 1)
        sky = top * (1 - tt) + bottom * tt
        edge = horizon + _pink_noise(1, w, rng, 1.2)[0] * side * 0.04
        mask = (np.arange(h)[:, None] < edge[None, :])[..., None]
        img = np.where(mask, sky, img)

    return _camera(np.clip(img, 0.0, 1.0).astype(np.float32), rng, max_defocus=2.5)


def _camera(img: np.ndarray, rng: np.random.Generator, max_defocus: float) -> np.ndarray:
    """What a camera adds to a procedural scene ``(H, W, 3)`` float32: a random Gaussian defocus
    (none half of the time, up to ``max_defocus``) and faint sensor noise."""
    from mofme.data.weather.common import gaussian_blur

    sigma = float(rng.choice([0.0, 0.0, rng.uniform(0.3, 1.0), rng.uniform(1.0, max_defocus)]))
    if sigma > 0:
        img = gaussian_blur(img, sigma)
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.008), img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def soft_photo(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A soft, bright, low-contrast photograph made from a clean view ``base`` ``(H, W, 3)``
    float32: a macro shot with shallow depth of field, a misty-looking but clean scene, a pale
    wall or sky. -> float32 ``(H, W, 3)`` in [0, 1].

    Such photos are what a dehazer mistakes for haze (the bundled stage-10 model darkens and
    recolours them, by up to 11 dB on a pale wood macro with a few drops on it); shown clean,
    and under rain, drops and snow with the softness kept in the target, they teach that a pale
    soft photo is content. Parts, each drawn at random: a defocus of part of the frame (a
    smooth depth-of-field mask) or of all of it, a contrast compressed towards a bright tone,
    a flat colour field with a gentle gradient in place of the scene (a fifth of the time),
    and fine grain.
    """
    from mofme.data.weather.common import gaussian_blur

    h, w = base.shape[:2]
    side = min(h, w)
    img = np.asarray(base, dtype=np.float32)
    if rng.random() < 0.2:  # a flat field: wall, sky, paper, a blurred backdrop
        top, bottom = _random_colour(rng), _random_colour(rng)
        t = np.clip(0.5 + 0.5 * _pink_noise(h, w, rng, 2.5) * rng.uniform(0.3, 1.0), 0, 1)
        img = top * (1.0 - t[..., None]) + bottom * t[..., None]
        img = img + 0.02 * rng.uniform(0.0, 1.0) * _pink_noise(h, w, rng, 1.0)[..., None]
    sigma = side * rng.uniform(0.01, 0.05)
    blurred = gaussian_blur(img, sigma)
    if rng.random() < 0.6:  # shallow depth of field: one region sharp, the rest soft
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / side
        cy, cx = rng.uniform(0.2, 0.8) * h / side, rng.uniform(0.2, 0.8) * w / side
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) + 0.08 * _pink_noise(h, w, rng, 2.5)
        r = rng.uniform(0.1, 0.4)
        k = np.clip((d - r) / rng.uniform(0.1, 0.3), 0.0, 1.0)[..., None]
        img = img * (1.0 - k) + blurred * k
    else:
        img = blurred
    # Lift the mean colour to a bright tone (its hue kept) and compress the contrast around it.
    tone = rng.uniform(0.55, 0.9)
    mean = img.mean(axis=(0, 1), keepdims=True)
    lift = tone / max(float(mean.mean()), 1e-3)
    img = mean * lift + rng.uniform(0.25, 0.7) * (img - mean)
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.01), img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def planks(size_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Thin near-vertical structure, float32 ``(H, W, 3)`` in [0, 1]: boards with dark joints
    (a plank wall, a fence) or bars with gaps (railings, shelving, blinds), with vertical grain,
    over a :func:`dead_leaves` scene, tilted by a few degrees, sometimes with horizontal members.

    Rain streaks are thin, bright, near-vertical strokes; photos are full of structure that looks
    like them (planks, poles, engine fins). Shown as content (identity pairs, and under weather with
    the structure kept in the target), it teaches a streak remover to tell them apart.
    """

    h, w = size_hw
    pad = max(8, round(0.25 * max(h, w)))  # room for the tilt
    hh, ww = h + 2 * pad, w + 2 * pad
    img = dead_leaves((hh, ww), rng)
    # Grain: 1/f noise stretched along the boards.
    stretch = 8
    grain = _pink_noise(max(4, hh // stretch), ww, rng, 1.2)
    grain = np.repeat(grain, stretch, axis=0)[:hh]
    if grain.shape[0] < hh:
        grain = np.pad(grain, ((0, hh - grain.shape[0]), (0, 0)), mode="edge")
    boards = rng.random() < 0.5
    base = _random_colour(rng)
    x0 = rng.uniform(0, 0.5) * ww if rng.random() < 0.4 else 0.0  # sometimes only part of the view
    x1 = ww - (rng.uniform(0, 0.5) * ww if rng.random() < 0.4 else 0.0)
    x = x0 + rng.uniform(0, 4)
    amp = rng.uniform(0.03, 0.15)
    while x < x1:
        width = rng.uniform(3, 24) if boards else rng.uniform(1, 5)
        gap = rng.uniform(1, 3) if boards else rng.uniform(3, 30)
        colour = np.clip(base * np.exp(rng.normal(0, 0.08, 3)), 0, 1).astype(np.float32)
        a, b = int(x), max(int(x) + 1, int(x + width))
        top, bottom = 0, hh
        if not boards and rng.random() < 0.3:  # a bar that stops (a post, a fin)
            length = rng.uniform(0.3, 1.0) * hh
            top = int(rng.uniform(0, hh - length))
            bottom = int(top + length)
        img[top:bottom, a:b] = colour * (1.0 + amp * grain[top:bottom, a:b, None])
        if boards:  # the joint: a shadow line
            g1 = min(ww, int(x + width + gap))
            img[:, b:g1] *= np.float32(rng.uniform(0.3, 0.7))
        x += width + gap
    for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.5 else 0):  # shelves, rails
        y = int(rng.uniform(0, hh))
        t = int(rng.integers(2, 12))
        img[y : y + t, int(x0) : int(x1)] = np.clip(base * rng.uniform(0.5, 1.3), 0, 1)
    img = np.clip(img, 0.0, 1.0)
    angle = float(np.clip(rng.normal(0.0, 6.0), -20.0, 20.0))
    tilted = Image.fromarray(to_uint8(img)).rotate(angle, resample=Image.BICUBIC)
    out = np.asarray(tilted, dtype=np.float32)[pad : pad + h, pad : pad + w] / 255.0
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return _camera(np.ascontiguousarray(out), rng, max_defocus=2.0)


# --------------------------------------------------------------------------------------------
# Source pools and views
# --------------------------------------------------------------------------------------------

BUNDLED_PHOTOS: tuple[str, ...] = HELD_OUT_PHOTOS
"""The held-out photos (scikit-image, no download): demo and benchmark, never training."""

MAX_SOURCE_SIDE = 1024
"""User photos are shrunk so that their longer side is at most this (bounds memory)."""


def load_rgb(path: str | Path, max_side: int | None = MAX_SOURCE_SIDE) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (:func:`mofme.data.io.load_image`: EXIF
    orientation applied, grey / palette / 16-bit converted, alpha dropped).

    Images whose longer side exceeds ``max_side`` are shrunk. Raises :class:`MofmeError`
    naming the file if it cannot be read.
    """
    rgb = to_uint8(load_image(path).rgb)
    if max_side is not None and max(rgb.shape[:2]) > max_side:
        f = max_side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS))
    return rgb


@functools.lru_cache(maxsize=1)
def _bundled_photos() -> tuple[np.ndarray, ...]:
    return tuple(package_photo(name) for name in BUNDLED_PHOTOS)


def image_files(folder: str | Path) -> list[Path]:
    """Image files (by suffix) under ``folder``, recursively, in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MofmeError(f"source folder {folder} does not exist or is not a folder")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise MofmeError(f"source folder {folder} holds no image files")
    return files


def clean_sources(
    folder: str | Path | None = None, include_bundled: bool = True
) -> list[np.ndarray]:
    """Clean photos as ``(H, W, 3)`` uint8 arrays, in a fixed order.

    The bundled scikit-image photos (:data:`BUNDLED_PHOTOS`, unless ``include_bundled`` is
    false) followed by every image file under ``folder`` (sorted paths; shrunk to
    :data:`MAX_SOURCE_SIDE`). The bundled arrays are shared and read-only.
    """
    photos: list[np.ndarray] = list(_bundled_photos()) if include_bundled else []
    if folder is not None:
        photos.extend(load_rgb(p) for p in image_files(folder))
    if not photos:
        raise MofmeError("no clean source photos: give a source folder or include the bundled ones")
    return photos


@dataclass(frozen=True)
class Source:
    """One clean source photo of a training pool; grey photos get a colour cast per view."""

    image: np.ndarray
    grey: bool = False


def training_sources(folder: str | Path | None = None) -> list[Source]:
    """The train pool: package photos disjoint from the held-out ones, then the user's photos
    (``folder``). Dead-leaves images are added per item, not listed here."""
    pool = [Source(package_photo(n), n in GREY_PHOTOS) for n in TRAIN_PHOTOS]
    if folder is not None:
        pool.extend(Source(load_rgb(p)) for p in image_files(folder))
    return pool


def make_pool(kind: str, source_folder: str | Path | None = None) -> list[Source]:
    """``"train"``: :func:`training_sources`; ``"heldout"``: the held-out photos (+ ``folder``);
    ``"user"``: the photos in ``folder`` alone."""
    if kind == "user" and source_folder is not None:
        return [Source(load_rgb(p)) for p in image_files(source_folder)]
    if kind == "train":
        return training_sources(source_folder)
    if kind == "heldout":
        return [Source(p) for p in clean_sources(source_folder)]
    raise MofmeError(f"unknown content pool {kind!r}; use train or heldout")


def training_view(
    pool: Sequence[Source],
    size_hw: tuple[int, int],
    rng: np.random.Generator,
    leaves_share: float = LEAVES_SHARE,
    structure_share: float = 0.0,
    soft_share: float = 0.0,
) -> np.ndarray:
    """A clean training view ``(h, w, 3)`` float32: :func:`planks` (``structure_share``), dead
    leaves (``leaves_share`` of the rest) or a random view of a pool photo; ``soft_share`` of
    the views are then made soft, pale and low in contrast (:func:`soft_photo`)."""
    # No draw when a share is 0, so data written without the option stays bit-identical.
    if structure_share > 0 and rng.random() < structure_share:
        view = planks(size_hw, rng)
    elif not pool or rng.random() < leaves_share:
        view = dead_leaves(size_hw, rng)
    else:
        src = pool[int(rng.integers(len(pool)))]
        view = random_view(src.image, size_hw, rng)
        view = colour_cast(view, rng) if src.grey else view
    if soft_share > 0 and rng.random() < soft_share:
        view = soft_photo(view, rng)
    return view


def random_view(img: np.ndarray, size_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``img`` ``(H, W, 3)`` (uint8, or float in [0, 1]) resized to ``size_hw``
    with a random horizontal flip. The crop covers 40–100 % of the largest window of the target
    aspect, but is never upscaled more than 1.25x when the photo allows. -> float32 ``(h, w, 3)``.
    """
    h, w = size_hw
    arr = to_uint8(img)
    ih, iw = arr.shape[:2]
    aspect = w / h
    ch_max = min(ih, iw / aspect)
    frac_min = min(1.0, max(0.4, (h / 1.25) / ch_max))
    ch = ch_max * rng.uniform(frac_min, 1.0)
    cw = ch * aspect
    y0 = rng.uniform(0.0, ih - ch)
    x0 = rng.uniform(0.0, iw - cw)
    view = Image.fromarray(arr).resize((w, h), Image.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch))
    out = np.asarray(view, dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        out = out[:, ::-1].copy()
    return out
