"""``torchrun``-style sharding of ``mofme restore`` / ``mofme test``: 2 gloo ranks on CPU."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mofme import checkpoint
from mofme.cli import main
from mofme.data.io import load_image, save_image
from mofme.inference.distributed import Ranks
from mofme.model.config import get_preset
from mofme.model.net import MoFMENet

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, argv: list[str], results: Path) -> None:
    """One rank, as torchrun would start it: env vars, then the command line."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MOFME_PRECISION="fp32",
    )
    torch.set_num_threads(1)
    import mofme.data.io as io

    written: list[str] = []
    real_save = io.save_image

    def recording_save(path: Any, *args: Any, **kwargs: Any) -> Any:
        written.append(str(path))
        return real_save(path, *args, **kwargs)

    io.save_image = recording_save  # the commands import it from mofme.data.io at run time
    rc = main(argv)
    (results / f"rank{rank}.json").write_text(json.dumps({"rc": rc, "written": written}))


def _spawn(argv: list[str], results: Path) -> list[dict[str, Any]]:
    results.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(_free_port(), argv, results), nprocs=WORLD, join=True)
    return [json.loads((results / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = get_preset("tiny", dim=16, heads=2, head_dim=8, head_channels=4, unpatch_channels=8)
    path = tmp_path_factory.mktemp("ckpt") / "slim.safetensors"
    checkpoint.save(MoFMENet(cfg), path)
    return path


def _images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = (24, 32) if i % 2 else (17, 40)  # two sizes: shards mix them
        paths.append(folder / f"img{i}.png")
        save_image(paths[-1], rng.random((h, w, 3), dtype=np.float32))
    return paths


def test_shard_is_round_robin_and_disjoint():
    items = list(range(7))
    shards = [Ranks(rank=r, world=3).shard(items) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert Ranks().shard(items) == items and not Ranks().active


@pytest.mark.slow
def test_two_ranks_restore_every_file_once_same_as_one_process(tmp_path, ckpt):
    src = tmp_path / "in"
    names = [p.name for p in _images(src, 5)]
    single, multi = tmp_path / "single", tmp_path / "multi"
    common = ["--ckpt", str(ckpt), "--precision", "fp32"]
    assert main(["restore", str(src), "--out", str(single), *common]) == 0
    ranks = _spawn(["restore", str(src), "--out", str(multi), *common], tmp_path / "res")
    assert [r["rc"] for r in ranks] == [0, 0]
    written = [Path(p).name for r in ranks for p in r["written"]]
    assert sorted(written) == sorted(names)  # every file exactly once
    assert all(r["written"] for r in ranks)  # and both ranks did work
    for name in names:
        a, b = load_image(single / name).rgb, load_image(multi / name).rgb
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_two_ranks_test_merge_to_the_single_process_table(tmp_path, ckpt):
    root = tmp_path / "data"
    inputs = _images(root / "input", 5, seed=1)
    _images(root / "gt", 5, seed=2)
    args = ["test", str(ckpt), "--data", str(root), "--layout", "folder", "--precision", "fp32"]
    args += ["--flops-size", "none", "--no-progress"]
    single, multi = tmp_path / "single.json", tmp_path / "multi.json"
    assert main([*args, "--out", str(single)]) == 0
    saved = tmp_path / "saved"
    argv = [*args, "--out", str(multi), "--save-images", str(saved)]
    ranks = _spawn(argv, tmp_path / "res")
    assert [r["rc"] for r in ranks] == [0, 0]
    written = sorted(Path(p).name for r in ranks for p in r["written"])
    assert written == sorted(p.name for p in inputs)
    one, two = json.loads(single.read_text()), json.loads(multi.read_text())
    assert two["meta"]["ranks"] == WORLD
    keys = ("group", "name", "index", "psnr", "ssim", "psnr_y", "ssim_y")
    strip = lambda recs: [{k: r[k] for k in keys} for r in recs]  # noqa: E731
    assert strip(two["records"]) == strip(one["records"])
    for metric in ("psnr", "ssim", "psnr_y", "ssim_y"):
        assert two["average"][metric] == pytest.approx(one["average"][metric], abs=1e-9)
