"""DDP on CPU without torchrun: two gloo processes train together and stay identical."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file

from mofme.config import from_dict
from mofme.train import Trainer, TrainRunConfig
from tiny import TINY_MODEL

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(path)


def _run_config(root: Path, out: Path, video: bool) -> dict[str, Any]:
    return {
        "model": {**TINY_MODEL, "in_channels": 6 if video else 3},
        "data": {
            "kind": "video" if video else "image",
            "root": str(root),
            "crop": 32,
            "workers": 0,
            "clip_len": 2,
        },
        "train": {
            "batch_size": 4,
            "steps": 3,
            "log_every": 1,
            "val_every": 0,
            "ckpt_every": 0,
            "tensorboard": False,
            "threads": 1,
            "ema": 0.5,
        },
        "out": str(out),
    }


def _worker(rank: int, runs: list[tuple[dict[str, Any], int]], results: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    for i, (cfg_dict, port) in enumerate(runs):
        os.environ["MASTER_PORT"] = str(port)
        trainer = Trainer(from_dict(TrainRunConfig, cfg_dict), progress=False)
        names: list[str] = []
        step = trainer.train_step

        def recording_step(
            batch: dict[str, Any], step: Any = step, names: list[str] = names
        ) -> dict[str, Any]:
            names.extend(batch["name"] if "name" in batch else batch["video"])
            return step(batch)

        trainer.train_step = recording_step  # type: ignore[method-assign]
        result = trainer.run()
        state = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
        torch.save({"state": state, "names": names, "result": result}, results / f"{i}_{rank}.pt")


@pytest.mark.slow
def test_two_rank_training_keeps_ranks_identical(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images, videos = tmp_path / "images", tmp_path / "videos"
    for i in range(8):
        for side in ("input", "gt"):
            _write(images / "train" / side / f"{i}.png", rng)
    for v in range(4):
        for f in range(3):
            for side in ("snow", "clean"):
                _write(videos / "train" / side / f"v{v}" / f"{f}.png", rng)
    runs = [
        (_run_config(images, tmp_path / "run_image", video=False), _free_port()),
        (_run_config(videos, tmp_path / "run_video", video=True), _free_port()),
    ]
    mp.spawn(_worker, args=(runs, tmp_path), nprocs=WORLD, join=True)

    for i, (cfg, _) in enumerate(runs):
        ranks = [torch.load(tmp_path / f"{i}_{r}.pt", weights_only=True) for r in range(WORLD)]
        a, b = ranks[0]["state"], ranks[1]["state"]
        assert all(torch.equal(a[k], b[k]) for k in a), f"run {i}: ranks diverged"
        # Global batch 4 = 2 per rank; each rank saw its own half of the data.
        assert len(ranks[0]["names"]) == len(ranks[1]["names"]) == 3 * 2
        assert ranks[0]["names"] != ranks[1]["names"]
        assert ranks[0]["result"]["finished"] and ranks[0]["result"]["step"] == 3
        # Rank 0 wrote the files: the EMA model, and the raw weights in the training state.
        out = Path(cfg["out"])
        saved = torch.load(out / "state_last.pt", weights_only=True)
        assert all(torch.equal(saved["model"][k], a[k]) for k in a)
        assert len(saved["rng"]) == WORLD and saved["world_size"] == WORLD
        assert load_file(str(out / "model_last.safetensors")).keys() == a.keys()
