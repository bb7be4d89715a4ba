"""``mofme app``: a local web app (Gradio) for restoring photos and videos, and looking inside.

The page has two tabs:

* **Image**: drop a weathered photo (or pick a held-out example: synthetic weather on
  scikit-image's photos, seeds the bundled weights never trained on), compare before/after with
  a slider, download the result as a PNG at full resolution and bit depth (16-bit and alpha kept,
  written by the same code as ``mofme restore``). *Look inside* shows, over the photo, which
  expert each 8×8 token chose (top-1 expert) and how many experts were active per token, per
  FME layer, and routing controls (top-k / top-p / dense) that re-run the model and report the
  mean number of active experts and the time per image.
* **Video**: upload a short clip; it is restored frame by frame with the reference-frame model
  by ``mofme.load("video").restore_video`` (the code of ``mofme video``: frame timing and sound
  kept), with a progress bar, as a side-by-side video.

Everything runs locally: no share link, analytics off, fonts served by the app itself (the test
checks that the page makes no request outside the local server). Large images are tiled
(the same automatic rule as ``mofme restore``); images above ``max_megapixels`` (a limit of this
app, raisable with ``mofme app --max-megapixels``) are refused with a message instead of
hours of CPU time. Every error a user can cause (a text file, a broken video, a huge image, a
mismatched checkpoint) shows up as a readable message in the page, never a traceback.

>>> from mofme.app import build_app, launch_options
>>> demo = build_app(device="cpu")
>>> demo.launch(server_name="127.0.0.1", server_port=7860, **launch_options())  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import functools
import html
import logging
import os
import shutil
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Gradio reads these when it is imported: no usage analytics, no version check, no telemetry.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import gradio as gr  # after the environment settings above
import numpy as np
from PIL import Image

from mofme.errors import MofmeError

log = logging.getLogger("mofme.app")

#: Default pixel limit per image (megapixels). On the 2-core CPU this was built on the tiny
#: bundled model restores about 0.1 MP/s, so 40 MP is already several minutes; raise it with
#: ``mofme app --max-megapixels`` on a faster machine.
MAX_MEGAPIXELS = 40.0
#: Longest side of the pictures sent to the browser (the download keeps full resolution).
PREVIEW_SIDE = 1280
#: Frame limit for the video tab ("a short video"); ``mofme video`` has none.
MAX_VIDEO_FRAMES = 2000
#: Held-out examples: (scikit-image photo, weather type). Seeds from ``mofme.demo.DEMO_SEED``,
#: which the bundled weights never trained on.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("chelsea", "snow"),
    ("coffee", "rain"),
    ("astronaut", "raindrop"),
    ("rocket", "haze"),
    ("motorcycle", "rain_fog"),
)
EXAMPLE_SIZE_HW = (320, 448)
#: Tile overlap of ``mofme.load()`` (its default), for reporting the tile count.
TILE_OVERLAP = 32
#: Result files are deleted after this many seconds (and when the app exits).
RESULTS_KEEP_S = 3600
ROUTING_KINDS = ("top-k", "top-p", "dense")
CKPT_CHOICES = ("image", "video")


# ---------------------------------------------------------------------------------- models


@dataclass
class _Loaded:
    """A ``mofme.load()`` restorer plus the lock that keeps routing changes and the pass that
    uses them together (the routing is model state shared by every browser session)."""

    restorer: Any  # mofme.api.Restorer
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cfg(self) -> Any:  # ModelConfig
        return self.restorer.model.cfg


class ModelCache:
    """Checkpoints by name (``image``, ``video`` or a path), loaded once per app on ``device``."""

    def __init__(self, device: str = "cpu") -> None:
        from mofme.device import resolve_device

        self.device = resolve_device(device)
        self._models: dict[str, _Loaded] = {}
        self._lock = threading.Lock()

    def get(self, spec: str) -> _Loaded:
        """The loaded model for ``spec``; raises ``MofmeError`` for a bad name or file."""
        from mofme.api import load

        spec = (spec or "image").strip()
        with self._lock:
            if spec not in self._models:
                self._models[spec] = _Loaded(load(spec, device=str(self.device)))
            return self._models[spec]


def _routing_spec(kind: str, k: float, p: float) -> str:
    """The UI's routing controls as a routing spec (``topk:K``, ``topp:P``, ``dense``)."""
    if kind == "top-k":
        return f"topk:{int(k)}"
    if kind == "top-p":
        return f"topp:{float(p):g}"
    return "dense"


@contextmanager
def _routing(loaded: _Loaded, spec: str | None) -> Iterator[str]:
    """Use routing ``spec`` (default: the checkpoint's) for one request, then restore it."""
    with loaded.lock:
        old = loaded.restorer.routing
        loaded.restorer.set_routing(spec or old)
        try:
            yield loaded.restorer.routing
        finally:
            loaded.restorer.set_routing(old)


# ------------------------------------------------------------------------------ image path


