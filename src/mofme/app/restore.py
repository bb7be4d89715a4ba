"""The app's restore paths, without any Gradio: an image file to a result PNG plus routing
maps, a video file to a restored (or side-by-side) video. Both use ``mofme.load()``."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mofme.data.io import image_size, load_image, save_image, to_uint8
from mofme.errors import MofmeError
from mofme.inference.videoio import probe

#: Default pixel limit per image (megapixels). On the 2-core CPU this was built on the tiny
#: bundled model restores about 0.1 MP/s, so 40 MP is already several minutes; raise it with
#: ``mofme app --max-megapixels`` on a faster machine.
MAX_MEGAPIXELS = 40.0
#: Longest side of the pictures sent to the browser (the download keeps full resolution).
PREVIEW_SIDE = 1280
#: Frame limit for the video tab ("a short video"); ``mofme video`` has none.
MAX_VIDEO_FRAMES = 2000
#: Tile overlap of ``mofme.load()`` (its default), for reporting the tile count.
TILE_OVERLAP = 32


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
    from mofme.inference import policy
    from mofme.inference.tiling import tile_starts

    path = Path(path)
    hw = image_size(path)
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
        before=to_uint8(_resize(img.rgb, before_hw)),
        after=to_uint8(_resize(restored, before_hw)),
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
    """Audio streams in a video file (0 when it cannot be opened)."""
    try:
        return probe(path).audio_streams
    except MofmeError:
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
        audio_in=info.audio_streams,
        audio_out=_audio_streams(Path(result.path)),
        notes=list(result.notes),
    )
