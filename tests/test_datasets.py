"""Dataset layouts, partner matching, crops / flips / resize, bad samples, video clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mofme.data.datasets import PairedImageDataset, VideoClipDataset
from mofme.data.io import resize_rgb
from mofme.data.pairs import find_pairs, find_videos
from mofme.errors import MofmeError

H, W = 20, 24


def random_u8(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=(h, w, 3)).astype(np.uint8)


def write(path: Path, data: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = random_u8(seed) if data is None else data
    Image.fromarray(data).save(path)
    return data


def write_pair(folder: Path, name: str, gt_name: str | None = None, seed: int = 0) -> None:
    """Input and ground truth with identical pixels, so alignment is checkable."""
    data = write(folder / "input" / name, seed=seed)
    write(folder / "gt" / (gt_name or name), data)


# ------------------------------------------------------------------------------- layouts


@pytest.fixture
def mofme_root(tmp_path: Path) -> Path:
    for name in ("10.png", "2.png", "1.png"):
        write_pair(tmp_path / "train", name)
    write_pair(tmp_path / "test_rain", "a.png")
    write_pair(tmp_path / "test_raindrop", "0_rain.png", "0_clean.png")
    write_pair(tmp_path / "test_raindrop", "rain_rain.jpg", "rain_clean.jpg")
    write_pair(tmp_path / "test_snow", "s.jpg", "s.png")  # gt saved as PNG
    write_pair(tmp_path / "test_haze", "h.png")
    (tmp_path / "test_video" / "snow").mkdir(parents=True)  # not an image test set
    return tmp_path


def test_mofme_train_natural_order(mofme_root):
    pairs = find_pairs(mofme_root, "mofme", "train")
    assert [p.input.name for p in pairs] == ["1.png", "2.png", "10.png"]
    assert all(p.gt == mofme_root / "train" / "gt" / p.input.name for p in pairs)
    assert {p.group for p in pairs} == {"train"}


def test_mofme_test_sets_discovered_and_raindrop_renamed(mofme_root):
    pairs = find_pairs(mofme_root, "mofme", "test")
    assert [p.group for p in pairs] == ["haze", "rain", "raindrop", "raindrop", "snow"]
    raindrop = {p.input.name: p.gt.name for p in pairs if p.group == "raindrop"}
    assert raindrop == {"0_rain.png": "0_clean.png", "rain_rain.jpg": "rain_clean.jpg"}
    snow = next(p for p in pairs if p.group == "snow")
    assert snow.gt.name == "s.png"
    for split in ("raindrop", "test_raindrop"):
        assert [p.group for p in find_pairs(mofme_root, "mofme", split)] == ["raindrop"] * 2


def test_missing_partner_names_both_paths(mofme_root):
    write(mofme_root / "test_raindrop" / "input" / "x_rain_2.png")
    with pytest.raises(MofmeError) as info:
        find_pairs(mofme_root, "mofme", "raindrop")
    message = str(info.value)
    assert str(mofme_root / "test_raindrop" / "input" / "x_rain_2.png") in message
    assert str(mofme_root / "test_raindrop" / "gt" / "x_rain_2.png") in message

    write(mofme_root / "test_rain" / "input" / "b_rain.png")
    with pytest.raises(
        MofmeError, match=r"b_rain\.png.*expected .*gt.b_rain\.png or .*b_clean\.png"
    ):
        find_pairs(mofme_root, "mofme", "rain")


def test_transweather_lists(tmp_path):
    root = tmp_path / "allweather"
    # "input" appears twice: only the folder named exactly "input" maps to "gt".
    write_pair(root / "input_rain", "inputimg_1.png")
    write_pair(root / "input_rain", "inputimg_2.png", seed=1)
    (root / "allweather.txt").write_text(
        "# Outdoor-Rain subset\n\n./input_rain/input/inputimg_1.png\n"
        "input_rain/input/inputimg_2.png  \n"
    )
    pairs = find_pairs(root, "transweather", "allweather.txt")
    assert [p.gt for p in pairs] == [
        root / "input_rain" / "gt" / "inputimg_1.png",
        root / "input_rain" / "gt" / "inputimg_2.png",
    ]
    assert {p.group for p in pairs} == {"allweather"}

    # List in a sub-folder with paths relative to that folder, given as a path.
    lists = root / "lists"
    write_pair(lists / "sub", "k.png")
    (lists / "test1.txt").write_text("sub/input/k.png\n")
    pairs = find_pairs(root, "transweather", str(lists / "test1.txt"))
    assert pairs[0].gt == lists / "sub" / "gt" / "k.png" and pairs[0].group == "test1"


def test_transweather_errors(tmp_path):
    write_pair(tmp_path, "a.png")
    write(tmp_path / "other" / "b.png")
    (tmp_path / "nogt.txt").write_text("other/b.png\n")
    with pytest.raises(MofmeError, match=r"line 1: other/b\.png has no 'input' folder"):
        find_pairs(tmp_path, "transweather", "nogt.txt")
    (tmp_path / "missing.txt").write_text("input/zzz.png\n")
    with pytest.raises(MofmeError, match=r"missing\.txt line 1: input input/zzz\.png not found"):
        find_pairs(tmp_path, "transweather", "missing.txt")
    with pytest.raises(MofmeError, match=r"list file nope\.txt not found"):
        find_pairs(tmp_path, "transweather", "nope.txt")


def test_folder_layout_and_empty_errors(tmp_path):
    root = tmp_path / "myset"
    write_pair(root, "a.jpg", "a.png")
    pairs = find_pairs(root, "folder")
    assert len(pairs) == 1 and pairs[0].group == "myset" and pairs[0].gt.name == "a.png"

    empty = tmp_path / "empty"
    (empty / "input").mkdir(parents=True)
    (empty / "gt").mkdir()
    with pytest.raises(MofmeError, match=rf"no image pairs found in {empty} \(layout folder"):
        find_pairs(empty, "folder")
    with pytest.raises(MofmeError, match="unknown dataset layout 'bogus'"):
        find_pairs(root, "bogus")
    with pytest.raises(MofmeError, match="does not exist"):
        find_pairs(tmp_path / "absent", "folder")


# -------------------------------------------------------------------------- image dataset


def find_window(image: np.ndarray, crop: np.ndarray) -> bool:
    """Whether ``crop`` (possibly flipped) is a window of ``image``."""
    size = crop.shape[0]
    for candidate in (crop, crop[:, ::-1], crop[::-1], crop[::-1, ::-1]):
        for top in range(image.shape[0] - size + 1):
            for left in range(image.shape[1] - size + 1):
                if np.array_equal(image[top : top + size, left : left + size], candidate):
                    return True
    return False


def test_crop_and_flip_identical_on_input_and_gt(tmp_path):
    write_pair(tmp_path, "a.png", seed=3)
    original = random_u8(3)
    dataset = PairedImageDataset(find_pairs(tmp_path, "folder"), crop=8, flip=True, vflip=True)
    torch.manual_seed(0)
    crops = []
    for _ in range(6):
        item = dataset[0]
        assert item["input"].shape == (3, 8, 8) and item["input"].dtype == torch.float32
        assert torch.equal(item["input"], item["gt"])
        assert item["name"] == "a.png" and item["group"] == tmp_path.name
        crop = np.rint(item["input"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        assert find_window(original, crop)
        crops.append(crop)
    assert any(not np.array_equal(crops[0], c) for c in crops[1:])  # crops vary

    torch.manual_seed(0)
    assert np.array_equal(np.rint(dataset[0]["input"].permute(1, 2, 0).numpy() * 255), crops[0])


def test_full_image_small_image_padding_and_resize(tmp_path):
    write_pair(tmp_path, "a.png", seed=4)
    pairs = find_pairs(tmp_path, "folder")
    full = PairedImageDataset(pairs, crop=None, flip=False)[0]
    np.testing.assert_allclose(full["input"].permute(1, 2, 0).numpy(), random_u8(4) / 255.0)

    padded = PairedImageDataset(pairs, crop=32, flip=False)[0]
    assert padded["input"].shape == (3, 32, 32) and torch.equal(padded["input"], padded["gt"])
    # reflect padding at the bottom: row H mirrors row H - 2
    torch.testing.assert_close(padded["input"][:, H, :W], padded["input"][:, H - 2, :W])

    resized = PairedImageDataset(pairs, crop=None, flip=False, resize=(12, 10))[0]
    assert resized["input"].shape == (3, 10, 12)
    expected = resize_rgb(random_u8(4) / 255.0, (12, 10))
    np.testing.assert_allclose(resized["gt"].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_bad_image_skipped_or_strict(tmp_path):
    write_pair(tmp_path, "1.png")
    write_pair(tmp_path, "2.png", seed=1)
    (tmp_path / "input" / "2.png").write_bytes(b"garbage")
    pairs = find_pairs(tmp_path, "folder")

    lenient = PairedImageDataset(pairs, crop=None, flip=False)
    with pytest.warns(UserWarning, match=r"skipping unreadable sample: cannot read image .*2\.png"):
        item = lenient[1]
    assert item["name"] == "1.png" and lenient.skipped == 1

    strict = PairedImageDataset(pairs, crop=None, strict=True)
    with pytest.raises(MofmeError, match=r"2\.png"):
        strict[1]

    write(tmp_path / "gt" / "1.png", random_u8(0, H, W + 2))
    with pytest.raises(
        MofmeError, match=r"size mismatch: .*input.1\.png is 24x20 .*gt.1\.png is 26x20"
    ):
        strict[0]
    with pytest.warns(UserWarning), pytest.raises(MofmeError, match="gave up"):
        lenient[0]  # every pair is now bad: a clear error instead of an endless loop


# ---------------------------------------------------------------------------------- video


def write_video(root: Path, video: str, frames: int, skip_clean: int | None = None) -> None:
    """Frame t = base + 5 t (exact in 8 bits), snow == clean, names 1.png .. N.png."""
    base = random_u8(len(video))
    for t in range(frames):
        data = base + np.uint8(5 * t)
        write(root / "snow" / video / f"{t + 1}.png", data)
        if t != skip_clean:
            write(root / "clean" / video / f"{t + 1}.png", data)


def test_find_videos_natural_order_and_alias(tmp_path):
    write_video(tmp_path / "test_video", "v1", 11)
    write_video(tmp_path / "test_video", "v2", 3)
    videos = find_videos(tmp_path, "test")
    assert [v.name for v in videos] == ["v1", "v2"]
    assert [f.name for f in videos[0].snow_frames][:3] == ["1.png", "2.png", "3.png"]
    assert videos[0].snow_frames[-1].name == "11.png"
    assert [f.name for f in videos[0].clean_frames] == [f.name for f in videos[0].snow_frames]
    assert find_videos(tmp_path, "test_video")[0].name == "v1"


def test_find_videos_errors(tmp_path):
    write_video(tmp_path / "train", "v1", 4, skip_clean=2)
    with pytest.raises(MofmeError, match=r"video v1: frame 3\.png has no clean frame"):
        find_videos(tmp_path, "train")
    write_video(tmp_path / "test", "a", 2)
    (tmp_path / "test" / "clean" / "b").mkdir()
    with pytest.raises(MofmeError, match=r"video b is in .*clean but not in .*snow"):
        find_videos(tmp_path, "test")
    with pytest.raises(MofmeError, match="no video split folder"):
        find_videos(tmp_path, "val")


def test_video_clips_count_and_consistent_crop(tmp_path):
    write_video(tmp_path / "train", "long", 7)
    write_video(tmp_path / "train", "short", 2)
    videos = find_videos(tmp_path, "train")
    with pytest.warns(UserWarning, match="video short has 2 frames"):
        dataset = VideoClipDataset(videos, clip_len=3, crop=8, stride=2)
    assert len(dataset) == (7 - 3) // 2 + 1
    assert [dataset.clips[i][1] for i in range(len(dataset))] == [0, 2, 4]

    torch.manual_seed(1)
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["input"].shape == (3, 3, 8, 8) and item["video"] == "long"
        assert torch.equal(item["input"], item["gt"])
        # Same crop / flip on every frame: frames differ by exactly 5/255 per step.
        for t in range(1, 3):
            delta = item["input"][t] - item["input"][0]
            torch.testing.assert_close(delta, torch.full_like(delta, 5 * t / 255))
        assert item["start"] == dataset.clips[index][1]

    with pytest.warns(UserWarning), pytest.raises(MofmeError, match="clip_len=8"):
        VideoClipDataset(videos, clip_len=8)
