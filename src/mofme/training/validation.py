"""Validation during training: PSNR / SSIM of the model on the validation items through the
inference path itself (``mofme.evaluate``), plus a few sample images for TensorBoard."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mofme.data.io import read_image, to_tensor

Samples = list[tuple[str, Tensor]]


@torch.no_grad()
def validate(
    model: nn.Module,
    items: list[Any],
    *,
    video: bool,
    device: torch.device,
    tile: int | None,
    max_frames: int | None,
    samples: int,
) -> tuple[dict[str, Any], Samples]:
    """``({"psnr", "ssim", "groups", "count"}, samples)`` of ``model`` on ``items``.

    Runs under ``fork_rng`` so the training RNG streams are the same with or without it.
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if video:
            return _validate_videos(model, items, tile, max_frames, samples)
        return _validate_images(model, items, tile, samples)


def _validate_images(
    model: nn.Module, items: list[Any], tile: int | None, n_samples: int
) -> tuple[dict[str, Any], Samples]:
    from mofme.evaluate import evaluate_images
    from mofme.inference.tiling import restore_image

    res = evaluate_images(
        model, items, tile=tile, progress=False, strict=True, flops_size=None, warmup=False
    )
    samples = []
    for pair in items[:n_samples]:
        inp, gt = (to_tensor(read_image(p))[None] for p in (pair.input, pair.gt))
        out = restore_image(model, inp, tile=tile).clamp(0, 1).cpu()
        samples.append((pair.input.name, torch.cat([inp[0], out[0], gt[0]], dim=2)))
    return _summary(res), samples


def _validate_videos(
    model: nn.Module, items: list[Any], tile: int | None, max_frames: int | None, n_samples: int
) -> tuple[dict[str, Any], Samples]:
    from mofme.evaluate import evaluate_videos
    from mofme.inference.video import restore_clip

    # The inference path itself (VideoRestorer): mean over frames per video, then videos.
    res = evaluate_videos(
        model, items, tile=tile, progress=False, strict=True,
        max_frames=max_frames, flops_size=None, warmup=False,
    )  # fmt: skip
    samples = []
    for video in items[:n_samples]:
        f = min(1, len(video.snow_frames) - 1)  # frame 1: restored with a reference
        frames = torch.stack([to_tensor(read_image(p)) for p in video.snow_frames[: f + 1]])
        out = restore_clip(model, frames)[f].clamp(0, 1).cpu()
        gt = to_tensor(read_image(video.clean_frames[f]))
        samples.append((f"{video.name}/{f}", torch.cat([frames[f], out, gt], 2)))
    return _summary(res, group="video"), samples


def _summary(res: Any, group: str | None = None) -> dict[str, Any]:
    """The mean over test sets (or videos) of an ``EvalResult``, per group too."""
    avg = res.average
    if group is None:
        groups = {r["name"]: {"psnr": r["psnr"], "ssim": r["ssim"]} for r in res.rows}
    else:
        groups = {group: {"psnr": avg["psnr"], "ssim": avg["ssim"]}}
    return {
        "psnr": avg["psnr"],
        "ssim": avg["ssim"],
        "groups": groups,
        "count": len(res.rows) if group else len(res.records),
    }
