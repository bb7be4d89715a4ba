"""``mofme restore``: folders, bad files, refusals, bit depth and alpha."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mofme import checkpoint
from mofme.cli import main
from mofme.data.io import load_image, save_image
from mofme.errors import MofmeError
from mofme.model.config import get_preset
from mofme.model.net import MoFMENet


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = get_preset("tiny", dim=16, heads=2, head_dim=8, head_channels=4, unpatch_channels=8)
    path = tmp_path_factory.mktemp("ckpt") / "slim.safetensors"
    checkpoint.save(MoFMENet(cfg), path)
    return path


def rand_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def test_folder_with_good_corrupt_and_other_files(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    save_image(src / "a.png", rand_rgb(20, 30))
    save_image(src / "b.jpg", rand_rgb(17, 9, seed=1))
    (src / "broken.png").write_bytes(b"this is not a png")
    (src / "empty.png").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc = main(["restore", str(src), "--out", str(out), "--ckpt", str(ckpt)])
    captured = capsys.readouterr()
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert load_image(out / "b.png").rgb.shape == (17, 9, 3)
    assert "broken.png" in captured.err and "empty.png" in captured.err
    assert "2 failed" in captured.err and "Traceback" not in captured.err
    assert "restored 2 of 4" in captured.out and "1 non-image" in captured.out


def test_files_recursive_and_extension(tmp_path, ckpt):
    save_image(tmp_path / "in" / "sub" / "c.png", rand_rgb(12, 12))
    save_image(tmp_path / "single.bmp", rand_rgb(8, 40))
    args = ["restore", str(tmp_path / "in"), str(tmp_path / "single.bmp"), "--recursive"]
    assert main([*args, "--out", str(tmp_path / "out"), "--ckpt", str(ckpt), "--ext", "tif"]) == 0
    assert (tmp_path / "out" / "sub" / "c.tif").is_file()
    assert load_image(tmp_path / "out" / "single.tif").rgb.shape == (8, 40, 3)


def test_tiled_restore_matches_shape(tmp_path, ckpt):
    save_image(tmp_path / "big.png", rand_rgb(70, 90))
    args = ["restore", str(tmp_path / "big.png"), "--out", str(tmp_path / "o"), "--ckpt", str(ckpt)]
    assert main([*args, "--tile", "32", "--overlap", "8"]) == 0
    assert load_image(tmp_path / "o" / "big.png").rgb.shape == (70, 90, 3)
    assert main([*args, "--tile", "32", "--overlap", "32"]) == 2


def test_output_equal_to_input_is_refused(tmp_path, ckpt, capsys):
    save_image(tmp_path / "in" / "a.png", rand_rgb(8, 8))
    before = (tmp_path / "in" / "a.png").read_bytes()
    rc = main(["restore", str(tmp_path / "in"), "--out", str(tmp_path / "in"), "--ckpt", str(ckpt)])
    assert rc == 2 and "input folder" in capsys.readouterr().err
    # A single file whose output would replace it.
    rc = main(
        [
            "restore",
            str(tmp_path / "in" / "a.png"),
            "--out",
            str(tmp_path / "in"),
            "--ckpt",
            str(ckpt),
        ]
    )
    assert rc == 2 and "overwrite an input" in capsys.readouterr().err
    assert (tmp_path / "in" / "a.png").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.png"]


def test_16_bit_and_alpha_are_kept(tmp_path, ckpt):
    rgb = rand_rgb(10, 14)
    alpha = np.linspace(0, 1, 140, dtype=np.float32).reshape(10, 14)
    save_image(tmp_path / "in" / "deep.png", rgb, bit_depth=16)
    save_image(tmp_path / "in" / "rgba.png", rgb, alpha=alpha)
    assert (
        main(["restore", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--ckpt", str(ckpt)])
        == 0
    )
    deep = load_image(tmp_path / "o" / "deep.png")
    assert deep.bit_depth == 16 and deep.alpha is None
    rgba = load_image(tmp_path / "o" / "rgba.png")
    assert rgba.bit_depth == 8
    np.testing.assert_allclose(rgba.alpha, load_image(tmp_path / "in" / "rgba.png").alpha)


def test_missing_input_and_empty_folder(tmp_path, ckpt, capsys):
    rc = main(
        ["restore", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o"), "--ckpt", str(ckpt)]
    )
    assert rc == 1 and "nope.png" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    rc = main(
        ["restore", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--ckpt", str(ckpt)]
    )
    assert rc == 2 and "no images" in capsys.readouterr().err


def test_tile_option_auto_whole_and_fixed():
    from mofme.inference.options import AUTO_TILE, InferenceOptions

    def resolved(tile: str, h: int, w: int) -> int | None:
        return InferenceOptions(tile=tile, overlap=32).tile_for(h, w)

    assert resolved("auto", 480, 720) is None  # whole image up to a megapixel
    assert resolved("auto", 2000, 3000) == AUTO_TILE
    assert resolved("0", 2000, 3000) is None
    assert resolved("256", 480, 720) == 256
    for bad in ("abc", "4", "-1"):
        with pytest.raises(MofmeError):
            resolved(bad, 10, 10)
