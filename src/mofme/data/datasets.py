"""Paired image and video datasets (PyTorch) for training and evaluation.

The pairs and videos they read come from :mod:`mofme.data.pairs`.

Randomness (crops, flips, replacements for unreadable samples) is drawn from a NumPy generator
seeded per item by ``seed`` together with one draw from PyTorch's global RNG. PyTorch seeds that
RNG differently in every DataLoader worker and every epoch, so crops differ across workers and
epochs, and a run is reproducible under ``torch.manual_seed``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mofme.data.io import load_image, resize_rgb
from mofme.data.pairs import Pair, VideoPair
from mofme.errors import MofmeError

__all__ = ["PairedImageDataset", "VideoClipDataset"]


# ---------------------------------------------------------------------- cropping and flipping


def _item_rng(
    seed: int, index: int, generator: torch.Generator | None = None
) -> np.random.Generator:
    """Per-item generator: ``seed`` + item index + one draw from ``generator`` (PyTorch's
    global RNG when None; the trainer passes one seeded per epoch and item)."""
    draw = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return np.random.default_rng([seed, index, draw])


def _crop_and_flip(
    arrays: list[np.ndarray],
    crop: int | None,
    hflip: bool,
    vflip: bool,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Same random crop and flips for every ``(H, W, 3)`` array (all of one size).

    Arrays smaller than ``crop`` are first reflect-padded at the bottom / right (repeated
    reflection for very small images), so every crop is ``crop x crop``.
    """
    if crop is not None:
        height, width = arrays[0].shape[:2]
        pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
        if pad_h or pad_w:
            arrays = [np.pad(a, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect") for a in arrays]
            height, width = height + pad_h, width + pad_w
        top = int(rng.integers(0, height - crop + 1))
        left = int(rng.integers(0, width - crop + 1))
        arrays = [a[top : top + crop, left : left + crop] for a in arrays]
    if hflip and rng.random() < 0.5:
        arrays = [a[:, ::-1] for a in arrays]
    if vflip and rng.random() < 0.5:
        arrays = [a[::-1] for a in arrays]
    return arrays


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))


def _check_same_size(first: np.ndarray, second: np.ndarray, a: Path, b: Path) -> None:
    if first.shape != second.shape:
        raise MofmeError(
            f"size mismatch: {a} is {first.shape[1]}x{first.shape[0]} but "
            f"{b} is {second.shape[1]}x{second.shape[0]}"
        )


class _SkippingDataset(Dataset):
    """Shared 'unreadable sample' policy: raise when strict, else warn and pick another; and
    the settings both datasets share (crop, flips, seed)."""

    def __init__(self, crop: int | None, flip: bool, vflip: bool, seed: int, strict: bool) -> None:
        self.crop = crop
        self.flip = flip
        self.vflip = vflip
        self.seed = seed
        self.strict = strict
        self.skipped = 0
        self._bad: set[int] = set()

    def _load(self, index: int, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, generator: torch.Generator | None = None) -> dict:
        """Item ``index``, its randomness drawn from ``generator`` (see :func:`_item_rng`)."""
        rng = _item_rng(self.seed, index, generator)
        tries = 0
        while True:
            try:
                return self._load(index, rng)
            except MofmeError as exc:
                if self.strict:
                    raise
                self._bad.add(index)
                self.skipped += 1
                tries += 1
                warnings.warn(f"skipping unreadable sample: {exc}", stacklevel=2)
                good = [i for i in range(len(self)) if i not in self._bad]
                if not good or tries >= 20:
                    raise MofmeError(
                        f"gave up after {tries} unreadable samples in a row; last: {exc}"
                    ) from exc
                index = int(rng.choice(good))


