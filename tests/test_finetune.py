"""Fine-tuning: ``train.init`` / ``--init``, image -> video initialisation, frozen parts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mofme import checkpoint
from mofme.cli import main as cli_main
from mofme.config import from_dict
from mofme.errors import MofmeError
from mofme.finetune import init_from_checkpoint
from mofme.model.analysis import _part_of
from mofme.model.net import MoFMENet
from mofme.train import Trainer, TrainRunConfig, load_config, train
from mofme.weights import bundled_path
from tiny import clean_image, save_png


def _tint(img: np.ndarray) -> np.ndarray:
    """A degradation the bundled weights never saw: a strong warm colour cast."""
    return (img.astype(np.float32) * np.array([1.0, 0.8, 0.55]) + [10, 6, 0]).astype(np.uint8)


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ "Your own pairs" in the plain MoFME layout: train (12) and held-out test (4), 40x40."""
    root = tmp_path_factory.mktemp("own_pairs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test_tint", 4)):
        for i in range(n):
            clean = clean_image(rng, 40)
            save_png(root / split / "input" / f"{i}.png", _tint(clean))
            save_png(root / split / "gt" / f"{i}.png", clean)
    return root


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RVSD layout: one train video of 4 frames, 32x32."""
    root = tmp_path_factory.mktemp("rvsd_ft")
    rng = np.random.default_rng(1)
    clean = clean_image(rng, 40)
    for f in range(4):
        frame = np.roll(clean, f, axis=1)[:32, :32]
        save_png(root / "train" / "clean" / "v0" / f"{f}.png", frame)
        save_png(root / "train" / "snow" / "v0" / f"{f}.png", _tint(frame))
    return root


def _cfg(root: Path, out: Path, model: dict, train_: dict, **data: object) -> TrainRunConfig:
    d = {
        "model": model,
        "data": {"root": str(root), "crop": 32, "workers": 0, **data},
        "train": {
            "batch_size": 4,
            "steps": 3,
            "lr": 1e-3,
            "log_every": 1,
            "val_every": 0,
            "ckpt_every": 0,
            "tensorboard": False,
            "threads": 1,
            **train_,
        },
        "out": str(out),
    }
    return from_dict(TrainRunConfig, d)


# ------------------------------------------------------------------------- initialisation


def test_image_checkpoint_starts_video_model_exactly() -> None:
    image = checkpoint.load(bundled_path("image"))
    video = MoFMENet(dataclasses.replace(image.cfg, in_channels=6)).eval()
    report = init_from_checkpoint(video, "image")
    assert report.extended == ["head.0.weight"] and not report.kept and not report.ignored
    assert len(report.loaded) == len(video.state_dict()) - 1
    assert "extended 3 -> 6 input channels" in report.summary()
    for size in ((32, 32), (37, 53)):
        x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(video(torch.cat([x, torch.zeros_like(x)], 1)), image(x))


def _without_head_skip(tmp_path: Path) -> Path:
    """The bundled image model's weights without its head skip (it has one since stage 10)."""
    bundled = checkpoint.load(bundled_path("image"))
    assert bundled.cfg.head_skip
    image = MoFMENet(dataclasses.replace(bundled.cfg, head_skip=False)).eval()
    image.load_state_dict(
        {k: v for k, v in bundled.state_dict().items() if not k.startswith("skip.")}
    )
    path = tmp_path / "plain.safetensors"
    checkpoint.save(image, path)
    return path


def test_checkpoint_without_head_skip_starts_a_model_with_it_exactly(tmp_path: Path) -> None:
    plain = _without_head_skip(tmp_path)
    image = checkpoint.load(plain)
    skip = MoFMENet(dataclasses.replace(image.cfg, head_skip=True)).eval()
    with torch.no_grad():
        skip.skip.weight.fill_(1.0)  # init must set the new path to zero, whatever it held
    report = init_from_checkpoint(skip, str(plain))
    assert report.added == ["skip.weight", "skip.bias"] and not report.kept
    assert not report.config_diff and "head skip added at zero" in report.summary()
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(skip(x), image(x))
    # The other way round drops a learned path: refused unless told.
    ckpt = tmp_path / "skip.safetensors"
    checkpoint.save(skip, ckpt)
    with pytest.raises(MofmeError, match=r"head_skip=True \(run has False\)"):
        init_from_checkpoint(MoFMENet(image.cfg), str(ckpt))


