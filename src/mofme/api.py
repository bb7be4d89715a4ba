"""The Python API: load a model in one line, restore PIL images, NumPy arrays, tensors, videos.

>>> import mofme
>>> model = mofme.load()                         # bundled all-in-one image model, CPU or CUDA
>>> clean = model.restore(PIL.Image.open("rainy.jpg"))        # PIL in -> PIL out
>>> clean16 = model.restore(np.asarray(array_uint16))          # uint16 (H, W, 3) -> uint16
>>> batch = model.restore(torch.rand(2, 3, 240, 320))          # tensor in -> tensor out
>>> mofme.load("video").restore_video("snowy.mp4", "clean.mp4")  # sound and timing kept
>>> rmap = model.routing_map(PIL.Image.open("rainy.jpg"))      # which expert each token chose

Everything runs through the same code as the command line: ``restore`` uses
``mofme.inference.tiling.restore_image`` with ``mofme restore``'s automatic tiling (whole image
up to 1 MP, 512-pixel overlapping tiles beyond), so ``model.restore(img)`` gives the pixels
``mofme restore`` writes; ``restore_video`` is ``mofme video``
(``mofme.inference.video.restore_video_file``).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mofme.errors import MofmeError

if TYPE_CHECKING:  # torch is imported on first use, so ``import mofme`` stays light
    import torch
    from PIL import Image

    from mofme.inference.video import VideoResult
    from mofme.model.net import MoFMENet

__all__ = ["Restorer", "RoutingMap", "load", "resolve_checkpoint"]

# ITU-R BT.601 luma, the weights Pillow's convert("L") uses: grayscale in -> grayscale out.
_LUMA = (0.299, 0.587, 0.114)
# Smallest tile tried after running out of memory (then the image is given up on).
_MIN_OOM_TILE = 128


def resolve_checkpoint(spec: str | os.PathLike[str]) -> Path:
    """A checkpoint path from a path or a short name (``"image"`` / ``"video"``: bundled weights).

    An existing file of that name wins over the short name.

    >>> resolve_checkpoint("video").name
    'mofme_tiny_video.safetensors'

    Raises:
        MofmeError: neither an existing file nor a bundled short name.
    """
    from mofme.weights import BUNDLED, bundled_path

    path = Path(spec)
    if path.is_file():
        return path
    if str(spec) in BUNDLED:
        return bundled_path(str(spec))
    raise MofmeError(
        f"checkpoint not found: {spec} (give a .safetensors file or one of "
        f"{', '.join(repr(k) for k in BUNDLED)} for the bundled weights)"
    )


def load(
    checkpoint: str | os.PathLike[str] = "image",
    *,
    device: str = "auto",
    routing: str | None = None,
    tile: int | str | None = "auto",
    overlap: int = 32,
    precision: str = "fp32",
    fast: bool = True,
) -> Restorer:
    """Load a model for restoring images and videos.

    Args:
        checkpoint: ``"image"`` (default: the bundled all-in-one image model), ``"video"``
            (the bundled reference-frame video desnowing model) or a ``.safetensors`` path.
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        routing: expert selection, e.g. ``"topk:2"``, ``"topp:0.6"`` or ``"dense"``; default:
            the checkpoint's (see ``Restorer.set_routing`` to change it later).
        tile: ``"auto"`` (whole image up to 1 MP, 512-pixel tiles beyond, as ``mofme restore``),
            ``None`` / ``0`` (always whole image) or a tile side in pixels.
        overlap: tile overlap in pixels.
        precision: ``"fp32"`` (default: exact, the reference), ``"bf16"`` (autocast; the router
            stays fp32), ``"int8"`` (CPU, dynamically quantised Linear layers) or ``"auto"``
            (measure once per machine and model, cached, and take the fastest within the
            command line's quality tolerance, as ``mofme restore`` does by default).
        fast: the CPU fast paths of ``mofme.inference.fast`` (outputs equal to fp32 rounding),
            as the command line uses unless ``--plain``.

    Returns:
        A ``Restorer``.

    Example:
        >>> import mofme
        >>> model = mofme.load()
        >>> model.restore(PIL.Image.open("rainy.jpg")).save("clean.png")
        >>> video = mofme.load("video", device="cpu", routing="topp:0.6")
    """
    from mofme import checkpoint as ckpt
    from mofme.device import resolve_device

    dev = resolve_device(device)
    model = ckpt.load(resolve_checkpoint(checkpoint))
    return Restorer(model, device=dev, routing=routing, tile=tile, overlap=overlap,
                    precision=precision, fast=fast)  # fmt: skip


@dataclass
class RoutingMap:
    """Which experts each token chose in one forward pass (from ``Restorer.routing_map``).

    Token ``(i, j)`` covers pixels ``[i·patch, (i+1)·patch) × [j·patch, (j+1)·patch)`` of the
    (reflect-padded) input; the grid is ``ceil(H / patch) × ceil(W / patch)``.

    Attributes:
        weights: ``(L, gh, gw, E)`` float32 routing weights per FME layer, mostly exact zeros.
        expert: ``(L, gh, gw)`` int64, the expert with the largest weight per token.
        active: ``(L, gh, gw)`` int64, how many experts have a nonzero weight per token.
        patch: the model's patch size in pixels.
        size: ``(H, W)`` of the input image.
        routing: the routing used, e.g. ``"topk:2"``.
        seconds: wall time of the forward pass.
        restored: the restored image, of the same kind as the input (as ``Restorer.restore``).

    >>> rmap = mofme.load().routing_map(img)
    >>> rmap.expert.shape, rmap.mean_active
    ((2, 30, 40), 2.0)
    >>> per_pixel = rmap.pixels("expert", layer=0)    # (H, W), for an overlay on the image
    """

    weights: np.ndarray
    expert: np.ndarray
    active: np.ndarray
    patch: int
    size: tuple[int, int]
    routing: str
    seconds: float
    restored: Any = None

    @property
    def num_experts(self) -> int:
        """E, the experts per layer."""
        return int(self.weights.shape[-1])

    @property
    def mean_active(self) -> float:
        """Mean active experts per token over all layers and tokens."""
        return float(self.active.mean())

    def usage(self, layer: int | None = None) -> np.ndarray:
        """``(E,)``: fraction of tokens whose top expert is each expert (one layer, or all)."""
        chosen = self.expert if layer is None else self.expert[layer]
        counts = np.bincount(chosen.ravel(), minlength=self.num_experts)
        return counts / max(1, chosen.size)

    def pixels(self, kind: str = "expert", layer: int = 0) -> np.ndarray:
        """``kind`` (``"expert"`` or ``"active"``) of ``layer`` upsampled to ``(H, W)``, int64."""
        if kind not in ("expert", "active"):
            raise ValueError(f"kind must be 'expert' or 'active', got {kind!r}")
        grid = (self.expert if kind == "expert" else self.active)[layer]
        full = np.repeat(np.repeat(grid, self.patch, axis=0), self.patch, axis=1)
        return full[: self.size[0], : self.size[1]]


class Restorer:
    """A loaded model plus everything needed to restore images and videos with it.

    Usually made by ``mofme.load()``; ``Restorer(model)`` wraps any ``MoFMENet`` (prepared in
    place as the command line prepares it: moved to ``device``, eval mode, the CPU fast paths
    unless ``fast=False``, the ``precision``).

    ``restore`` accepts and returns the same kind of image:

    - a PIL image (RGB, RGBA, L, LA, I;16, I, F, CMYK) -> the same mode and size, alpha kept
      unchanged; palette and 1-bit images are restored in RGB(A) and come back as RGB(A);
    - a NumPy array ``(H, W, 3|4)``, ``(H, W)`` or ``(H, W, 1|2)``, uint8 / uint16 (scaled by
      their range) or float (taken as [0, 1]) -> the same shape and dtype; grey in, grey out
      (the BT.601 luma of the restored colour); alpha kept unchanged;
    - a tensor ``(3, H, W)`` or ``(B, 3, H, W)``, float in [0, 1] or uint8 -> the same shape,
      dtype and device.

    Example:
        >>> model = mofme.load()
        >>> out = model.restore(np.zeros((240, 320, 3), np.uint8))
        >>> out.shape, out.dtype
        ((240, 320, 3), dtype('uint8'))
    """

    def __init__(
        self,
        model: MoFMENet,
        *,
        device: str | torch.device | None = None,
        routing: str | None = None,
        tile: int | str | None = "auto",
        overlap: int = 32,
        precision: str = "fp32",
        fast: bool = True,
    ) -> None:
        from mofme.device import resolve_device
        from mofme.inference.options import InferenceOptions

        dev = resolve_device(device) if isinstance(device, str) else device
        if dev is not None:
            model = model.to(dev)
        self.model = model.eval()
        # One forward at a time: the model keeps per-call state (routing weights of the last
        # pass), and a web app calls from several threads.
        self._lock = threading.RLock()
        self.device = next(model.parameters()).device
        if routing:
            model.set_routing(routing)
        from mofme.inference.precision import PRECISIONS

        if precision not in PRECISIONS:
            raise MofmeError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        # The options of ``mofme restore``, validated and applied by the same code (tile None
        # is the command line's 0: whole image; ``prepare`` sets ``amp``).
        self._opts = InferenceOptions(tile=tile, overlap=overlap, precision=precision,
                                      plain=not fast)  # fmt: skip
        chosen = self._opts.prepare(self.model, self.device)
        #: One line on the precision in use (and why, for ``"auto"``).
        self.precision_note: str = getattr(chosen, "note", "")

    # -- settings -----------------------------------------------------------------------------

    @property
    def in_channels(self) -> int:
        """3 for an image model, 6 for a reference-frame video model."""
        return int(self.model.cfg.in_channels)

    @property
    def routing(self) -> str:
        """The current expert selection, e.g. ``"topk:2"``."""
        return self.model.cfg.routing.describe()

    def set_routing(self, spec: str) -> None:
        """Change the expert selection: ``"topk:K"``, ``"topp:P[:KMIN[:KMAX]]"`` or ``"dense"``.

        >>> model.set_routing("topp:0.6")
        """
        self.model.set_routing(spec)

    def __repr__(self) -> str:
        cfg = self.model.cfg
        return (f"Restorer(dim={cfg.dim}, depth={cfg.depth}, experts={cfg.num_experts}, "
                f"in_channels={cfg.in_channels}, routing={self.routing!r}, device={self.device})")  # fmt: skip

    # -- images -------------------------------------------------------------------------------

    def restore(self, x: Any) -> Any:
        """Restore one image (PIL / NumPy) or a batch of tensors; same kind out.

        Args:
            x: a ``PIL.Image.Image``; a NumPy array ``(H, W, 3|4)``, ``(H, W)``, ``(H, W, 1|2)``
                (uint8, uint16 or float in [0, 1]); or a tensor ``(3, H, W)`` / ``(B, 3, H, W)``
                (float in [0, 1] or uint8). Any size.

        Returns:
            The restored image, of the same type, shape, dtype (bit depth) and mode as ``x``;
            an alpha channel is passed through unchanged. Tensors come back on their own
            device.

        Raises:
            MofmeError: an unsupported type, layout or dtype, or NaN / inf values.

        Example:
            >>> from PIL import Image
            >>> clean = mofme.load().restore(Image.open("snowy.png"))
            >>> clean.mode, clean.size
            ('RGB', (640, 480))
        """
        return self._restore_any(x, whole=False)

    def _restore_any(self, x: Any, whole: bool) -> Any:
        import torch

        if isinstance(x, torch.Tensor):
            return self._restore_tensor(x, whole)
        if isinstance(x, np.ndarray):
            return self._restore_array(x, whole)
        if _is_pil(x):
            return self._restore_pil(x, whole)
        raise MofmeError(
            f"cannot restore a {type(x).__name__}: give a PIL image, a NumPy array or a tensor"
        )

    def _run(self, x: torch.Tensor, whole: bool = False) -> torch.Tensor:
        """``(B, 3, H, W)`` float32 in [0, 1] -> ``(B, 3, H, W)`` float32 on the model device.

        ``mofme restore``'s tile choice (``whole``: one pass, no tiles, for routing maps); out
        of memory -> tiles, halved down to 128 pixels.
        """
        from mofme.inference.video import still_input

        # A video model on a still image: its first-frame input (zero reference).
        x = still_input(x, self.in_channels)
        tile = None if whole else self._opts.tile_for(*x.shape[-2:], self.model)
        with self._lock:
            return self._run_tiles(x, tile, whole)

    def _run_tiles(self, x: torch.Tensor, tile: int | None, whole: bool) -> torch.Tensor:
        import torch

        from mofme.inference.options import AUTO_TILE
        from mofme.inference.tiling import restore_image

        while True:
            try:
                return restore_image(self.model, x, tile=tile, overlap=self._opts.overlap,
                                     batch_tiles=self._opts.batch_tiles_on(self.device),
                                     amp=self._opts.amp)  # fmt: skip
            except torch.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if whole:
                    raise MofmeError(
                        f"out of memory for a whole-image pass over {x.shape[-2]}x{x.shape[-1]}"
                        " pixels; downscale the image for a routing map"
                    ) from None
                tile = AUTO_TILE if tile is None else tile // 2
                if tile < _MIN_OOM_TILE or tile <= self._opts.overlap:
                    raise MofmeError(
                        f"out of memory restoring a {x.shape[-2]}x{x.shape[-1]} image even "
                        f"with {_MIN_OOM_TILE}-pixel tiles"
                    ) from None

    def _restore_tensor(self, x: torch.Tensor, whole: bool) -> torch.Tensor:
        import torch

        if x.ndim not in (3, 4) or x.shape[-3] != 3 or min(x.shape[-2:]) < 1:
            raise MofmeError(f"expected a tensor (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            inp = x.float() / 255.0
        elif x.is_floating_point():
            inp = x.float()
            if not bool(torch.isfinite(inp).all()):
                raise MofmeError("the input tensor contains NaN or infinite values")
            inp = inp.clamp(0.0, 1.0)
        else:
            raise MofmeError(f"unsupported tensor dtype {x.dtype}: use float in [0, 1] or uint8")
        batch = inp if x.ndim == 4 else inp.unsqueeze(0)
        if batch.shape[0] == 0:
            return x.clone()
        out = self._run(batch, whole)
        out = out if x.ndim == 4 else out[0]
        if x.dtype == torch.uint8:
            out = (out * 255.0).round().clamp(0, 255)
        return out.to(device=x.device, dtype=x.dtype)

    def _restore_array(self, x: np.ndarray, whole: bool) -> np.ndarray:
        from mofme.data.io import to_numpy, to_tensor

        rgb, alpha, grey, scale = _split_array(x)
        out = to_numpy(self._run(to_tensor(rgb).unsqueeze(0), whole))  # (H, W, 3) float32 in [0, 1]
        planes = out @ np.asarray(_LUMA, np.float32) if grey else out  # (H, W) or (H, W, 3)
        if scale:
            planes = np.rint(np.clip(planes, 0.0, 1.0) * scale)
        planes = planes.astype(x.dtype)
        if x.ndim == 2:
            return planes
        stack = [planes[:, :, None] if grey else planes]
        if alpha is not None:
            stack.append(alpha[:, :, None])  # the input's own values, untouched
        return np.concatenate(stack, axis=2)

    def _restore_pil(self, img: Image.Image, whole: bool) -> Image.Image:
        from PIL import Image

        mode = img.mode
        if mode in ("RGB", "RGBA", "L", "LA", "I;16", "F"):
            array = np.asarray(img)
            return Image.fromarray(self._restore_array(array, whole))
        if mode == "I":
            # 32-bit integer grey (Pillow's mode for many 16-bit files): 0..65535 expected.
            array = np.asarray(img)
            if array.min() < 0 or array.max() > 65535:
                raise MofmeError("mode I image values outside 0..65535 are not supported")
            out = self._restore_array(array.astype(np.uint16), whole).astype(np.int32)
            return Image.fromarray(out)
        # Palette, 1-bit, CMYK, YCbCr, ...: restore in RGB(A), return RGB(A) (no faithful way
        # back to a palette); convert CMYK / YCbCr back, which Pillow does exactly enough.
        has_alpha = mode in ("PA", "RGBa", "La") or "transparency" in img.info
        rgb = img.convert("RGBA" if has_alpha else "RGB")
        out = Image.fromarray(self._restore_array(np.asarray(rgb), whole))
        if mode in ("CMYK", "YCbCr"):
            return out.convert(mode)
        return out

    # -- routing --------------------------------------------------------------------------------

    def routing_map(self, x: Any) -> RoutingMap:
        """Restore ``x`` in one whole-image pass and report which experts every token chose.

        Accepts what ``restore`` accepts (a batch tensor: its first image). The pass is never
        tiled, so the map covers the image as one token grid; very large images cost one
        whole-image forward (downscale them first for an overview).

        Example:
            >>> rmap = mofme.load().routing_map(Image.open("rainy.png"))
            >>> rmap.expert.shape          # (layers, ceil(H/8), ceil(W/8))
            (2, 60, 80)
            >>> rmap.mean_active, rmap.routing
            (2.0, 'topk:2')
        """
        import torch

        from mofme.model.analysis import active_experts

        if isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x[:1]
        with self._lock:
            t0 = time.perf_counter()
            restored = self._restore_any(x, whole=True)
            seconds = time.perf_counter() - t0
            # Per FME layer (1, N, E), left by the forward pass that just ran.
            weights = self.model.routing_weights()
        if isinstance(x, torch.Tensor):
            h, w = x.shape[-2:]
        elif isinstance(x, np.ndarray):
            h, w = x.shape[:2]
        else:
            w, h = x.size
        p = self.model.cfg.patch
        gh, gw = -(-h // p), -(-w // p)
        stacked = torch.stack([wt[0] for wt in weights]).float().cpu()  # (L, N, E)
        stacked = stacked.reshape(len(weights), gh, gw, -1).numpy()
        return RoutingMap(
            weights=stacked,
            expert=stacked.argmax(-1),
            active=active_experts(torch.from_numpy(stacked)).numpy(),
            patch=p,
            size=(int(h), int(w)),
            routing=self.routing,
            seconds=seconds,
            restored=restored,
        )

    # -- video ----------------------------------------------------------------------------------

    def restore_video(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        side_by_side: bool = False,
        overwrite: bool = False,
        fps: float | None = None,
        crf: int = 18,
        keep_audio: bool = True,
        progress: Any = None,
    ) -> VideoResult:
        """Restore a video file or frame folder, streaming, exactly as ``mofme video``.

        A video model (``mofme.load("video")``) uses its reference frame; an image model
        restores frame by frame. The output keeps the input's frame timing (variable frame
        rate included) and sound (copied where the container allows, else re-encoded; a
        frame-folder output has no sound, which ``result.notes`` says).

        Args:
            src: input video file or folder of frames.
            dst: ``.mp4`` / ``.mkv`` / ``.mov`` / ``.m4v`` / ``.avi`` file, or a folder (PNGs).
            side_by_side: write ``input | restored``.
            overwrite: replace an existing ``dst`` file.
            fps: re-time to a constant frame rate (drops the audio); default: input timing.
            crf: H.264 quality, lower is better.
            keep_audio: copy the input's audio (default True).
            progress: ``progress(frames_done, total_or_None)`` after every frame.

        Returns:
            ``VideoResult`` (``path``, ``frames``, ``seconds``, ``padded``, ``notes``).

        Example:
            >>> result = mofme.load("video").restore_video("snowy.mp4", "clean.mp4")
            >>> result.frames, result.notes
            (120, ['audio: aac stream copied'])
        """
        from mofme.inference.video import restore_video_file
        from mofme.inference.videoio import probe

        src, dst = Path(src), Path(dst)
        if not src.exists():
            raise MofmeError(f"cannot read video {src}: no such file or folder")
        if dst.resolve() == src.resolve():
            raise MofmeError(f"the output {dst} is the input; choose another output")
        info = probe(src)
        with self._lock:  # the model is busy for the whole video
            return restore_video_file(
                self.model,
                src,
                dst,
                tile=self._opts.tile_for(info.height, info.width, self.model),
                overlap=self._opts.overlap,
                amp=self._opts.amp,
                batch_tiles=self._opts.batch_tiles_on(self.device),
                fps=fps,
                side_by_side=side_by_side,
                crf=crf,
                overwrite=overwrite,
                keep_audio=keep_audio,
                progress=progress,
            )


# ------------------------------------------------------------------------------------ helpers


def _is_pil(x: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def _split_array(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool, float]:
    """``x`` -> ``(rgb (H, W, 3) float32 in [0, 1], alpha or None, is_grey, int scale or 0)``.

    Alpha is returned as the input's own values (same dtype), to be put back untouched.
    """
    if x.ndim == 2:
        x3 = x[:, :, None]
    elif x.ndim == 3 and x.shape[2] in (1, 2, 3, 4):
        x3 = x
    else:
        raise MofmeError(
            f"expected an image array (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4), "
            f"got shape {x.shape}"
        )
    if x3.shape[0] == 0 or x3.shape[1] == 0:
        raise MofmeError(f"the image has zero size {x.shape}")
    if x.dtype == np.uint8:
        scale = 255.0
    elif x.dtype == np.uint16:
        scale = 65535.0
    elif np.issubdtype(x.dtype, np.floating):
        scale = 0.0
    else:
        raise MofmeError(f"unsupported array dtype {x.dtype}: use uint8, uint16 or float in [0, 1]")
    channels = x3.shape[2]
    grey = channels <= 2
    colour = x3[:, :, :1] if grey else x3[:, :, :3]
    alpha = x3[:, :, channels - 1] if channels in (2, 4) else None
    rgb = colour.astype(np.float32) / scale if scale else colour.astype(np.float32)
    if not scale:
        if not np.isfinite(rgb).all():
            raise MofmeError("the input array contains NaN or infinite values")
        rgb = np.clip(rgb, 0.0, 1.0)
    if grey:
        rgb = np.repeat(rgb, 3, axis=2)
    return np.ascontiguousarray(rgb), alpha, grey, scale
