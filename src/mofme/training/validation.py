"""Validation during training: PSNR / SSIM of the model on the validation items through the
inference path itself (``mofme.evaluate``), plus a few sample images for TensorBoard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from mofme.evaluate import Sample

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
    from mofme.evaluate import Collect, evaluate_images

    first = Collect(lambda s: len(first.samples) < n_samples)  # the first n_samples pairs
    res = evaluate_images(
        model, items, tile=tile, progress=False, strict=True, flops_size=None, warmup=False,
        observers=[first],
    )  # fmt: skip
    samples = [(s.path.name, _panel(s)) for s in first.samples]
    return _summary(res), samples


def _validate_videos(
    model: nn.Module, items: list[Any], tile: int | None, max_frames: int | None, n_samples: int
) -> tuple[dict[str, Any], Samples]:
    from mofme.evaluate import Collect, evaluate_videos

    # Per shown video, frame 1 (restored with a reference), or frame 0 when it is the only one.
    shown = {v.name: min(1, len(list(v.snow_frames)[:max_frames]) - 1) for v in items[:n_samples]}
    picked = Collect(lambda s: shown.get(s.group) == s.index)
    # The inference path itself (VideoRestorer): mean over frames per video, then videos.
    res = evaluate_videos(
        model, items, tile=tile, progress=False, strict=True,
        max_frames=max_frames, flops_size=None, warmup=False, observers=[picked],
    )  # fmt: skip
    samples = [(f"{s.group}/{s.index}", _panel(s)) for s in picked.samples]
    return _summary(res, group="video"), samples


def _panel(sample: Sample) -> Tensor:
    """``input | output | ground truth`` side by side, ``(3, H, 3W)`` on the CPU."""
    assert sample.target is not None  # validation always scores
    return torch.cat([sample.input[0], sample.output[0], sample.target[0]], dim=2)


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
