"""Training loop: config, schedule, data order, steps, resume, video reference, NaN, CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mofme.cli import main as cli_main
from mofme.config import from_dict, to_dict
from mofme.errors import MofmeError
from mofme.model.net import MoFMENet
from mofme.train import (
    EpochBatchSampler,
    Trainer,
    TrainRunConfig,
    load_config,
    lr_at,
    model_input,
    resolve_model,
    train,
)
from tiny import TINY_MODEL, clean_image, save_png

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------- fixtures


def _degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bright vertical streaks ("rain") on a copy of ``img``."""
    out = img.astype(np.float32)
    for x in rng.integers(0, img.shape[1], size=img.shape[1] // 4):
        out[:, x] = 0.5 * out[:, x] + 0.5 * 255
    return out.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MoFME layout: train (8 pairs), test_rain and test_snow (2 pairs each), 40x40."""
    root = tmp_path_factory.mktemp("allweather")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test_rain", 2), ("test_snow", 2)):
        for i in range(n):
            clean = clean_image(rng, 40)
            save_png(root / split / "input" / f"{i}.png", _degrade(clean, rng))
            save_png(root / split / "gt" / f"{i}.png", clean)
    return root


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RVSD layout: 2 train videos of 5 frames, 1 test video of 4 frames, 32x32."""
    root = tmp_path_factory.mktemp("rvsd")
    rng = np.random.default_rng(1)
    for split, videos, frames in (("train", 2, 5), ("test", 1, 4)):
        for v in range(videos):
            clean = clean_image(rng, 40)
            for f in range(frames):
                frame = np.roll(clean, f, axis=1)[:32, :32]
                save_png(root / split / "clean" / f"v{v}" / f"{f}.png", frame)
                save_png(root / split / "snow" / f"v{v}" / f"{f}.png", _degrade(frame, rng))
    return root


def _cfg(root: Path, out: Path, is_video: bool = False, **sections: dict) -> TrainRunConfig:
    data = {"kind": "video" if is_video else "image", "root": str(root), "crop": 32, "workers": 0}
    if is_video:
        data["clip_len"] = 3
    data.update(sections.pop("data", {}))
    model = {**TINY_MODEL, "in_channels": 6 if is_video else 3, **sections.pop("model", {})}
    tr = {
        "batch_size": 4,
        "steps": 6,
        "lr": 1e-3,
        "log_every": 2,
        "val_every": 0,
        "ckpt_every": 0,
        "tensorboard": False,
        "threads": 1,  # the tests share the machine; more threads only add contention
        **sections.pop("train", {}),
    }
    d = {"model": model, "data": data, "train": tr, "out": str(out), **sections}
    return from_dict(TrainRunConfig, d)


# ------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("section", "extra", "key"),
    [
        (None, {"trian": {}}, "trian"),
        ("train", {"lr_max": 2}, "lr_max"),
        ("data", {"rooot": "x"}, "rooot"),
        ("model", {"dimm": 8}, "dimm"),
        ("model", {"routing": {"selection": "topp", "pp": 0.5}}, "pp"),
    ],
)
def test_unknown_keys_are_errors(
    tmp_path: Path, section: str | None, extra: dict, key: str
) -> None:
    d: dict = {"model": {"preset": "tiny"}, "data": {"root": "x"}, "train": {"steps": 1}}
    (d if section is None else d[section]).update(extra)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(MofmeError, match=key):
        load_config(path)


def test_set_override_and_types(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: tiny}\ndata: {root: d}\ntrain: {steps: 10}\n")
    cfg = load_config(path, ["train.lr=1e-3", "model.router=uar", "model.routing=topp:0.6"])
    assert cfg.train.lr == 1e-3
    mcfg = cfg.model
    assert mcfg.router == "uar" and mcfg.routing.selection == "topp" and mcfg.routing.p == 0.6
    assert mcfg.dim == 64  # the tiny preset's
    for bad, key in (
        ("train.lr=fast", "train.lr"),
        ("model.dim=big", "model.dim"),
        ("train.amp=fp8", "train.amp"),
        ("model.preset=huge", "huge"),
        ("train.epochs=3", "not both"),
    ):
        with pytest.raises(MofmeError, match=key):
            load_config(path, [bad])