class PairedImageDataset(_SkippingDataset):
    """Paired images for training or evaluation.

    Args:
        pairs: from :func:`mofme.data.pairs.find_pairs`.
        crop: side of the random square crop (same place in input and ground truth); ``None``
            returns full images. Images smaller than ``crop`` are reflect-padded first.
        flip: random horizontal flip (p = 0.5).
        vflip: random vertical flip (p = 0.5), off by default.
        resize: ``(width, height)`` to resize both images to (bicubic, Pillow) before
            cropping, e.g. ``(720, 480)`` for the official protocol.
        strict: raise on an unreadable pair (use for evaluation); otherwise warn, count it in
            ``skipped`` and return another random pair so an epoch never crashes. The count
            lives in the process that loaded the sample (per DataLoader worker).
        seed: mixed into every item's random generator (see module docstring).
        identity_share: chance that an item's input is replaced by its ground truth (an
            identity pair: teaches the model to leave clean content alone; real weather
            datasets have none). 0 by default.

    Items: ``{"input": (3, H, W) float32, "gt": (3, H, W) float32, "name": input file name,
    "group": pair group}``; alpha channels are dropped, grayscale is replicated to RGB.

    Raises (strict, or after 20 failures in a row):
        MofmeError: unreadable file, or input and ground truth of different sizes.
    """

    def __init__(
        self,
        pairs: list[Pair],
        crop: int | None = 240,
        flip: bool = True,
        resize: tuple[int, int] | None = None,
        strict: bool = False,
        seed: int = 0,
        vflip: bool = False,
        identity_share: float = 0.0,
    ) -> None:
        if not pairs:
            raise MofmeError("PairedImageDataset got no pairs")
        if not 0.0 <= identity_share <= 1.0:
            raise MofmeError(f"identity_share must be in [0, 1], got {identity_share}")
        self.identity_share = identity_share
        if crop is not None and crop < 1:
            raise ValueError(f"crop must be positive or None, got {crop}")
        super().__init__(crop, flip, vflip, seed, strict)
        self.pairs = list(pairs)
        self.resize = resize

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index: int, rng: np.random.Generator) -> dict:
        pair = self.pairs[index]
        source, target = load_image(pair.input), load_image(pair.gt)
        _check_same_size(source.rgb, target.rgb, pair.input, pair.gt)
        images = [source.rgb, target.rgb]
        if self.resize is not None:
            images = [
                resize_rgb(source.rgb, self.resize, source.bit_depth),
                resize_rgb(target.rgb, self.resize, target.bit_depth),
            ]
        images = _crop_and_flip(images, self.crop, self.flip, self.vflip, rng)
        if self.identity_share and rng.random() < self.identity_share:
            images = [images[1], images[1]]
        return {
            "input": _chw(images[0]),
            "gt": _chw(images[1]),
            "name": pair.input.name,
            "group": pair.group,
        }


class VideoClipDataset(_SkippingDataset):
    """Clips of ``clip_len`` consecutive frames from paired videos.

    Each video with ``n >= clip_len`` frames gives ``(n - clip_len) // stride + 1`` clips
    starting at ``0, stride, 2·stride, ...``; shorter videos give none (with a warning).
    Crop position and flips are identical for every frame of a clip and for input and ground
    truth. ``strict`` / ``seed`` / ``skipped`` as in :class:`PairedImageDataset`.

    Items: ``{"input": (T, 3, H, W), "gt": (T, 3, H, W), "video": name, "start": int}``.
    """

    def __init__(
        self,
        videos: list[VideoPair],
        clip_len: int = 3,
        crop: int | None = 240,
        flip: bool = True,
        stride: int = 1,
        seed: int = 0,
        strict: bool = False,
        vflip: bool = False,
    ) -> None:
        if clip_len < 1 or stride < 1:
            raise ValueError(f"clip_len and stride must be >= 1, got {clip_len}, {stride}")
        super().__init__(crop, flip, vflip, seed, strict)
        self.videos = list(videos)
        self.clip_len = clip_len
        self.stride = stride
        self.clips: list[tuple[int, int]] = []
        for v, video in enumerate(self.videos):
            frames = len(video.snow_frames)
            if frames < clip_len:
                warnings.warn(
                    f"video {video.name} has {frames} frames, fewer than clip_len={clip_len}; "
                    "it gives no clips",
                    stacklevel=2,
                )
                continue
            self.clips.extend((v, start) for start in range(0, frames - clip_len + 1, stride))
        if not self.clips:
            raise MofmeError(f"no video has at least clip_len={clip_len} frames")

    def __len__(self) -> int:
        return len(self.clips)

    def _load(self, index: int, rng: np.random.Generator) -> dict:
        v, start = self.clips[index]
        video = self.videos[v]
        paths = list(
            zip(
                video.snow_frames[start : start + self.clip_len],
                video.clean_frames[start : start + self.clip_len],
            )
        )
        frames = []
        for snow, clean in paths:
            frames.append(load_image(snow).rgb)
            frames.append(load_image(clean).rgb)
        for i in range(1, len(frames)):
            _check_same_size(frames[0], frames[i], paths[0][0], paths[i // 2][i % 2])
        frames = _crop_and_flip(frames, self.crop, self.flip, self.vflip, rng)
        return {
            "input": torch.stack([_chw(f) for f in frames[0::2]]),
            "gt": torch.stack([_chw(f) for f in frames[1::2]]),
            "video": video.name,
            "start": start,
        }
