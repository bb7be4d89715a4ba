"""Finding paired images and videos in the dataset layouts of SPEC §5.

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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mofme.data.io import IMAGE_EXTENSIONS, list_images, natural_key
from mofme.errors import MofmeError

__all__ = [
    "LAYOUTS",
    "TRANSWEATHER_TEST_LISTS",
    "Pair",
    "VideoPair",
    "default_test_lists",
    "detect_layout",
    "find_image_pairs",
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


# ---------------------------------------------------------------------------- test sets, layout


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