def test_model_overrides_merge_routing() -> None:
    mcfg = resolve_model({"preset": "paper", "in_channels": 6, "routing": {"selection": "topp"}})
    assert (mcfg.dim, mcfg.in_channels, mcfg.routing.selection, mcfg.routing.k) == (
        384,
        6,
        "topp",
        4,
    )


def test_balance_loss_is_a_model_field(tmp_path: Path) -> None:
    base = {"data": {"root": "d"}, "train": {"steps": 1}}
    cfg = from_dict(TrainRunConfig, {**base, "model": {"preset": "tiny", "balance_loss": "cv2"}})
    assert cfg.model.balance_loss == "cv2"
    assert all(layer.balance_loss == "cv2" for layer in MoFMENet(cfg.model).fme_layers)
    # train.balance_loss, its old place, still in the config.yaml of older runs, moves over.
    old = {"model": {"preset": "tiny"}, "data": {"root": "d"}, "train": {"steps": 1}}
    old["train"]["balance_loss"] = "cv2"
    assert from_dict(TrainRunConfig, old).model == cfg.model
    old["model"]["balance_loss"] = "switch"
    with pytest.raises(MofmeError, match="contradicts"):
        from_dict(TrainRunConfig, old)
    # The saved config holds the resolved model and reloads to the same run.
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert "preset" not in to_dict(cfg)["model"] and load_config(path) == cfg


