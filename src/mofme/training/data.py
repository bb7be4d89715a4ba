"""The training set and the validation items a config names, with the checks that save a
user from a slow or silently padded run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mofme.data.datasets import PairedImageDataset, VideoClipDataset
from mofme.data.io import image_size
from mofme.data.pairs import find_pairs, find_videos
from mofme.training.config import TrainRunConfig
from mofme.training.sampling import default_workers

Note = Callable[[str], None]


def build_train_set(cfg: TrainRunConfig, note: Note) -> PairedImageDataset | VideoClipDataset:
    """Image pairs or video clips, cropped and flipped as ``cfg.data`` says."""
    d, seed = cfg.data, cfg.train.seed
    if d.kind == "video":
        videos = find_videos(d.root, d.train_split)
        check_crop(d.crop, [v.snow_frames[0] for v in videos[:8] if v.snow_frames], note)
        return VideoClipDataset(
            videos, d.clip_len, d.crop, d.flip, d.clip_stride, seed=seed, strict=d.strict
        )
    pairs = find_pairs(d.root, d.layout, d.train_split)
    check_crop(d.crop, [p.input for p in pairs[:8]], note)
    return PairedImageDataset(
        pairs, crop=d.crop, flip=d.flip, strict=d.strict, seed=seed,
        identity_share=d.identity_share,
    )  # fmt: skip


def check_crop(crop: int, samples: list[Path], note: Note) -> None:
    """Say so when ``data.crop`` exceeds the training images: they are padded up to the
    crop, which costs (crop / side)^2 times the compute and trains on padding."""
    smallest: tuple[int, Path] | None = None
    for path in samples:  # headers only, a few files: cheap even for a large set
        size = image_size(path)
        if size is None:  # unreadable files are reported when they are loaded
            continue
        side = min(size)
        if smallest is None or side < smallest[0]:
            smallest = (side, path)
    if smallest is not None and smallest[0] < crop:
        side, path = smallest
        fits = side // 8 * 8 or side  # a multiple of the patch size, when there is one
        note(
            f"note: data.crop={crop} is larger than the training images (e.g. {path.name} "
            f"is {side} px on its short side): they are padded to {crop}, "
            f"{(crop / side) ** 2:.1f}x the compute per image; set data.crop to {fits} or less"
        )


def loader_workers(workers: int | None, world: int, note: Note) -> int:
    """``data.workers``, or the machine's default; one note (not PyTorch's warning at every
    epoch) when more workers than CPUs were asked for."""
    from mofme.device import cpu_count

    if workers is None:
        return default_workers(world)
    cpus = cpu_count()
    if workers > cpus:
        note(
            f"note: data.workers={workers} on {cpus} CPUs: the loaders compete with "
            f"training; leave data.workers unset for the machine's default "
            f"({default_workers(world)})"
        )
    return workers


def find_val_items(cfg: TrainRunConfig) -> list[Any]:
    """Validation pairs (image) or videos (video), limited as configured."""
    d = cfg.data
    video = d.kind == "video"
    items: list[Any] = []
    for split in cfg.val_splits():
        if video:
            items.extend(find_videos(d.root, split))
        else:
            items.extend(find_pairs(d.root, d.layout, split))
    if video and d.val_max_videos is not None:
        items = items[: d.val_max_videos]
    if not video and d.val_max_images is not None and len(items) > d.val_max_images:
        # Evenly spaced, so every test set keeps its share.
        pick = np.linspace(0, len(items) - 1, d.val_max_images).round().astype(int)
        items = [items[i] for i in sorted(set(pick.tolist()))]
    return items