@dataclass
class RoutingMaps:
    """Per FME layer, the top-1 expert and the number of active experts for every pixel of a
    preview-sized canvas, with per-expert token shares for the legends."""

    top1: list[np.ndarray]  # per layer (h, w) int16
    active: list[np.ndarray]  # per layer (h, w) int16
    num_experts: int
    mean_active: list[float]  # per layer, over all tokens
    top1_share: list[np.ndarray]  # per layer (E,): fraction of tokens whose top-1 is expert e
    active_share: list[np.ndarray]  # per layer (E,): fraction of tokens using expert e


@dataclass
class ImageResult:
    """What one restoration produced (previews are uint8, at most ``PREVIEW_SIDE`` pixels)."""

    before: np.ndarray
    after: np.ndarray
    file: Path
    maps: RoutingMaps
    seconds: float
    size_hw: tuple[int, int]
    tiles: int
    routing: str
    bit_depth: int
    ckpt: str
    device: str
    map_note: str = ""


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _preview_size(h: int, w: int, max_pixels: float | None = None) -> tuple[int, int]:
    """``(h, w)`` shrunk to at most ``PREVIEW_SIDE`` per side (and ``max_pixels`` in all)."""
    scale = min(1.0, PREVIEW_SIDE / max(h, w))
    if max_pixels is not None:
        scale = min(scale, (max_pixels / (h * w)) ** 0.5)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Float RGB -> float RGB of ``size_hw`` (area-averaged, so thin streaks stay visible)."""
    if rgb.shape[:2] == size_hw:
        return rgb
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(rgb[:, :, c], np.float32)).resize(
                (size_hw[1], size_hw[0]), Image.Resampling.BOX
            )
        )
        for c in range(3)
    ]
    return np.clip(np.stack(planes, axis=2), 0.0, 1.0).astype(np.float32)


def _labels_to(grid: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """An ``(H, W)`` label image resized (nearest) to ``size_hw``, as int16."""
    grid = np.ascontiguousarray(grid, np.int32)
    if grid.shape == size_hw:
        return grid.astype(np.int16)
    img = Image.fromarray(grid).resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST)
    return np.asarray(img).astype(np.int16)


def maps_from(rmap: Any, canvas_hw: tuple[int, int]) -> RoutingMaps:
    """A ``mofme.api.RoutingMap`` as preview-sized label images plus legend numbers."""
    layers = int(rmap.expert.shape[0])
    e = rmap.num_experts
    tokens = max(1, int(rmap.expert[0].size))
    return RoutingMaps(
        top1=[_labels_to(rmap.pixels("expert", i), canvas_hw) for i in range(layers)],
        active=[_labels_to(rmap.pixels("active", i), canvas_hw) for i in range(layers)],
        num_experts=e,
        mean_active=[float(rmap.active[i].mean()) for i in range(layers)],
        top1_share=[rmap.usage(i) for i in range(layers)],
        active_share=[(rmap.weights[i] > 0).reshape(-1, e).sum(0) / tokens for i in range(layers)],
    )


def _pixel_count(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` from the file header without decoding; ``None`` if Pillow cannot
    tell (the full reader then decides)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.height, img.width
    except Image.DecompressionBombError:
        # Pillow refuses to even open it: far beyond any sensible limit.
        raise MofmeError(
            f"{path.name} is too large to open safely (over "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels)"
        ) from None
    except Exception:
        return None


def _check_size(name: str, h: int, w: int, max_megapixels: float) -> None:
    if h * w > max_megapixels * 1e6:
        raise MofmeError(
            f"{name} is {w}×{h} ({h * w / 1e6:.0f} MP); this app restores up to "
            f"{max_megapixels:g} MP per image (start it with --max-megapixels to raise the "
            "limit, or use mofme restore, which tiles any size)"
        )


def restore_file(
    path: str | os.PathLike[str],
    cache: ModelCache,
    out_dir: Path,
    ckpt: str = "image",
    routing: str | None = None,
    max_megapixels: float = MAX_MEGAPIXELS,
) -> ImageResult:
    """Restore the image file ``path`` with ``mofme.load(ckpt)`` and map its routing.

    The tiling is ``mofme restore``'s ``--tile auto`` (``mofme.inference.policy.auto_tile``: the
    checkpoint's model card, else whole image up to 1 MP and 512-pixel tiles beyond). A
    whole-image restoration also gives the routing map, from the same pass. A tiled one gets
    its routing map from an extra whole-image pass over a copy of at most 1 MP, and the page
    says so. The result PNG (full resolution; 16-bit when the input is 16-bit or float; alpha
    kept) is written to ``out_dir/<stem>_restored.png``.

    Raises:
        MofmeError: with a readable message for anything the user can fix.
    """
    from mofme.data.io import load_image, save_image
    from mofme.inference import policy
    from mofme.inference.tiling import tile_starts

    path = Path(path)
    hw = _pixel_count(path)
    if hw is not None:
        _check_size(path.name, *hw, max_megapixels)  # before decoding anything
    img = load_image(path)
    h, w = img.rgb.shape[:2]
    _check_size(path.name, h, w, max_megapixels)
    loaded = cache.get(ckpt)
    before_hw = _preview_size(h, w)
    note = ""
    tile = policy.auto_tile(loaded.restorer.model, h, w)
    with _routing(loaded, routing) as used:
        if tile is None:
            rmap = loaded.restorer.routing_map(img.rgb)
            restored, seconds, tiles = rmap.restored, rmap.seconds, 1
        else:
            start = time.perf_counter()
            restored = loaded.restorer.restore(img.rgb)
            seconds = time.perf_counter() - start
            stride = max(1, tile - TILE_OVERLAP)
            tiles = len(tile_starts(h, tile, stride)) * len(tile_starts(w, tile, stride))
            small_hw = _preview_size(h, w, policy.AUTO_MAX_PIXELS)
            rmap = loaded.restorer.routing_map(_resize(img.rgb, small_hw))
            copy = "" if small_hw == (h, w) else f" over a {small_hw[1]}×{small_hw[0]} copy"
            note = (
                f"The routing maps come from one whole-image pass{copy}; the restoration ran "
                f"in {tiles} tiles of {tile} pixels."
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    out = save_image(
        out_dir / f"{path.stem}_restored.png", restored, alpha=img.alpha, bit_depth=img.bit_depth
    )
    return ImageResult(
        before=_to_uint8(_resize(img.rgb, before_hw)),
        after=_to_uint8(_resize(restored, before_hw)),
        file=out,
        maps=maps_from(rmap, before_hw),
        seconds=seconds,
        size_hw=(h, w),
        tiles=tiles,
        routing=used,
        bit_depth=img.bit_depth,
        ckpt=ckpt,
        device=str(cache.device),
        map_note=note,
    )


# ------------------------------------------------------------------------------ pictures


@functools.lru_cache(maxsize=8)
def expert_palette(num_experts: int) -> np.ndarray:
    """``(E, 3)`` uint8 colours, distinct for neighbouring expert ids (tab10 / tab20 / hsv)."""
    from matplotlib import colormaps

    if num_experts <= 10:
        colours = colormaps["tab10"](np.arange(num_experts))
    elif num_experts <= 20:
        # tab20 pairs a dark and a light shade; order all darks first so 0..9 stay distinct.
        order = [*range(0, 20, 2), *range(1, 20, 2)][:num_experts]
        colours = colormaps["tab20"](np.array(order))
    else:
        colours = colormaps["hsv"](np.linspace(0, 1, num_experts, endpoint=False))
    return (colours[:, :3] * 255 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def count_palette(num_experts: int) -> np.ndarray:
    """``(E + 1, 3)`` uint8 colours for 0..E active experts (viridis, light = more)."""
    from matplotlib import colormaps

    levels = np.linspace(0.0, 1.0, num_experts) if num_experts > 1 else np.array([0.5])
    colours = colormaps["viridis"](levels)[:, :3]
    return (np.concatenate([np.zeros((1, 3)), colours]) * 255 + 0.5).astype(np.uint8)


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels where the label differs from the right or lower neighbour (region outlines)."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[:-1, :] |= labels[1:, :] != labels[:-1, :]
    return edge


def overlay(
    photo: np.ndarray, labels: np.ndarray, palette: np.ndarray, opacity: float
) -> np.ndarray:
    """Colour ``labels`` ``(h, w)`` over a desaturated ``photo`` ``(h, w, 3)`` uint8, with thin
    dark outlines between regions so that token boundaries read clearly."""
    grey = photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    base = np.repeat(grey[..., None], 3, axis=2)
    colour = palette[np.clip(labels, 0, len(palette) - 1)].astype(np.float32)
    out = (1.0 - opacity) * base + opacity * colour
    out[labels < 0] = base[labels < 0]
    out[_edges(labels)] *= 0.55
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _hex(rgb: np.ndarray) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def expert_legend(maps: RoutingMaps, layer: int) -> str:
    """HTML legend: one swatch per expert with the share of tokens choosing it first, and the
    share of tokens using it at all (as a bar)."""
    palette = expert_palette(maps.num_experts)
    rows = []
    for e in range(maps.num_experts):
        first = maps.top1_share[layer][e]
        used = maps.active_share[layer][e]
        rows.append(
            f'<div class="mofme-leg-row"><span class="mofme-swatch" '
            f'style="background:{_hex(palette[e])}"></span>'
            f'<span class="mofme-leg-name">expert {e}</span>'
            f'<span class="mofme-bar"><span style="width:{100 * used:.1f}%;'
            f'background:{_hex(palette[e])}"></span></span>'
            f'<span class="mofme-leg-num" title="tokens choosing it first">{100 * first:.0f}%'
            f'</span><span class="mofme-leg-num mofme-dim" title="tokens using it">'
            f"{100 * used:.0f}%</span></div>"
        )
    head = (
        '<div class="mofme-leg-row mofme-leg-head"><span></span>'
        '<span class="mofme-leg-name"></span><span class="mofme-bar-head">used by</span>'
        '<span class="mofme-leg-num">top-1</span><span class="mofme-leg-num mofme-dim">used'
        "</span></div>"
    )
    return f'<div class="mofme-legend" id="expert-legend">{head}{"".join(rows)}</div>'


def count_legend(maps: RoutingMaps, layer: int) -> str:
    """HTML legend for the active-experts map: a colour per count 1..E with its token share."""
    palette = count_palette(maps.num_experts)
    counts = maps.active[layer]
    painted = counts[counts > 0]
    total = max(painted.size, 1)
    cells = []
    for k in range(1, maps.num_experts + 1):
        share = float((painted == k).sum()) / total
        dim = "" if share > 0 else " mofme-faint"
        cells.append(
            f'<div class="mofme-count{dim}"><span class="mofme-swatch" '
            f'style="background:{_hex(palette[k])}"></span><b>{k}</b>'
            f"<small>{100 * share:.0f}%</small></div>"
        )
    return (
        f'<div class="mofme-legend mofme-counts" id="count-legend">{"".join(cells)}</div>'
        f'<div class="mofme-caption">mean {maps.mean_active[layer]:.2f} active experts per '
        f"token in layer {layer + 1}</div>"
    )


def render_maps(
    photo: np.ndarray, maps: RoutingMaps, layer: int, opacity: float
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """The two overlays and their legends for one layer."""
    layer = max(0, min(layer, len(maps.top1) - 1))
    experts = overlay(photo, maps.top1[layer], expert_palette(maps.num_experts), opacity)
    counts = overlay(photo, maps.active[layer], count_palette(maps.num_experts), opacity)
    return experts, counts, expert_legend(maps, layer), count_legend(maps, layer)


def stats_markdown(res: ImageResult) -> str:
    """The numbers under the result: routing, active experts, time."""
    h, w = res.size_hw
    mp = h * w / 1e6
    layers = " · ".join(f"L{i + 1} {m:.2f}" for i, m in enumerate(res.maps.mean_active))
    mean = float(np.mean(res.maps.mean_active))
    tiles = "whole image" if res.tiles == 1 else f"{res.tiles} tiles"
    depth = f"{res.bit_depth}-bit"
    return (
        f"| | |\n|---|---|\n"
        f"| **routing** | `{res.routing}` |\n"
        f"| **mean active experts** | **{mean:.2f}** of {res.maps.num_experts} ({layers}) |\n"
        f"| **time per image** | **{res.seconds:.2f} s** ({mp / max(res.seconds, 1e-9):.2f} MP/s"
        f" on {res.device}) |\n"
        f"| **image** | {w}×{h} ({mp:.2f} MP), {tiles}, saved as {depth} PNG |\n"
        f"| **checkpoint** | `{res.ckpt}` |\n" + (f"\n{res.map_note}\n" if res.map_note else "")
    )


# ------------------------------------------------------------------------------ examples


def make_examples(folder: Path) -> list[Path]:
    """Write the held-out example photos (synthetic weather, ``EXAMPLE_SIZE_HW``) to ``folder``."""
    from mofme.data.synth import BUNDLED_PHOTOS, clean_sources
    from mofme.data.weather import WEATHER_TYPES, fit_to_size
    from mofme.demo import DEMO_SEED

    photos = dict(zip(BUNDLED_PHOTOS, clean_sources()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, weather) in enumerate(EXAMPLES):
        path = folder / f"{name}_{weather}.png"
        if not path.exists():
            rng = np.random.default_rng([DEMO_SEED, 50, i])
            clean = fit_to_size(photos[name], EXAMPLE_SIZE_HW)
            degraded = WEATHER_TYPES[weather](clean, rng, "medium")
            Image.fromarray(_to_uint8(degraded)).save(path)
        paths.append(path)
    return paths


def make_video_example(
    folder: Path, frames: int = 16, size_hw: tuple[int, int] = (192, 256)
) -> Path:
    """Write a held-out snowy clip (a camera move over ``coffee`` plus synthetic snow, seeds
    from ``DEMO_SEED``) as ``folder/snowy_coffee.mp4``."""
    from mofme.data.synth import BUNDLED_PHOTOS, clean_sources
    from mofme.data.weather import camera_clip, snow_video
    from mofme.demo import DEMO_SEED
    from mofme.inference.videoio import VideoWriter

    path = folder / "snowy_coffee.mp4"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([DEMO_SEED, 51])
    photo = dict(zip(BUNDLED_PHOTOS, clean_sources()))["coffee"]
    with VideoWriter(path, fps=8) as writer:
        for frame in snow_video(camera_clip(photo, frames, size_hw, rng), rng, "medium"):
            writer.write(frame)
    return path


# ------------------------------------------------------------------------------ video path


@dataclass
class VideoReport:
    """What the video tab shows about a finished restoration."""

    file: Path
    frames: int
    seconds: float
    width: int
    height: int
    fps: float | None
    audio_in: int
    audio_out: int
    notes: list[str]


def _audio_streams(path: Path) -> int:
    import av

    try:
        with av.open(str(path)) as container:
            return len(container.streams.audio)
    except Exception:
        return 0


def restore_video_file(
    path: str | os.PathLike[str],
    cache: ModelCache,
    out_dir: Path,
    ckpt: str = "video",
    side_by_side: bool = True,
    progress: Callable[[int, int | None], None] | None = None,
    max_frames: int = MAX_VIDEO_FRAMES,
    max_megapixels: float = MAX_MEGAPIXELS,
) -> VideoReport:
    """Restore a video with ``mofme.load(ckpt).restore_video`` (the code of ``mofme video``:
    frame timing and sound kept) into ``out_dir``; ``progress(done, total)`` per frame."""
    from mofme.inference.videoio import probe

    path = Path(path)
    info = probe(path)  # a broken or empty file fails here, with a message naming it
    if info.n_frames and info.n_frames > max_frames:
        raise MofmeError(
            f"{path.name} has {info.n_frames} frames; this app restores up to {max_frames} "
            "(use mofme video for long videos)"
        )
    if info.width * info.height > max_megapixels * 1e6:
        raise MofmeError(
            f"{path.name} frames are {info.width}×{info.height}; this app restores up to "
            f"{max_megapixels:g} MP per frame"
        )
    loaded = cache.get(ckpt)
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{path.stem}_{'side_by_side' if side_by_side else 'restored'}.mp4"

    def tick(done: int, total: int | None) -> None:
        # Containers without a frame count are held to the same limit while decoding (the
        # unfinished output is removed when this raises).
        if done > max_frames:
            raise MofmeError(
                f"{path.name} has more than {max_frames} frames; this app restores up to "
                f"{max_frames} (use mofme video for long videos)"
            )
        if progress is not None:
            progress(done, total)

    with loaded.lock:
        result = loaded.restorer.restore_video(
            path, dst, side_by_side=side_by_side, overwrite=True, progress=tick
        )
    return VideoReport(
        file=Path(result.path),
        frames=int(result.frames),
        seconds=float(result.seconds),
        width=info.width,
        height=info.height,
        fps=float(info.fps) if info.fps else None,
        audio_in=_audio_streams(path),
        audio_out=_audio_streams(Path(result.path)),
        notes=list(result.notes),
    )


def video_markdown(res: VideoReport) -> str:
    """The numbers under the video result."""
    if res.audio_in == 0:
        sound = "the input has no sound"
    elif res.audio_out >= res.audio_in:
        sound = f"kept ({res.audio_out} audio stream{'s' if res.audio_out > 1 else ''})"
    else:
        sound = f"**not kept** ({res.audio_out} of {res.audio_in} audio streams)"
    rate = res.frames / max(res.seconds, 1e-9)
    fps = f" at {res.fps:.3g} fps" if res.fps else ""
    notes = "".join(f"| | {html.escape(n)} |\n" for n in res.notes)
    return (
        f"| | |\n|---|---|\n"
        f"| **frames** | {res.frames}{fps}, {res.width}×{res.height} |\n"
        f"| **time** | {res.seconds:.1f} s ({rate:.2f} frames/s) |\n"
        f"| **sound** | {sound} |\n{notes}"
    )


# ------------------------------------------------------------------------------ the page

CSS = """
.gradio-container {max-width: 1320px !important; margin: auto;}
#mofme-header h1 {font-size: 1.9rem; margin-bottom: 0.1rem; letter-spacing: -0.01em;}
#mofme-header p {margin-top: 0; opacity: 0.8;}
.mofme-pill {display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 0.8rem;
  background: var(--color-accent-soft); color: var(--color-accent); margin-right: 6px;}