def test_cli_flags_are_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--steps / --out / --device go through the loader like --set: a config without a length
    is complete with --steps, and a bad flag value is refused by the same check."""
    import mofme.train

    seen: list[TrainRunConfig] = []
    monkeypatch.setattr(
        mofme.train, "train", lambda cfg, **kw: seen.append(cfg) or {"interrupted": None}
    )
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: tiny}\ndata: {root: d}\ntrain: {epochs: 2}\n")
    argv = ["train", str(path), "--steps", "7", "--out", str(tmp_path / "o: x"), "--device", "cpu"]
    assert cli_main(argv) == 0
    cfg = seen[0]
    assert (cfg.train.steps, cfg.train.epochs, cfg.out, cfg.train.device) == (
        7, None, str(tmp_path / "o: x"), "cpu",
    )  # fmt: skip
    assert cli_main(["train", str(path), "--steps", "0"]) == 2


def test_items_draw_from_their_own_generator(image_root: Path) -> None:
    """An item is a function of (seed, epoch, index) and leaves the global RNG alone."""
    from mofme.data.datasets import PairedImageDataset
    from mofme.data.pairs import find_pairs
    from mofme.training.sampling import EpochSeeded

    items = EpochSeeded(PairedImageDataset(find_pairs(image_root, "mofme", "train"), crop=16), 3)
    before = torch.get_rng_state()
    a, b, c = items[(2, 0)], items[(2, 0)], items[(2, 1)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a["input"], b["input"]) and not torch.equal(a["input"], c["input"])


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_repo_configs_load(path: Path) -> None:
    cfg = load_config(path)
    channels = cfg.model.in_channels
    assert channels == 3 if cfg.data.kind == "image" else channels in (3, 6)
    expected = {"rvsd_video.yaml": 6, "bundled_video.yaml": 6, "bundled_image.yaml": 3}
    assert channels == expected.get(path.name, channels)


def test_image_data_needs_three_channels(image_root: Path, tmp_path: Path) -> None:
    with pytest.raises(MofmeError, match="in_channels"):
        _cfg(image_root, tmp_path, model={"in_channels": 6})


# ----------------------------------------------------------------------------------- schedule


def test_lr_schedule() -> None:
    total, warm, lr, low = 100, 10, 2e-4, 1e-6
    values = [lr_at(s, total, warm, lr, low) for s in range(total)]
    assert values[:warm] == pytest.approx([lr * (s + 1) / warm for s in range(warm)])
    assert values[warm] == pytest.approx(lr)
    assert values[-1] == pytest.approx(low, abs=1e-15)
    assert all(a >= b for a, b in zip(values[warm:], values[warm + 1 :]))
    mid = warm + (total - warm - 1) / 2
    assert lr_at(int(mid), total, warm, lr, low) == pytest.approx((lr + low) / 2, rel=0.05)
    assert lr_at(0, 1, 0, lr, low) == low  # a one-step run ends (and starts) at min_lr


# ------------------------------------------------------------------------------- data order


def test_sampler_shards_and_skips() -> None:
    world, batch = 2, 3
    per_rank = [EpochBatchSampler(20, batch, r, world, seed=5) for r in range(world)]
    epoch0 = [[i for b in s for i, _ in b] for s in per_rank]
    assert not set(epoch0[0]) & set(epoch0[1])  # ranks see different samples
    assert all(len(e) == (20 // world // batch) * batch for e in epoch0)
    per_rank[0].set_position(1, 0)
    epoch1 = [i for b in per_rank[0] for i, e in b]
    assert epoch1 != epoch0[0]  # a new permutation every epoch
    per_rank[0].set_position(1, 2)
    tail = list(per_rank[0])
    assert [i for b in tail for i, _ in b] == epoch1[2 * batch :]
    assert all(e == 1 for b in tail for _, e in b)


# -------------------------------------------------------------------------------- training


def test_overfits_one_batch(image_root: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(image_root, tmp_path, train={"steps": 30, "lr": 2e-3}), progress=False)
    batch = next(trainer.stream)
    losses = [trainer.train_step(batch)["loss"] for _ in range(30)]
    trainer.close()
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_train_run_writes_outputs(image_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _cfg(
        image_root,
        out,
        data={"val_split": "test"},
        train={"steps": 4, "val_every": 2, "ckpt_every": 2, "tensorboard": True, "ema": 0.9},
    )
    result = train(cfg, progress=False)
    assert result["finished"] and result["step"] == 4 and result["skipped"] == 0
    assert set(result["val"]["groups"]) == {"rain", "snow"}
    names = {p.name for p in out.iterdir()}
    assert {"model_last.safetensors", "model_best.safetensors", "state_last.pt"} <= names
    assert {"log.jsonl", "val.jsonl", "config.yaml", "tb"} <= names
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 4]  # step 1, every log_every, the last step
    assert {"loss", "smooth_l1", "aux", "lr", "grad_norm", "active_experts"} <= set(logs[0])
    assert len(logs[0]["active_experts"]) == 1 and logs[0]["active_experts"][0] == 2.0  # top-2
    assert [json.loads(v)["step"] for v in (out / "val.jsonl").read_text().splitlines()] == [2, 4]
    from mofme import checkpoint

    model = checkpoint.load(out / "model_last.safetensors")
    assert model.step == 4 and model.extra["kind"] == "image" and model.extra["ema"]
    assert model.extra["train_config"]["train"]["steps"] == 4
    # The saved config reloads to the same run.
    assert load_config(out / "config.yaml") == cfg
    # A fresh run into the same folder is refused; --overwrite starts over.
    with pytest.raises(MofmeError, match="--resume"):
        train(cfg, progress=False)
    assert train(cfg, overwrite=True, progress=False)["step"] == 4


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
def test_resume_is_bit_identical(
    image_root: Path, video_root: Path, tmp_path: Path, video: bool
) -> None:
    root = video_root if video else image_root
    sections = {"train": {"steps": 8, "warmup_steps": 3, "ema": 0.5, "batch_size": 2}}
    straight = _cfg(root, tmp_path / "a", video, **json.loads(json.dumps(sections)))
    train(straight, progress=False)
    broken = _cfg(root, tmp_path / "b", video, **json.loads(json.dumps(sections)))
    first = train(broken, stop_after=3, progress=False)
    assert first["step"] == 3 and not first["finished"]
    state = torch.load(tmp_path / "b" / "state_last.pt", weights_only=True)
    assert state["step"] == 3
    second = train(broken, resume=True, progress=False)
    assert second["step"] == 8 and second["finished"]
    a = _weights(tmp_path / "a" / "model_last.safetensors")
    b = _weights(tmp_path / "b" / "model_last.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The raw weights and the optimizer moments in the training state match too.
    sa, sb = (torch.load(tmp_path / r / "state_last.pt", weights_only=True) for r in "ab")
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    moments = [
        (sa["optimizer"]["state"][i], sb["optimizer"]["state"][i]) for i in sa["optimizer"]["state"]
    ]
    assert all(torch.equal(x["exp_avg_sq"], y["exp_avg_sq"]) for x, y in moments)
    # log.jsonl has each logged step once: step 1, every log_every, the stop at 3, the end.
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 6, 8]


def test_resume_needs_state(image_root: Path, tmp_path: Path) -> None:
    with pytest.raises(MofmeError, match="nothing to resume"):
        train(_cfg(image_root, tmp_path), resume=True, progress=False)


# ------------------------------------------------------------------------------------ video


class _Spy:
    """Records every model input and output."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        model.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.inputs.append(args[0].detach().clone())
        self.outputs.append(output.detach().clone())