@pytest.mark.parametrize("depth", [3, 4])
def test_checkpoint_starts_a_deeper_model_exactly(tmp_path: Path, depth: int) -> None:
    image = checkpoint.load(bundled_path("image")).eval()
    deep = MoFMENet(dataclasses.replace(image.cfg, depth=depth)).eval()
    report = init_from_checkpoint(deep, "image")
    n_new = sum(1 for k in deep.state_dict() if k.startswith(("blocks.2.", "blocks.3.")))
    assert len(report.deepened) == n_new > 0 and not report.kept and not report.config_diff
    assert "added as the identity" in report.summary()
    for size in ((40, 56), (33, 47)):
        x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            assert torch.equal(deep(x), image(x))
    # The new blocks are not frozen at zero: one step moves their output projections.
    deep.train()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    (deep(x) - x.flip(-1)).abs().mean().backward()
    assert deep.blocks[-1].attn.out.weight.grad.abs().sum() > 0
    # Shallower than the checkpoint drops learned blocks: refused unless told.
    ckpt = tmp_path / "deep.safetensors"
    checkpoint.save(deep, ckpt)
    with pytest.raises(MofmeError, match=rf"depth={depth} \(run has 2\)"):
        init_from_checkpoint(MoFMENet(image.cfg), str(ckpt))


def test_trainer_init_video_from_image(video_root: Path, tmp_path: Path) -> None:
    """``model.preset: init`` takes the checkpoint's architecture; the first step starts from
    the image model exactly, and the saved model card records the init."""
    cfg = _cfg(
        video_root,
        tmp_path / "run",
        {"preset": "init", "in_channels": 6},
        {"init": "image", "batch_size": 2, "weather_weight": 1.0},  # loss gets the frame
        kind="video",
        clip_len=2,
    )
    trainer = Trainer(cfg, progress=False)
    image = checkpoint.load(bundled_path("image"))
    model = trainer.raw_model.eval()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(model(torch.cat([x, torch.zeros_like(x)], 1)), image(x))
    trainer.close()
    result = train(cfg, overwrite=True, progress=False)
    assert result["finished"]
    saved = checkpoint.load(tmp_path / "run" / "model_last.safetensors")
    assert saved.cfg.in_channels == 6 and saved.extra["init"]["extended"] == ["head.0.weight"]
    # The reference channels have started to learn.
    assert saved.head[0].weight[:, 3:].abs().sum() > 0


def test_init_is_strict_unless_told(tmp_path: Path) -> None:
    ckpt = tmp_path / "small.safetensors"
    torch.manual_seed(0)
    checkpoint.save(MoFMENet.from_preset("tiny", dim=32, heads=2, head_dim=16), ckpt)
    other = MoFMENet.from_preset("tiny", dim=32, heads=2, head_dim=16, num_experts=4)
    with pytest.raises(MofmeError, match=r"num_experts=8 \(run has 4\)"):
        init_from_checkpoint(other, str(ckpt))
    # A function-changing option with identical shapes is also refused in strict mode.
    same_shapes = MoFMENet.from_preset("tiny", dim=32, heads=2, head_dim=16, global_residual=True)
    with pytest.raises(MofmeError, match="global_residual"):
        init_from_checkpoint(same_shapes, str(ckpt))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    report = init_from_checkpoint(other, str(ckpt), strict=False)
    theirs = load_file(str(ckpt))
    assert set(report.kept) == {k for k in before if ".experts." in k or ".router." in k}
    for k, v in other.state_dict().items():
        assert torch.equal(v, before[k] if k in report.kept else theirs[k])
    assert "num_experts=8 (run has 4)" in report.summary()
    # Routing and dropout are run-time choices: they may differ.
    fine = MoFMENet.from_preset("tiny", dim=32, heads=2, head_dim=16, routing="topp:0.5")
    assert not init_from_checkpoint(fine, str(ckpt)).config_diff
    with pytest.raises(MofmeError, match="not found"):
        init_from_checkpoint(fine, str(tmp_path / "missing.safetensors"))


def test_preset_init_needs_train_init(pairs_root: Path, tmp_path: Path) -> None:
    with pytest.raises(MofmeError, match=r"train\.init"):
        _cfg(pairs_root, tmp_path, {"preset": "init"}, {})
    with pytest.raises(MofmeError, match="unknown part"):
        _cfg(pairs_root, tmp_path, {"preset": "tiny"}, {"freeze": ["experts", "decoder"]})
    with pytest.raises(MofmeError, match="either freeze or train_only"):
        _cfg(pairs_root, tmp_path, {"preset": "tiny"}, {"freeze": ["head"], "train_only": ["tail"]})


# --------------------------------------------------------------------------------- freezing


