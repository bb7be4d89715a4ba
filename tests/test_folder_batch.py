"""``mofme restore --batch``: consecutive same-size whole images in one forward.

Batched outputs equal one-at-a-time outputs (to 1 LSB; the convolutions may pick other kernels
for another batch size, so the floats can differ in the last bits), the order, failures,
tiled images and out-of-memory fallback behave as without batching, and ``--batch`` is checked.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mofme import checkpoint
from mofme.cli import main
from mofme.data.io import save_image
from mofme.errors import MofmeError
from mofme.inference import files as files_mod
from mofme.inference import tiling
from mofme.inference.files import batch_limit, parse_batch, restore_files
from mofme.inference.options import InferenceOptions

DATA = Path(__file__).parent / "data"
CKPT = {"image": DATA / "guard_image.safetensors", "video": DATA / "guard_video.safetensors"}


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def _mixed_folder(root: Path) -> list[str]:
    """Runs of same-size images broken by other sizes, a tiled (large) image, grey, RGBA,
    16-bit and a corrupt file; returns the names expected in the output."""
    root.mkdir(parents=True)
    a, b, big = (24, 32), (17, 9), (40, 56)  # big: tiled under the card's 32-pixel tile
    plan = [a, a, a, a, a, b, a, a, "corrupt", a, "grey", "rgba", "deep", big, a, a, b, b]
    names = []
    for i, kind in enumerate(plan):
        name = f"{i:02d}.png"
        path = root / name
        if kind == "corrupt":
            path.write_bytes(b"not a png")
            continue
        if kind == "grey":
            Image.fromarray((_rgb(*a, i)[..., 0] * 255).astype(np.uint8), "L").save(path)
        elif kind == "rgba":
            save_image(path, _rgb(*a, i), alpha=np.linspace(0, 1, a[0] * a[1]).reshape(a))
        elif kind == "deep":
            save_image(path, _rgb(*a, i), bit_depth=16)
        else:
            save_image(path, _rgb(*kind, i))  # type: ignore[misc]
        names.append(name)
    return names


def _run(src: Path, out: Path, kind: str, batch: int | None, logs: list[str] | None = None):
    """``restore_files`` with the guard checkpoint (its card: 32-pixel tiles above 32 pixels);
    returns the result and the (B, H, W) of every forward."""
    model = checkpoint.load(CKPT[kind])
    model.extra = {**(getattr(model, "extra", None) or {}), "card": {"inference": {"tile": 32}}}
    shapes: list[tuple[int, int, int]] = []
    model.register_forward_pre_hook(
        lambda _m, args: shapes.append((args[0].shape[0], *args[0].shape[2:]))
    )
    options = InferenceOptions(tile="auto", overlap=8, precision="fp32")
    result = restore_files(
        [str(src)],
        out,
        lambda device: model.to(device).eval(),
        options,
        torch.device("cpu"),
        batch=batch,
        log=(logs.append if logs is not None else lambda _m: None),
    )
    return result, shapes


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(folder.iterdir()):
        with Image.open(path) as im:
            out[path.name] = np.asarray(im).astype(np.int32)
    return out


@pytest.mark.parametrize("kind", ["image", "video"])
def test_batched_equals_one_at_a_time(tmp_path, kind):
    src = tmp_path / "in"
    names = _mixed_folder(src)
    ref, ref_shapes = _run(src, tmp_path / "one", kind, batch=1)
    got, shapes = _run(src, tmp_path / "three", kind, batch=3)
    assert ref.done == got.done == len(names) and len(ref.failed) == len(got.failed) == 1
    # Batches follow the input order: runs of the same size, at most 3, broken by the corrupt
    # file and by other sizes; the tiled image goes alone, tile by tile (4 tiles of 32).
    whole = [s for s in shapes if s[1:] != (32, 32)]
    assert whole == [
        (3, 24, 32), (2, 24, 32), (1, 17, 9), (2, 24, 32),  # a a a | a a | b | a a | corrupt
        (3, 24, 32), (1, 24, 32),  # a grey rgba | deep
        (2, 24, 32), (2, 17, 9),  # big (tiles) | a a | b b
    ]  # fmt: skip
    assert len(shapes) - len(whole) == 4 and len(ref_shapes) == 16 + 4
    assert all(s[0] == 1 for s in ref_shapes)
    want, have = _pixels(tmp_path / "one"), _pixels(tmp_path / "three")
    assert sorted(want) == sorted(have) == names
    worst = 0
    for name in names:
        assert have[name].shape == want[name].shape, name
        worst = max(worst, int(np.abs(have[name] - want[name]).max()))
    assert worst <= 1  # measured 0 here; another batch size may round a last float bit


def test_batch_float_outputs_match_single_images():
    """The model treats the images of a batch independently (attention within an image,
    routing per token): batched floats equal single-image floats to rounding."""
    for kind in ("image", "video"):
        model = checkpoint.load(CKPT[kind]).eval()
        x = torch.rand(4, model.cfg.in_channels, 24, 40, generator=torch.Generator().manual_seed(0))
        batched = tiling.restore_image(model, x)
        single = torch.cat([tiling.restore_image(model, x[i : i + 1]) for i in range(4)])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_cli_batch_with_corrupt_file_restores_the_others(tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(6):
        save_image(src / f"{i}.png", _rgb(16, 24, i))
    (src / "3b.png").write_bytes(b"")  # between two same-size images
    out = tmp_path / "out"
    args = ["restore", str(src), "--out", str(out), "--ckpt", str(CKPT["image"])]
    rc = main([*args, "--batch", "4", "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.png" for i in range(6)]
    assert "3b.png" in captured.err and "1 failed" in captured.err
    assert "Traceback" not in captured.err
    assert "restored 6 of 7 images" in captured.out
    assert "peak memory" in captured.out and "MB resident" in captured.out
    assert "images/s" in captured.out
    # Without --overwrite the existing outputs are refused before anything is written.
    assert main([*args, "--batch", "4", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5", ""])
def test_bad_batch_is_a_one_line_error(tmp_path, capsys, bad):
    save_image(tmp_path / "in" / "a.png", _rgb(8, 8, 0))
    out = tmp_path / "out"
    args = ["restore", str(tmp_path / "in"), "--out", str(out), "--ckpt", str(CKPT["image"])]
    assert main([*args, "--batch", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch must be auto or a number" in err
    assert not out.exists()


def test_parse_batch_and_limits():
    assert parse_batch("auto") is None and parse_batch("AUTO") is None and parse_batch(None) is None
    assert parse_batch("4") == 4 and parse_batch(2) == 2
    for bad in ("0", "x", "-1", "2.0"):
        with pytest.raises(MofmeError):
            parse_batch(bad)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # no GPU needed to name one
    assert batch_limit(None, cpu, 24, 32) == 1  # auto on CPU: one image per forward
    assert batch_limit(3, cpu, 24, 32) == 3
    assert batch_limit(None, cuda, 240, 360) == files_mod.AUTO_BATCH
    assert batch_limit(None, cuda, 1024, 1024) == 2  # the pixel budget
    assert batch_limit(None, cuda, 2000, 3000) == 1
    assert batch_limit(16, cuda, 2000, 3000) == 16  # a number is used as given


def test_out_of_memory_batch_falls_back_to_single_images(tmp_path, monkeypatch):
    src = tmp_path / "in"
    for i in range(7):
        save_image(src / f"{i}.png", _rgb(16, 24, i))
    ref, _ = _run(src, tmp_path / "one", "image", batch=1)
    original = tiling.restore_image

    def no_room_for_4(model, x, *args, **kwargs):
        if x.shape[0] >= 4:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ...")
        return original(model, x, *args, **kwargs)

    monkeypatch.setattr(tiling, "restore_image", no_room_for_4)
    logs: list[str] = []
    got, shapes = _run(src, tmp_path / "four", "image", batch=4, logs=logs)
    assert ref.done == got.done == 7 and not got.failed
    # 4 fail together: one by one, then batches of at most 2 for the rest.
    assert [s[0] for s in shapes] == [1, 1, 1, 1, 2, 1]
    assert any("out of memory with 4 images" in m for m in logs)
    want, have = _pixels(tmp_path / "one"), _pixels(tmp_path / "four")
    assert all(np.abs(have[n] - want[n]).max() <= 1 for n in want)


def test_int8_keeps_one_image_per_forward(tmp_path):
    from mofme.inference.fast import int8_usable

    if not int8_usable():
        pytest.skip("no int8 CPU engine in this PyTorch build")
    src = tmp_path / "in"
    for i in range(3):
        save_image(src / f"{i}.png", _rgb(16, 24, i))
    model = checkpoint.load(CKPT["image"])
    shapes: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: shapes.append(args[0].shape[0]))
    logs: list[str] = []
    result = restore_files(
        [str(src)],
        tmp_path / "out",
        lambda device: model.to(device).eval(),
        InferenceOptions(precision="int8"),
        torch.device("cpu"),
        batch=3,
        log=logs.append,
    )
    assert result.done == 3 and shapes == [1, 1, 1]
    assert any("--batch 3 ignored with int8" in m for m in logs)


def test_lookahead_bounds_decoded_pixels():
    """The reader waits while two or more decoded images hold the pixel limit, and resumes when
    the loop takes one; stop() releases it."""
    ahead = files_mod._Lookahead(100)
    ahead.add(60)
    ahead.add(60)  # two images, 120 pixels: the next read waits
    passed = threading.Event()

    def reader() -> None:
        ahead.wait()
        passed.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.05)
    assert not passed.is_set()
    ahead.take(60)  # one image left: room again
    assert passed.wait(2)
    ahead.add(60)
    ahead.add(60)
    t = threading.Thread(target=reader, daemon=True)
    passed.clear()
    t.start()
    ahead.stop()
    assert passed.wait(2)