@pytest.mark.parametrize("reference", ["prediction", "teacher", "none"])
def test_video_reference_inputs(video_root: Path, tmp_path: Path, reference: str) -> None:
    cfg = _cfg(video_root, tmp_path, True, video={"reference": reference, "zero_ref_prob": 0.0})
    trainer = Trainer(cfg, progress=False)
    spy = _Spy(trainer.raw_model)
    batch = next(trainer.stream)
    info = trainer.train_step(batch)
    trainer.close()
    assert math.isfinite(info["loss"]) and not info["skipped"]
    assert len(spy.inputs) == 3  # one forward per frame of the clip
    for t, inp in enumerate(spy.inputs):
        assert inp.shape == (4, 6, 32, 32)
        assert torch.equal(inp[:, :3], batch["input"][:, t])
        ref = inp[:, 3:]
        if t == 0 or reference == "none":
            assert torch.count_nonzero(ref) == 0
        elif reference == "prediction":
            assert torch.equal(ref, spy.outputs[t - 1])
        else:
            assert torch.equal(ref, batch["gt"][:, t - 1])


def test_zero_reference_probability() -> None:
    torch.manual_seed(0)
    frame, prev = torch.rand(2000, 3, 1, 1), torch.rand(2000, 3, 1, 1) + 0.1
    inp = model_input(frame, 1, prev, None, "prediction", 0.25)
    zero = (inp[:, 3:].flatten(1) == 0).all(1).float().mean()
    assert 0.2 < float(zero) < 0.3
    assert (
        torch.count_nonzero(model_input(frame, 1, prev, None, "prediction", 0.0)[:, 3:])
        == prev.numel()
    )


def test_video_training_and_single_frame_baseline(video_root: Path, tmp_path: Path) -> None:
    for name, sections in (
        ("teacher", {"video": {"reference": "teacher"}}),
        ("single", {"model": {"in_channels": 3}}),
    ):
        cfg = _cfg(
            video_root,
            tmp_path / name,
            True,
            data={"val_split": "test"},
            train={"steps": 3},
            **sections,
        )
        if name == "single":
            trainer = Trainer(cfg, progress=False)
            spy = _Spy(trainer.raw_model)
            trainer.train_step(next(trainer.stream))
            trainer.close()
            assert [tuple(x.shape) for x in spy.inputs] == [(4 * 3, 3, 32, 32)]  # frames as images
        result = train(cfg, overwrite=True, progress=False)
        assert result["finished"] and math.isfinite(result["val"]["psnr"])
        assert set(result["val"]["groups"]) == {"video"}


def test_validation_samples_are_the_scored_restorations(image_root: Path, video_root: Path) -> None:
    """The TensorBoard samples come from the validation pass itself: the first pairs, and
    frame 1 (restored with a reference) of the first videos, as input | output | gt."""
    from mofme.data.io import read_image, to_tensor
    from mofme.data.pairs import find_pairs, find_videos
    from mofme.inference.tiling import restore_image
    from mofme.inference.video import restore_clip
    from mofme.training.validation import validate

    def load(path: Path) -> torch.Tensor:
        return to_tensor(read_image(path))

    sizes = {k: v for k, v in TINY_MODEL.items() if k != "preset"}
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = MoFMENet.from_preset("tiny", **sizes)
    pairs = find_pairs(image_root, "mofme", "test")
    result, samples = validate(
        model, pairs, video=False, device=cpu, tile=None, max_frames=None, samples=3
    )
    assert result["count"] == len(pairs) == 4
    assert [name for name, _ in samples] == [p.input.name for p in pairs[:3]]
    for (_, panel), pair in zip(samples, pairs):
        inp, gt = load(pair.input), load(pair.gt)
        out = restore_image(model, inp[None]).clamp(0, 1)[0]
        assert torch.equal(panel, torch.cat([inp, out, gt], dim=2))

    model = MoFMENet.from_preset("tiny", in_channels=6, **sizes)
    videos = find_videos(video_root, "test")
    _, samples = validate(model, videos, video=True, device=cpu, tile=None, max_frames=3, samples=2)
    assert [name for name, _ in samples] == [f"{videos[0].name}/1"]
    frames = torch.stack([load(p) for p in videos[0].snow_frames[:2]])
    out = restore_clip(model, frames)[1].clamp(0, 1)
    gt = load(videos[0].clean_frames[1])
    assert torch.equal(samples[0][1], torch.cat([frames[1], out, gt], dim=2))