.mofme-legend {font-size: 0.85rem; line-height: 1.25;}
.mofme-leg-row {display: grid; grid-template-columns: 16px 72px 1fr 42px 42px; gap: 8px;
  align-items: center; padding: 2px 0;}
.mofme-leg-head {font-size: 0.75rem; opacity: 0.7;}
.mofme-swatch {display: inline-block; width: 14px; height: 14px; border-radius: 3px;
  box-shadow: inset 0 0 0 1px rgba(0,0,0,0.25);}
.mofme-bar {height: 8px; border-radius: 4px; background: var(--neutral-200); overflow: hidden;}
.mofme-bar > span {display: block; height: 100%; border-radius: 4px;}
.mofme-leg-num {text-align: right; font-variant-numeric: tabular-nums;}
.mofme-dim {opacity: 0.6;}
.mofme-counts {display: flex; flex-wrap: wrap; gap: 6px;}
.mofme-count {display: flex; align-items: center; gap: 5px; padding: 3px 8px;
  border-radius: 6px; background: var(--neutral-100);}
.mofme-count small {opacity: 0.7; font-variant-numeric: tabular-nums;}
.mofme-faint {opacity: 0.35;}
.mofme-caption {font-size: 0.85rem; margin-top: 6px; opacity: 0.8;}
#mofme-stats table, #video-stats table {font-size: 0.9rem;}
#mofme-stats thead, #video-stats thead {display: none;}
"""

HEADER = """
<div id="mofme-header">
<h1>mofme — remove rain, raindrops, snow and haze</h1>
<p>One sparse mixture of feature-modulation experts (MoFME) for all weather.
<span class="mofme-pill">runs locally</span><span class="mofme-pill">nothing is uploaded
anywhere</span><span class="mofme-pill">look inside the router</span></p>
</div>
"""

LOOK_INSIDE = """
### Look inside: which experts did the work?
The network cuts the image into 8×8-pixel **tokens**. In every FME layer a router sends each
token to a few of its experts (each expert scales and shifts the token's features). Left: the
expert each token relied on most (its **top-1 expert**). Right: **how many experts** were
active for the token — fixed with top-k, adaptive with top-p (more where the weather is harder).
Change the routing on the left and the image is restored again.
"""


def _user_message(exc: BaseException, *paths: object) -> str:
    """A one-line message for the page: temporary upload folders replaced by the file name."""
    text = str(exc).strip() or type(exc).__name__
    for p in paths:
        if p:
            text = text.replace(str(p), Path(str(p)).name)
    return text.splitlines()[0]


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into a ``gr.Error`` (a readable message box), never a traceback.

    ``MofmeError`` messages are meant for users; anything else is a bug or an environment
    problem, logged with its traceback on the server console and summarised in the page.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MofmeError as e:
            raise gr.Error(_user_message(e, *args), print_exception=False) from None
        except Exception as e:
            log.error("mofme app: %s failed:\n%s", fn.__name__, traceback.format_exc())
            raise gr.Error(
                f"unexpected error ({type(e).__name__}: {_user_message(e, *args)}); the server "
                "console has the details",
                print_exception=False,
            ) from None

    return wrapper


def _guard_upload(component: gr.Image) -> gr.Image:
    """Make ``component``'s upload errors (a text file, a corrupt or enormous image) a readable
    message instead of Gradio's bare "Error".

    Gradio opens an uploaded image with Pillow before any event handler runs, so this has to
    wrap the component's own ``preprocess`` (on this instance only; subclassing a Gradio
    component would make Gradio write a ``.pyi`` stub next to this module).
    """
    original = component.preprocess
    # Gradio's page sends a failed upload's change event twice; one message is enough, so a
    # repeat of the last failure within a few seconds passes ``None`` (nothing to do) instead.
    last_failure: dict[str, float] = {}

    @functools.wraps(original)
    def preprocess(payload: Any) -> Any:
        name = str(getattr(payload, "orig_name", None) or "the uploaded file")
        path = str(getattr(payload, "path", None))
        if time.monotonic() - last_failure.get(path, -1e9) < 5.0:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return original(payload)
        except gr.Error:
            raise
        except Exception as e:
            last_failure.clear()
            last_failure[path] = time.monotonic()
            if isinstance(e, Image.DecompressionBombError):
                reason = (
                    f"{name} is too large to open safely (over "
                    f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels)"
                )
            else:
                reason = (
                    f"{name} is not an image this app can read ({_user_message(e, path)}). "
                    "Try a PNG, JPEG, TIFF, WebP or BMP file."
                )
            raise gr.Error(reason, print_exception=False) from None

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def _kind_of(selection: str) -> str:
    return {"topk": "top-k", "topp": "top-p"}.get(selection, "dense")


def build_app(
    device: str = "cpu",
    ckpt: str = "image",
    video_ckpt: str = "video",
    max_megapixels: float = MAX_MEGAPIXELS,
    workdir: str | os.PathLike[str] | None = None,
) -> gr.Blocks:
    """The Gradio app (call ``.launch(**launch_options())`` on it, or use ``mofme app``).

    The image checkpoint is loaded up front, so that a bad path fails at start-up rather than
    on the first click; other checkpoints load on first use and stay loaded.

    Args:
        device: ``cpu`` (default), ``auto`` (CUDA when present), ``cuda``, ``cuda:1``, ...
        ckpt: image checkpoint: ``image``, ``video`` or a ``.safetensors`` path.
        video_ckpt: checkpoint for the video tab.
        max_megapixels: refuse larger images with a message (they would take too long).
        workdir: where examples and results are written (default: a temporary folder removed
            when the process exits).
    """
    cache = ModelCache(device)
    first = cache.get(ckpt)  # fail early on a bad checkpoint
    num_experts = int(first.cfg.num_experts)
    default = first.cfg.routing
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="mofme-app-"))
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    workdir = Path(workdir)
    examples = make_examples(workdir / "examples")
    video_example = make_video_example(workdir / "examples")
    results = workdir / "results"
    ckpt_choices = list(dict.fromkeys([ckpt, *CKPT_CHOICES]))
    layer_choices = [f"layer {i + 1}" for i in range(int(first.cfg.depth))]

    def new_folder() -> Path:
        # One folder per request: result names follow the input, and never collide. Folders
        # older than RESULTS_KEEP_S go, so a long-running app does not fill the disk (the
        # page has its own copy of every result it shows).
        if results.is_dir():
            cutoff = time.time() - RESULTS_KEEP_S
            for old in results.iterdir():
                if old.is_dir() and old.stat().st_mtime < cutoff:
                    shutil.rmtree(old, ignore_errors=True)
        return results / uuid.uuid4().hex[:12]

    def layer_index(layer: str) -> int:
        return layer_choices.index(layer) if layer in layer_choices else 0

    @_guard
    def restore(
        path: str | None,
        ckpt_name: str,
        kind: str,
        k: float,
        p: float,
        layer: str,
        opacity: float,
    ) -> tuple[Any, ...]:
        if not path:
            return (gr.skip(),) * 9  # the image was cleared: keep what is shown
        experts = int(cache.get(ckpt_name).cfg.num_experts)
        res = restore_file(
            path,
            cache,
            new_folder(),
            ckpt=ckpt_name,
            routing=_routing_spec(kind, min(int(k), experts), p),
            max_megapixels=max_megapixels,
        )
        expert_img, count_img, expert_html, count_html = render_maps(
            res.before, res.maps, layer_index(layer), opacity
        )
        return (
            (res.before, res.after),
            str(res.file),
            stats_markdown(res),
            expert_img,
            count_img,
            expert_html,
            count_html,
            {"photo": res.before, "maps": res.maps},
            kind,
        )

    # Moving a slider also selects its routing kind (k means top-k, p means top-p).
    def restore_topk(*args: Any) -> tuple[Any, ...]:
        return restore(args[0], args[1], "top-k", *args[3:])

    def restore_topp(*args: Any) -> tuple[Any, ...]:
        return restore(args[0], args[1], "top-p", *args[3:])

    @_guard
    def redraw(state: dict[str, Any] | None, layer: str, opacity: float) -> tuple[Any, ...]:
        if not state:
            return (gr.skip(),) * 4
        return render_maps(state["photo"], state["maps"], layer_index(layer), opacity)

    @_guard
    def checkpoint_changed(ckpt_name: str) -> tuple[Any, ...]:
        cfg = cache.get(ckpt_name).cfg
        e = int(cfg.num_experts)
        return (
            gr.update(value=_kind_of(cfg.routing.selection)),
            gr.update(maximum=e, value=min(cfg.routing.k, e)),
            gr.update(value=cfg.routing.p),
        )

    @_guard
    def restore_video(
        path: str | None,
        ckpt_name: str,
        side: bool,
        # Gradio finds the progress tracker by this default value (its documented idiom).
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        if not path:
            raise gr.Error("upload a video first", print_exception=False)
        progress(0.0, desc="loading the model")

        def tick(done: int, total: int | None) -> None:
            progress((done, total), desc="restoring frames", unit="frames")

        res = restore_video_file(
            path,
            cache,
            new_folder(),
            ckpt=ckpt_name,
            side_by_side=side,
            progress=tick,
            max_megapixels=max_megapixels,
        )
        return str(res.file), video_markdown(res)

    with gr.Blocks(title="mofme — deweathering", analytics_enabled=False) as demo:
        gr.HTML(HEADER)
        with gr.Tab("Image", id="image-tab"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=4, min_width=320):
                    inp = _guard_upload(
                        gr.Image(
                            type="filepath",
                            image_mode=None,  # the file as uploaded: 16-bit and alpha survive
                            sources=["upload", "clipboard"],
                            label="Weathered photo",
                            elem_id="input-image",
                            height=320,
                        )
                    )
                    gr.Examples(
                        examples=[[str(p)] for p in examples],
                        inputs=[inp],
                        label="Held-out examples (synthetic weather on photos the model never saw)",
                        examples_per_page=len(examples),
                    )
                    with gr.Group():
                        ckpt_box = gr.Dropdown(
                            choices=ckpt_choices,
                            value=ckpt,
                            allow_custom_value=True,
                            label="Checkpoint",
                            info="image, video (bundled) or a .safetensors path",
                            elem_id="ckpt",
                        )
                        kind = gr.Radio(
                            list(ROUTING_KINDS),
                            value=_kind_of(default.selection),
                            label="Routing",
                            info="top-k: a fixed number of experts per token; top-p: as many "
                            "as it takes to pass weight p",
                            elem_id="routing-kind",
                        )
                        with gr.Row():
                            k = gr.Slider(
                                1, num_experts, value=min(default.k, num_experts), step=1,
                                label="k", elem_id="routing-k",
                            )  # fmt: skip
                            p = gr.Slider(
                                0.05, 1.0, value=default.p, step=0.05,
                                label="p", elem_id="routing-p",
                            )  # fmt: skip
                    run_btn = gr.Button("Restore", variant="primary", elem_id="restore-btn")
                with gr.Column(scale=6, min_width=420):
                    slider = gr.ImageSlider(
                        label="Before / after (drag the handle)",
                        type="numpy",
                        elem_id="result-slider",
                        max_height=560,
                        interactive=False,
                    )
                    out_file = gr.File(
                        label="Download: full resolution PNG (16-bit and alpha kept)",
                        elem_id="result-file",
                        interactive=False,
                    )
                    stats = gr.Markdown(elem_id="mofme-stats")
            gr.Markdown(LOOK_INSIDE, elem_id="look-inside")
            with gr.Row():
                layer = gr.Radio(layer_choices, value=layer_choices[-1], label="FME layer")
                opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Overlay opacity")
            with gr.Row(equal_height=False):
                with gr.Column():
                    expert_img = gr.Image(
                        label="Top-1 expert per token",
                        height=400,
                        elem_id="expert-map",
                        interactive=False,
                        format="png",
                        buttons=["download", "fullscreen"],
                    )
                    expert_html = gr.HTML(elem_id="expert-legend-box")
                with gr.Column():
                    count_img = gr.Image(
                        label="Active experts per token",
                        height=400,
                        elem_id="count-map",
                        interactive=False,
                        format="png",
                        buttons=["download", "fullscreen"],
                    )
                    count_html = gr.HTML(elem_id="count-legend-box")
            state = gr.State()

        with gr.Tab("Video", id="video-tab"):
            gr.Markdown(
                "Restore a short clip frame by frame with the **reference-frame** video model "
                "(each frame also sees the previous restored frame). Frame timing and sound "
                "are kept, as with `mofme video`."
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=4):
                    vin = gr.Video(
                        label="Weathered video", elem_id="input-video", sources=["upload"]
                    )
                    gr.Examples(
                        examples=[[str(video_example)]],
                        inputs=[vin],
                        label="Held-out example (synthetic snow over a camera move)",
                    )
                    vckpt = gr.Dropdown(
                        choices=list(dict.fromkeys([video_ckpt, *CKPT_CHOICES])),
                        value=video_ckpt,
                        allow_custom_value=True,
                        label="Checkpoint",
                        elem_id="video-ckpt",
                    )
                    side = gr.Checkbox(value=True, label="Side by side (input | restored)")
                    vbtn = gr.Button("Restore video", variant="primary", elem_id="video-btn")
                with gr.Column(scale=6):
                    vout = gr.Video(label="Result", elem_id="result-video", interactive=False)
                    vstats = gr.Markdown(elem_id="video-stats")

        image_inputs = [inp, ckpt_box, kind, k, p, layer, opacity]
        image_outputs = [
            slider, out_file, stats, expert_img, count_img, expert_html, count_html, state, kind,
        ]  # fmt: skip
        maps_out = [expert_img, count_img, expert_html, count_html]
        # All model work shares one queue slot: the models are shared and CPU cores are few.
        heavy = {"concurrency_id": "model", "concurrency_limit": 1}
        inp.change(restore, image_inputs, image_outputs, **heavy)
        run_btn.click(restore, image_inputs, image_outputs, **heavy)
        # .input (user actions only): the handlers set `kind` themselves without a re-run.
        kind.input(restore, image_inputs, image_outputs, **heavy)
        k.release(restore_topk, image_inputs, image_outputs, **heavy)
        p.release(restore_topp, image_inputs, image_outputs, **heavy)
        ckpt_box.input(checkpoint_changed, [ckpt_box], [kind, k, p], **heavy).success(
            restore, image_inputs, image_outputs, **heavy
        )
        layer.change(redraw, [state, layer, opacity], maps_out)
        opacity.release(redraw, [state, layer, opacity], maps_out)
        vbtn.click(restore_video, [vin, vckpt, side], [vout, vstats], **heavy)
    demo.mofme_workdir = workdir  # type: ignore[attr-defined]
    return demo


def theme() -> gr.themes.Base:
    """A calm theme whose fonts are all served locally (no font CDN)."""
    return gr.themes.Soft(
        primary_hue="sky",
        neutral_hue="slate",
        font=[gr.themes.Font("ui-sans-serif"), gr.themes.Font("system-ui"), "sans-serif"],
        font_mono=[gr.themes.Font("ui-monospace"), "monospace"],
    )


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch`` that keep the app local and quiet."""
    return {
        "share": False,
        "theme": theme(),
        "css": CSS,
        "footer_links": [],
        "show_error": True,
        "ssr_mode": False,
        "mcp_server": False,
        "pwa": False,
    }
