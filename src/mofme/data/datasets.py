"""Paired image and video datasets in the layouts of SPEC §5.

Finding pairs (:func:`find_pairs`, :func:`find_videos`) checks the whole dataset up front: a
missing ground-truth partner is reported with both paths before any training starts.

Layouts (``layout=``):

``"mofme"``
    ``ROOT/train/{input,gt}``, ``ROOT/test_rain``, ``ROOT/test_raindrop``, ``ROOT/test_snow``
    and any other ``ROOT/test_*`` folder holding an ``input`` folder (e.g. ``test_haze``).
    ``split="train"``, ``"test"`` (all test sets; group = folder name without ``test_``), or
    one folder (``"test_rain"`` or just ``"rain"``).
``"transweather"``
    ``split`` names a list file (``allweather.txt``, found in ``ROOT`` or given as a path). Each
    non-blank, non-``#`` line is an input path relative to ``ROOT`` (or, failing that, to the
    list file's folder); the ground truth replaces the *last path component equal to*
    ``input`` by ``gt``. Group = list file stem.
``"folder"``
    ``ROOT/input`` and ``ROOT/gt`` with the same file names (``split``, when given and
    ``ROOT/split/input`` exists, selects that subfolder). Group = folder name.

Partner matching, for every layout: the same file name in ``gt``; else, for RainDrop-style
names, ``<stem>_rain.<ext>`` -> ``<stem>_clean.<ext>``; else the same stem with another image
extension (``.jpg`` input, ``.png`` ground truth).

Randomness (crops, flips, replacements for unreadable samples) is drawn from a NumPy generator
seeded per item by ``seed`` together with one draw from PyTorch's global RNG. PyTorch seeds that
RNG differently in every DataLoader worker and every epoch, so crops differ across workers and
epochs, and a run is reproducible under ``torch.manual_seed``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mofme.data.io import IMAGE_EXTENSIONS, list_images, load_image, natural_key, resize_rgb
from mofme.errors import MofmeError

__all__ = [
    "LAYOUTS",
    "Pair",
    "PairedImageDataset",
    "VideoClipDataset",
    "VideoPair",
    "find_pairs",
    "find_videos",
    "gt_path_for",
]

LAYOUTS = ("mofme", "transweather", "folder")
#: TransWeather / WeatherDiffusion test lists (evaluated by default when present).
TRANSWEATHER_TEST_LISTS = (
    "test1.txt",
    "raindroptesta.txt",
    "snowtest100k_L.txt",
    "snowtest100k_S.txt",
)


@dataclass(frozen=True)
class Pair:
    """One degraded image and its ground truth; ``group`` names the test set / list."""

    input: Path
    gt: Path
    group: str


@dataclass(frozen=True)
class VideoPair:
    """One video: degraded frames and clean frames, matched by name, in natural order."""

    name: str
    snow_frames: list[Path]
    clean_frames: list[Path]


# ----------------------------------------------------------------------------- partner lookup


def _partner_candidates(gt_dir: Path, name: str) -> list[Path]:
    """Ground-truth paths to try for input file ``name``, most specific first."""
    stem, suffix = os.path.splitext(name)
    candidates = [gt_dir / name]
    if stem.endswith("_rain"):
        candidates.append(gt_dir / f"{stem[: -len('_rain')]}_clean{suffix}")
    return candidates


def gt_path_for(input_path: Path, gt_dir: Path) -> Path | None:
    """The ground truth for ``input_path`` inside ``gt_dir`` (see module docstring), or None."""
    candidates = _partner_candidates(gt_dir, input_path.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    # Same stem (after the _rain -> _clean rename, if any) with a different image extension.
    for candidate in candidates:
        for ext in IMAGE_EXTENSIONS:
            for variant in (ext, ext.upper()):
                other = candidate.with_suffix(variant)
                if other.is_file():
                    return other
    return None


def _missing_partner(input_path: Path, gt_dir: Path) -> MofmeError:
    expected = " or ".join(str(p) for p in _partner_candidates(gt_dir, input_path.name))
    return MofmeError(f"no ground truth for {input_path}: expected {expected}")


def _pairs_in_folder(folder: Path, group: str) -> list[Pair]:
    """Pairs from ``folder/input`` and ``folder/gt``."""
    input_dir, gt_dir = folder / "input", folder / "gt"
    if not input_dir.is_dir():
        raise MofmeError(f"no input folder {input_dir}")
    if not gt_dir.is_dir():
        raise MofmeError(f"no ground-truth folder {gt_dir} next to {input_dir}")
    pairs = []
    for input_path in list_images(input_dir):
        gt = gt_path_for(input_path, gt_dir)
        if gt is None:
            raise _missing_partner(input_path, gt_dir)
        pairs.append(Pair(input_path, gt, group))
    return pairs


# ------------------------------------------------------------------------------ find_pairs


def find_pairs(
    root: str | os.PathLike[str],
    layout: str = "mofme",
    split: str | None = "train",
    list_root: str | os.PathLike[str] | None = None,
) -> list[Pair]:
    """All (input, ground truth, group) pairs of a dataset split, checked to exist.

    Args:
        root: dataset root folder.
        layout: ``"mofme"``, ``"transweather"`` or ``"folder"`` (module docstring).
        split: mofme: ``"train"``, ``"test"`` or a test folder; transweather: list file name
            or path; folder: optional subfolder.
        list_root: transweather only: folder the list's paths are relative to (default
            ``root``; the list file's own folder is tried next).

    Raises:
        MofmeError: unknown layout, missing folder / list file, a missing ground-truth partner
            (naming both paths), or no pairs at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise MofmeError(f"dataset root {root} does not exist")
    if layout == "mofme":
        pairs = _find_mofme(root, split or "train")
    elif layout == "transweather":
        if not split:
            raise MofmeError(
                "the transweather layout needs a list file (split), e.g. allweather.txt"
            )
        pairs = _find_transweather(root, split, Path(list_root) if list_root else root)
    elif layout == "folder":
        folder = root / split if split and (root / split / "input").is_dir() else root
        pairs = _pairs_in_folder(folder, folder.name)
    else:
        raise MofmeError(f"unknown dataset layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if not pairs:
        raise MofmeError(f"no image pairs found in {root} (layout {layout}, split {split})")
    return pairs


def _find_mofme(root: Path, split: str) -> list[Pair]:
    if split == "train":
        return _pairs_in_folder(root / "train", "train")
    if split == "test":
        folders = sorted(
            (p for p in root.glob("test_*") if (p / "input").is_dir()),
            key=natural_key,
        )
        if not folders:
            raise MofmeError(f"no test_* folders with an input folder in {root}")
        pairs: list[Pair] = []
        for folder in folders:
            pairs.extend(_pairs_in_folder(folder, folder.name.removeprefix("test_")))
        return pairs
    for name in (split, f"test_{split}"):
        if (root / name).is_dir():
            return _pairs_in_folder(root / name, name.removeprefix("test_"))
    raise MofmeError(f"no split folder {root / split} (nor {root / ('test_' + split)})")


def _resolve_list_file(root: Path, split: str) -> Path:
    for candidate in (Path(split), root / split):
        if candidate.is_file():
            return candidate
    raise MofmeError(f"list file {split} not found (looked in the current folder and {root})")


def _input_to_gt(relative: Path) -> Path | None:
    """Replace the last path component exactly equal to ``input`` by ``gt``."""
    parts = list(relative.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "input":
            parts[i] = "gt"
            return Path(*parts)
    return None


def _find_transweather(root: Path, split: str, list_root: Path) -> list[Pair]:
    list_file = _resolve_list_file(root, split)
    group = list_file.stem
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MofmeError(f"cannot read list file {list_file}: {exc}") from exc
    pairs = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        # TransWeather lists write "./input/x.png" or "/input/x.png" relative to the root.
        entry = entry.removeprefix("./")
        relative = Path(entry)
        if relative.is_absolute() and not relative.is_file():
            relative = Path(entry.lstrip("/\\"))
        base = next(
            (b for b in (list_root, list_file.parent) if (b / relative).is_file()),
            None,
        )
        if base is None:
            raise MofmeError(
                f"{list_file} line {number}: input {entry} not found under {list_root}"
                + (f" or {list_file.parent}" if list_file.parent != list_root else "")
            )
        gt_relative = _input_to_gt(relative)
        if gt_relative is None:
            raise MofmeError(
                f"{list_file} line {number}: {entry} has no 'input' folder to map to 'gt'"
            )
        input_path = base / relative
        gt = gt_path_for(input_path, (base / gt_relative).parent)
        if gt is None:
            raise _missing_partner(input_path, (base / gt_relative).parent)
        pairs.append(Pair(input_path, gt, group))
    return pairs


# ------------------------------------------------------------------------------ find_videos


def _split_folder(root: Path, split: str) -> Path:
    aliases = {"test": ("test", "test_video"), "test_video": ("test_video", "test")}
    for name in aliases.get(split, (split,)):
        if (root / name).is_dir():
            return root / name
    tried = " or ".join(str(root / n) for n in aliases.get(split, (split,)))
    raise MofmeError(f"no video split folder {tried}")


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise MofmeError(f"no folder {folder}")
    dirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(dirs, key=natural_key)


def find_videos(root: str | os.PathLike[str], split: str = "train") -> list[VideoPair]:
    """RVSD-layout videos: ``ROOT/{train,test}/{snow,clean}/<video>/<frame>.{jpg,png}``.

    ``split="test"`` and ``"test_video"`` are aliases. Frames are matched by file name (or by
    stem when the extensions differ) and sorted naturally.

    Raises:
        MofmeError: missing folders, a video present on one side only, a video without frames,
            or a degraded frame without its clean frame (naming the video and the frame).
    """
    root = Path(root)
    if not root.is_dir():
        raise MofmeError(f"dataset root {root} does not exist")
    folder = _split_folder(root, split)
    snow_videos = _subfolders(folder / "snow")
    clean_videos = {p.name: p for p in _subfolders(folder / "clean")}
    snow_names = {p.name for p in snow_videos}
    extra = sorted(set(clean_videos) - snow_names, key=natural_key)
    if extra:
        raise MofmeError(f"video {extra[0]} is in {folder / 'clean'} but not in {folder / 'snow'}")
    videos = []
    for snow_dir in snow_videos:
        clean_dir = clean_videos.get(snow_dir.name)
        if clean_dir is None:
            raise MofmeError(
                f"video {snow_dir.name} has no clean frames folder {folder / 'clean' / snow_dir.name}"
            )
        snow_frames = list_images(snow_dir)
        if not snow_frames:
            raise MofmeError(f"video {snow_dir.name} has no frames in {snow_dir}")
        clean_frames = []
        for frame in snow_frames:
            partner = gt_path_for(frame, clean_dir)
            if partner is None:
                raise MofmeError(
                    f"video {snow_dir.name}: frame {frame.name} has no clean frame "
                    f"{clean_dir / frame.name}"
                )
            clean_frames.append(partner)
        videos.append(VideoPair(snow_dir.name, snow_frames, clean_frames))
    if not videos:
        raise MofmeError(f"no videos found in {folder / 'snow'}")
    return videos


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
    """Shared 'unreadable sample' policy: raise when strict, else warn and pick another."""

    strict: bool
    seed: int
    skipped: int
    _bad: set[int]

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
        pairs: from :func:`find_pairs`.
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
        self.pairs = list(pairs)
        self.crop = crop
        self.flip = flip
        self.vflip = vflip
        self.resize = resize
        self.strict = strict
        self.seed = seed
        self.skipped = 0
        self._bad: set[int] = set()

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
        self.videos = list(videos)
        self.clip_len = clip_len
        self.crop = crop
        self.flip = flip
        self.vflip = vflip
        self.stride = stride
        self.seed = seed
        self.strict = strict
        self.skipped = 0
        self._bad: set[int] = set()
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


def default_test_lists(root: Path) -> list[str]:
    """The standard test lists present in ``root``, then any other ``*test*.txt`` there."""
    known = [n for n in TRANSWEATHER_TEST_LISTS if (root / n).is_file()]
    others = sorted(
        (p.name for p in root.glob("*test*.txt") if p.is_file() and p.name not in known),
        key=natural_key,
    )
    return known + others


def find_image_pairs(root: Path, layout: str, split: str | None) -> list[Pair]:
    """Test pairs of an image dataset, every requested split (comma-separated) concatenated;
    no split: all test sets of the layout (mofme: every ``test_*``; transweather: the standard
    test lists present)."""
    splits = [s.strip() for s in split.split(",") if s.strip()] if split else []
    if layout == "mofme":
        splits = splits or ["test"]
    elif layout == "transweather":
        if not splits:
            splits = default_test_lists(root)
        if not splits:
            raise MofmeError(
                f"no test list file in {root} (looked for {', '.join(TRANSWEATHER_TEST_LISTS)}); "
                "name one with --split"
            )
    else:
        splits = splits or [None]  # type: ignore[list-item]
    pairs = []
    for s in splits:
        pairs.extend(find_pairs(root, layout, s))
    return pairs


def detect_layout(root: str | os.PathLike[str], split: str | None = None) -> str:
    """Guess the layout of ``root``: ``rvsd``, ``mofme``, ``transweather`` or ``folder``.

    In this order: ``{test,test_video,train}/{snow,clean}`` is RVSD; a ``.txt`` split or a known
    test list file is TransWeather (a ``test_*/input`` folder, MoFME, is checked before the
    lists); ``input/`` (or ``split/input``) is a plain folder pair (a missing ``gt/`` is then
    reported by :func:`find_pairs`, naming it).
    """
    root = Path(root)
    if not root.is_dir():
        raise MofmeError(f"dataset root {root} does not exist")
    for s in ("test", "test_video", "train"):
        if (root / s / "snow").is_dir() and (root / s / "clean").is_dir():
            return "rvsd"
    if split and split.endswith(".txt"):
        return "transweather"
    if any((p / "input").is_dir() for p in root.glob("test_*")):
        return "mofme"
    if any((root / name).is_file() for name in TRANSWEATHER_TEST_LISTS):
        return "transweather"
    if (root / "input").is_dir() or (split and (root / split / "input").is_dir()):
        return "folder"
    raise MofmeError(
        f"cannot tell the dataset layout of {root}: looked for {{test,test_video,train}}/"
        f"{{snow,clean}} (rvsd), test_*/input (mofme), {', '.join(TRANSWEATHER_TEST_LISTS)} "
        "(transweather) and input/ (folder); pass --layout"
    )