# ------------------------------------------------------------------------------- NaN / AMP


def _nan_batch(trainer: Trainer) -> dict:
    batch = next(trainer.stream)
    batch["input"][0, 0, 0, 0] = float("nan")
    return batch


def test_nonfinite_loss_skip_and_stop(image_root: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(image_root, tmp_path / "skip"), progress=False)
    before = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    info = trainer.train_step(_nan_batch(trainer))
    assert info["skipped"] and trainer.skipped == 1 and trainer.step == 1
    after = trainer.raw_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update applied
    assert not trainer.train_step(next(trainer.stream))["skipped"]
    assert trainer.skipped == 1
    trainer.close()

    trainer = Trainer(
        _cfg(image_root, tmp_path / "stop", train={"on_nonfinite": "stop"}), progress=False
    )
    with pytest.raises(MofmeError, match="non-finite loss"):
        trainer.train_step(_nan_batch(trainer))
    trainer.close()


def test_bf16_and_balance_loss(image_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        image_root, tmp_path, train={"amp": "bf16", "balance_weight": 0.01, "balance_loss": "cv2"}
    )
    trainer = Trainer(cfg, progress=False)
    router = trainer.raw_model.fme_layers[0].router.proj.weight
    info = trainer.train_step(next(trainer.stream))
    assert math.isfinite(info["loss"]) and info["aux"] > 0
    assert router.grad is not None  # bf16 step ran; the router gets gradients
    trainer.close()


def test_fp16_needs_cuda(image_root: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(MofmeError, match="fp16"):
        Trainer(_cfg(image_root, tmp_path, train={"amp": "fp16"}), progress=False)


# ------------------------------------------------------------------------------------- CLI


def _write_cli_config(image_root: Path, tmp_path: Path, steps: int) -> Path:
    cfg = {
        "model": TINY_MODEL,
        "data": {"root": str(image_root), "crop": 32, "workers": 0},
        "train": {"batch_size": 2, "steps": steps, "log_every": 1, "ckpt_every": 2, "val_every": 0},
        "out": str(tmp_path / "run"),
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_train_then_resume(
    image_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _write_cli_config(image_root, tmp_path, steps=4)
    assert (
        cli_main(
            [
                "train",
                str(path),
                "--stop-after",
                "2",
                "--no-progress",
                "--set",
                "train.tensorboard=false",
            ]
        )
        == 0
    )
    assert "--resume" in capsys.readouterr().err
    assert cli_main(["train", str(path), "--no-progress"]) == 2  # refuses to start over
    assert "already holds a training run" in capsys.readouterr().err
    out = tmp_path / "run"
    assert cli_main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    state = torch.load(out / "state_last.pt", weights_only=True)
    assert state["step"] == 4
    assert cli_main(["train", str(path), "--set", "train.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


@pytest.mark.parametrize(("workers", "target"), [(0, "process"), (1, "group"), (1, "worker")])
def test_sigterm_saves_checkpoint(
    image_root: Path, tmp_path: Path, workers: int, target: str
) -> None:
    """SIGTERM to the trainer, to its whole process group (``kill -TERM -PGID``, a batch
    scheduler, ``timeout`` in a shell) or to a loader worker alone: the trainer finishes its
    step and saves; a worker never dies of it (a dead worker made the next fetch raise)."""
    path = _write_cli_config(image_root, tmp_path, steps=100000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mofme.cli",
            "train",
            str(path),
            "--no-progress",
            "--set",
            "train.ckpt_every=0",
            "--set",
            f"data.workers={workers}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 60
    while not (log.is_file() and log.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    if target == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    elif target == "worker":
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "no loader worker"
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None, proc.communicate()  # still training
        proc.send_signal(signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err and "--resume" in err
    state = torch.load(tmp_path / "run" / "state_last.pt", weights_only=True)
    assert state["step"] >= 2
    assert (tmp_path / "run" / "model_last.safetensors").is_file()
