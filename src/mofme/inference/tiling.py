"""Whole-image and tiled inference, and the official MoFME crop pipeline (for comparison).

``restore_image`` runs a model on a batch of images of any size. Without ``tile`` it is one
forward pass over the whole image (the fastest and best choice while memory allows: MoFMENet's
attention is global, so whole-image inference sees all the context). With ``tile`` the image is
cut into overlapping ``tile × tile`` tiles (stride ``tile - overlap``, the last tile of each
row/column aligned to the border), the tiles are run in batches, and the outputs are blended
with weights that ramp smoothly (raised cosine) across ``overlap`` pixels on every tile side
that faces another tile — sides on the image border are not ramped — then divided by the
summed weights. A per-pixel model gives exactly the whole-image result; a model with global
attention gives slightly different values near tile seams (the tiles see less context).

``official_crops`` reproduces how the official MoFME code evaluates a 480×720 frame: 15
overlapping 240×240 crops (rows at 0, 120, 240; columns at 0, 120, 240, 360, 480), each run
with dense experts in fp32, the overlaps averaged uniformly. ``mofme bench`` uses it as the
baseline the fast paths are measured against.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

AMP_MODES = ("none", "bf16")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def autocast_context(device: torch.device, amp: str):  # -> context manager
    """``torch.autocast`` for ``amp="bf16"``, a no-op for ``"none"``."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (deterministic routing, no dropout), restoring the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)`` with step ``stride``.

    The last tile is aligned to the end, so every tile lies inside the image. A side no longer
    than ``tile`` gets one tile at 0 (of length ``size``, see ``restore_image``).
    """
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def ramp_weights(size: int, start: int, length: int, overlap: int) -> Tensor:
    """1-D blending weights ``(length,)`` of a tile at ``start`` on an axis of ``size`` pixels.

    Weight 1 inside; on a side facing another tile (not the image border) a raised-cosine ramp
    over ``overlap`` pixels, ``w_i = sin²(π (i + ½) / (2·overlap))``, which is never 0 and is
    complementary (``w_i + w_{overlap-1-i} = 1``) for two tiles overlapping by exactly
    ``overlap`` pixels.
    """
    w = torch.ones(length, dtype=torch.float64)
    ramp_len = min(overlap, length // 2)
    if ramp_len > 0:
        i = torch.arange(ramp_len, dtype=torch.float64)
        ramp = torch.sin(math.pi * (i + 0.5) / (2 * ramp_len)) ** 2
        if start > 0:
            w[:ramp_len] = ramp
        if start + length < size:
            w[length - ramp_len :] = ramp.flip(0)
    return w.float()


def _forward(model: nn.Module, x: Tensor, amp: str, channels_last: bool) -> Tensor:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_context(x.device, amp):
        y = model(x)
    return y.float()


def restore_image(
    model: nn.Module,
    x: Tensor,
    tile: int | None = None,
    overlap: int = 32,
    batch_tiles: int = 8,
    amp: str = "none",
    channels_last: bool = False,
    on_tiles: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Restore images ``(B, C_in, H, W)`` in [0, 1] -> ``(B, 3, H, W)`` float32 in [0, 1].

    Args:
        model: an image-to-image network (``MoFMENet`` or any module with that signature).
            It runs in eval mode (its previous mode is restored afterwards).
        x: input batch, any size; moved to the model's device.
        tile: tile side in pixels, or ``None`` for one whole-image forward pass. Sides shorter
            than ``tile`` use the whole side. Multiples of the model's patch size (8) are best.
        overlap: pixels shared by neighbouring tiles (``0 <= overlap < tile``).
        batch_tiles: tiles per forward pass (per image of the batch).
        amp: ``"none"`` (fp32) or ``"bf16"`` (autocast; the router stays fp32).
        channels_last: run convolutions in channels-last layout; the model's weights are
            converted in place (once) so that layouts match.
        on_tiles: called as ``on_tiles(done, total)`` after each batch of tiles (tiled runs
            only), for a progress bar on large images.

    The result is on the model's device.
    """
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W), got {tuple(x.shape)}")
    device = model_device(model)
    x = x.to(device=device, dtype=torch.float32)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    b, _, h, w = x.shape
    with eval_mode(model), torch.inference_mode():
        if tile is None or (h <= tile and w <= tile):
            return _forward(model, x, amp, channels_last).contiguous()
        if tile < 1 or not 0 <= overlap < tile:
            raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got {tile=}, {overlap=}")
        th, tw = min(tile, h), min(tile, w)
        ys = tile_starts(h, th, tile - overlap)
        xs = tile_starts(w, tw, tile - overlap)
        boxes = [(y0, x0) for y0 in ys for x0 in xs]
        wy = {y0: ramp_weights(h, y0, th, overlap) for y0 in ys}
        wx = {x0: ramp_weights(w, x0, tw, overlap) for x0 in xs}
        out = torch.zeros(b, 3, h, w, device=device)
        weight_sum = torch.zeros(1, 1, h, w, device=device)
        for i in range(0, len(boxes), max(1, batch_tiles)):
            chunk = boxes[i : i + max(1, batch_tiles)]
            # (n·B, C, th, tw): tile-major, so tile j of image k is row j·B + k.
            crops = torch.cat([x[:, :, y0 : y0 + th, x0 : x0 + tw] for y0, x0 in chunk])
            pred = _forward(model, crops, amp, channels_last)
            for j, (y0, x0) in enumerate(chunk):
                wt = (wy[y0][:, None] * wx[x0][None, :]).to(device)
                out[:, :, y0 : y0 + th, x0 : x0 + tw] += pred[j * b : (j + 1) * b] * wt
                weight_sum[:, :, y0 : y0 + th, x0 : x0 + tw] += wt
            if on_tiles is not None:
                on_tiles(i + len(chunk), len(boxes))
        return out / weight_sum


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA or CPU out-of-memory: the CPU allocator raises a plain ``RuntimeError``
    (``DefaultCPUAllocator: can't allocate memory``), CUDA ``torch.OutOfMemoryError``."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate" in text)


def smaller_tiles(tile: int | None, h: int, w: int, smallest: int = 64) -> list[int]:
    """Tile sizes to retry with after running out of memory with ``tile`` (None: whole image),
    halving each time (multiples of 8, the patch size) down to ``smallest``."""
    size = tile if tile else max(h, w)
    sizes = []
    size = min(size // 2, 512) // 8 * 8
    while size >= smallest:
        sizes.append(size)
        size = size // 2 // 8 * 8
    return sizes


def restore_image_retrying(
    model: nn.Module,
    x: Tensor,
    tile: int | None = None,
    overlap: int = 32,
    on_retry: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> Tensor:
    """``restore_image``, retried with smaller tiles (see ``smaller_tiles``) when it runs out of
    memory; ``on_retry(new_tile)`` is called before each retry. The last out-of-memory
    error is raised when even the smallest tiles do not fit (``is_out_of_memory`` tells it)."""
    h, w = x.shape[-2:]
    sizes = [tile, *smaller_tiles(tile, h, w)]
    for i, size in enumerate(sizes):
        # Small tiles keep a proportionate overlap (it must stay below the tile size).
        ov = overlap if size is None or overlap < size // 2 else size // 4
        try:
            return restore_image(model, x, tile=size, overlap=ov, **kwargs)
        except RuntimeError as e:
            if not is_out_of_memory(e) or i == len(sizes) - 1:
                raise
        # Outside the except block the failed attempt's traceback, and the tensors its frames
        # hold, are gone; collect them before trying again.
        gc.collect()
        if model_device(model).type == "cuda":
            torch.cuda.empty_cache()
        if on_retry is not None:
            on_retry(sizes[i + 1])  # type: ignore[arg-type]
    raise AssertionError("unreachable")


def official_boxes(h: int, w: int, crop: int = 240) -> list[tuple[int, int, int, int]]:
    """Crops ``(top, left, height, width)`` of the official pipeline: stride ``crop // 2``.

    For 480×720 and crop 240: rows 0, 120, 240 × columns 0, 120, 240, 360, 480 = 15 crops.
    Other sizes: the same half-overlapping grid, the last crop aligned to the border; a side
    shorter than ``crop`` is taken whole.
    """
    stride = max(1, crop // 2)
    ch, cw = min(crop, h), min(crop, w)
    ys = sorted(set(range(0, h - ch + 1, stride)) | {h - ch})
    xs = sorted(set(range(0, w - cw + 1, stride)) | {w - cw})
    return [(y0, x0, ch, cw) for y0 in ys for x0 in xs]


@contextmanager
def expert_impl(model: nn.Module, impl: str | None) -> Iterator[None]:
    """Run with the experts computed as ``impl`` (``"dense"`` / ``"sparse"``; ``None``: as they
    are), restoring the model's own setting afterwards. A model without the setting (not a
    ``MoFMENet``) runs unchanged."""
    old = getattr(model, "cfg", None) and model.cfg.expert_impl  # type: ignore[union-attr]
    if impl is None or not old:
        yield
        return
    model.set_expert_impl(impl)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_expert_impl(old)  # type: ignore[operator]


def official_crops(model: nn.Module, x: Tensor, crop: int = 240, dense: bool = True) -> Tensor:
    """The official MoFME evaluation of ``x`` ``(B, C_in, H, W)`` -> ``(B, 3, H, W)``.

    Each crop of ``official_boxes`` is run on its own (batch of one crop), with dense experts
    (every expert on every token, as the official code computes them; ``dense=False`` keeps the
    model's own, e.g. sparse, experts) in the caller's precision (fp32 unless in autocast); the
    overlapping outputs are averaged with equal weights.
    """
    device = model_device(model)
    x = x.to(device=device, dtype=torch.float32)
    b, _, h, w = x.shape
    with expert_impl(model, "dense" if dense else None), eval_mode(model), torch.inference_mode():
        out = torch.zeros(b, 3, h, w, device=device)
        count = torch.zeros(1, 1, h, w, device=device)
        for y0, x0, ch, cw in official_boxes(h, w, crop):
            out[:, :, y0 : y0 + ch, x0 : x0 + cw] += model(x[:, :, y0 : y0 + ch, x0 : x0 + cw])
            count[:, :, y0 : y0 + ch, x0 : x0 + cw] += 1
        return out / count