@pytest.mark.parametrize(
    ("section", "frozen"),
    [
        ({"train_only": ["experts", "router"]}, None),
        (
            {"freeze": ["head", "embed", "attention", "tail"]},
            {"head", "embed", "attention", "tail"},
        ),
    ],
)
def test_frozen_parts_are_bit_identical(
    pairs_root: Path, tmp_path: Path, section: dict, frozen: set | None
) -> None:
    out = tmp_path / "run"
    cfg = _cfg(pairs_root, out, {"preset": "init"}, {"init": "image", "ema": 0.5, **section})
    result = train(cfg, progress=False)
    assert result["finished"] and result["skipped"] == 0
    start = load_file(str(bundled_path("image")))
    after = load_file(str(out / "model_last.safetensors"))  # the EMA weights
    state = torch.load(out / "state_last.pt", weights_only=True)["model"]  # the raw weights
    trained = {"experts", "router"} if frozen is None else None
    changed = set()
    for k, v in start.items():
        part = _part_of(k)
        is_frozen = part not in trained if trained is not None else part in frozen
        if is_frozen:
            assert torch.equal(after[k], v) and torch.equal(state[k], v), k
        elif not torch.equal(state[k], v):
            changed.add(part)
    assert changed == (
        trained if trained is not None else {"fme_base", "router", "experts", "ffn", "unpatch"}
    )


def test_everything_frozen_is_an_error(pairs_root: Path, tmp_path: Path) -> None:
    from mofme.model.analysis import PARTS

    cfg = _cfg(pairs_root, tmp_path, {"preset": "tiny"}, {"freeze": list(PARTS)})
    with pytest.raises(MofmeError, match="nothing to train"):
        Trainer(cfg, progress=False)


# ---------------------------------------------------------------------------- fine-tuning


def test_finetune_improves_heldout_psnr(pairs_root: Path, tmp_path: Path) -> None:
    """From the bundled image model, a short fine-tune on a small folder of new pairs lifts
    PSNR on held-out pairs of the same kind."""
    cfg = _cfg(
        pairs_root,
        tmp_path / "ft",
        {"preset": "init"},
        {"init": "image", "steps": 60, "lr": 1e-3, "warmup_steps": 5},
        val_split="test",
    )
    trainer = Trainer(cfg, progress=False)
    before = trainer.validate()["psnr"]
    result = trainer.run()
    after = result["val"]["psnr"]
    assert after > before + 1.0, (before, after)


def test_cli_init_flag(pairs_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "finetune.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"preset": "init"},
                "data": {"root": str(pairs_root), "crop": 32, "workers": 0},
                "train": {
                    "batch_size": 4,
                    "steps": 2,
                    "val_every": 0,
                    "ckpt_every": 0,
                    "tensorboard": False,
                    "threads": 1,
                    "train_only": ["experts"],
                },
                "out": str(tmp_path / "run"),
            }
        )
    )
    assert cli_main(["train", str(config), "--no-progress"]) == 2  # preset init without init
    ckpt = str(bundled_path("image"))
    assert cli_main(["train", str(config), "--init", ckpt, "--no-progress"]) == 0
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.train.init == ckpt and saved.train.train_only == ["experts"]
    # --resume continues from the run's own state, not from the init checkpoint again.
    assert (
        cli_main(
            ["train", str(config), "--init", ckpt, "--resume", "--steps", "3", "--no-progress"]
        )
        == 0
    )
    assert checkpoint.load(tmp_path / "run" / "model_last.safetensors").step == 3


def test_trainer_adds_head_skip_and_takes_the_loss_options(
    pairs_root: Path, tmp_path: Path
) -> None:
    """``model: {preset: init, head_skip: true}`` continues a model without it exactly, with the
    configured loss options."""
    plain = _without_head_skip(tmp_path)
    cfg = _cfg(
        pairs_root,
        tmp_path / "run",
        {"preset": "init", "head_skip": True},
        {
            "init": str(plain),
            "smooth_l1_beta": 0.01,
            "weather_weight": 2.0,
            "steps": 2,
            "weather_mask": "local",
        },
    )
    trainer = Trainer(cfg, progress=False)
    assert trainer.criterion.smooth_l1_beta == 0.01 and trainer.criterion.weather_weight == 2.0
    assert trainer.criterion.weather_mask == "local"
    assert trainer.init_report.added == ["skip.weight", "skip.bias"]
    image = checkpoint.load(plain)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(trainer.raw_model.eval()(x), image(x))
    trainer.raw_model.train()
    assert trainer.run()["finished"]  # the training step hands the degraded input to the loss
