"""Training throughput: ``train.amp: auto`` from the measured probe, samples/s and data wait."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import mofme.train as train_module
from mofme.config import from_dict
from mofme.inference import precision
from mofme.inference.precision import ProbeResult
from mofme.train import Trainer, TrainRunConfig, load_config, train
from mofme.training.logs import Window
from tiny import TINY_MODEL


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MOFME_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MoFME layout, 4 training pairs of 32x32."""
    base = tmp_path_factory.mktemp("amp")
    rng = np.random.default_rng(0)
    for i in range(4):
        clean = rng.integers(40, 200, size=(32, 32, 3), dtype=np.uint8)
        rain = clean.copy()
        rain[:, ::5] = 255
        for sub, img in (("input", rain), ("gt", clean)):
            (base / "train" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(base / "train" / sub / f"{i}.png")
    return base


def _cfg(root: Path, out: Path, **train_section: Any) -> TrainRunConfig:
    tr = {
        "batch_size": 2,
        "steps": 4,
        "lr": 1e-3,
        "log_every": 1,
        "val_every": 0,
        "ckpt_every": 0,
        "tensorboard": False,
        "threads": 1,
        "device": "cpu",
        **train_section,
    }
    data = {"root": str(root), "crop": 32, "workers": 0}
    return from_dict(
        TrainRunConfig, {"model": TINY_MODEL, "data": data, "train": tr, "out": str(out)}
    )


def _fake_probe(
    monkeypatch: pytest.MonkeyPatch, bf16: float | None, calls: list[int] | None = None
) -> None:
    """The probe reports bf16 ``bf16``x the speed of fp32 (None: bf16 not timed). It also
    draws from every RNG, as a real probe may: the run must not notice."""

    def probe(model: torch.nn.Module, device: Any = None, **kw: Any) -> ProbeResult:
        assert not model.training  # an eval-mode copy, as inference runs
        if calls is not None:
            calls.append(1)
        torch.rand(5), random.random(), np.random.rand()
        if bf16 is None:
            return ProbeResult(
                "fp32", "no other candidate", {"fp32": 10.0}, {"fp32": 1.0}, {"fp32": 999.0},
                {"bf16": "no native bf16 on this CPU (oneDNN reports none)"},
            )  # fmt: skip
        return ProbeResult(
            "bf16" if bf16 > 1 else "fp32", "injected",
            {"fp32": 10.0, "bf16": 10.0 / bf16}, {"fp32": 1.0, "bf16": bf16},
            {"fp32": 999.0, "bf16": 60.0},
        )  # fmt: skip

    monkeypatch.setattr(precision, "probe", probe)


# ------------------------------------------------------------------------------ train.amp auto


def test_auto_takes_bf16_where_the_probe_finds_it_faster(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _fake_probe(monkeypatch, 1.8)
    cfg = _cfg(root, tmp_path / "run", amp="auto")
    trainer = Trainer(cfg, progress=False)
    assert trainer.cfg.train.amp == "bf16" and cfg.train.amp == "auto"  # the caller's is kept
    err = capsys.readouterr().err
    assert "training precision bf16 (auto: probe bf16 1.80x faster than fp32 on this CPU" in err
    assert "forward pass at 96x96 as a proxy" in err
    info = trainer.train_step(next(trainer.stream))
    assert math.isfinite(info["loss"])
    trainer.close()
    # config.yaml records the resolved value (and how it was chosen): a resume from it is bf16.
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert text.startswith("# train.amp: auto resolved to bf16: auto: probe bf16 1.80x")
    assert load_config(tmp_path / "run" / "config.yaml").train.amp == "bf16"


@pytest.mark.parametrize(
    ("bf16", "line"),
    [
        (0.72, "training precision fp32 (auto: probe bf16 0.72x the speed of fp32 on this CPU"),
        (1.02, "training precision fp32 (auto: probe bf16 1.02x the speed of fp32"),  # < 1.05x
        (None, "training precision fp32 (auto: probe did not time bf16: no native bf16"),
    ],
    ids=["slower", "within-noise", "no-bf16"],
)
def test_auto_stays_fp32_where_bf16_does_not_pay(
    root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    bf16: float | None,
    line: str,
) -> None:
    _fake_probe(monkeypatch, bf16)
    trainer = Trainer(_cfg(root, tmp_path / "run", amp="auto"), progress=False)
    assert trainer.cfg.train.amp == "none"
    assert line in capsys.readouterr().err
    trainer.close()


def test_auto_probe_changes_nothing_else_and_resume_keeps_the_choice(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto resolving to fp32 trains bit-identically to amp none (the probe's RNG draws are
    undone); a resumed auto run takes the state's choice without probing again."""
    calls: list[int] = []
    _fake_probe(monkeypatch, 0.5, calls)
    train(_cfg(root, tmp_path / "none"), progress=False)
    assert calls == []  # amp none never probes
    auto = _cfg(root, tmp_path / "auto", amp="auto")
    first = train(auto, stop_after=2, progress=False)
    assert first["step"] == 2 and calls == [1]
    state = torch.load(tmp_path / "auto" / "state_last.pt", weights_only=True)
    assert state["amp"] == "none"
    second = train(auto, resume=True, progress=False)
    assert second["finished"] and calls == [1]  # not probed again
    a = load_file(str(tmp_path / "none" / "model_last.safetensors"))
    b = load_file(str(tmp_path / "auto" / "model_last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(x) for x in (tmp_path / "auto" / "log.jsonl").read_text().splitlines()]
    assert {r["amp"] for r in logs} == {"none"}


def test_resumed_auto_run_keeps_bf16(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _fake_probe(monkeypatch, 2.0)
    auto = _cfg(root, tmp_path / "run", amp="auto")
    train(auto, stop_after=1, progress=False)
    _fake_probe(monkeypatch, 0.5)  # the machine changed its mind: the run does not
    capsys.readouterr()
    trainer = Trainer(auto, resume=True, progress=False)
    assert trainer.cfg.train.amp == "bf16"
    assert "training precision bf16 (auto: kept from the resumed run)" in capsys.readouterr().err
    trainer.close()


def test_auto_with_the_real_probe(root: Path, tmp_path: Path, cache_dir: Path) -> None:
    """The real probe on the tiny model: a valid choice, the line says why, the probe is cached
    and the model trains afterwards."""
    trainer = Trainer(_cfg(root, tmp_path / "run", amp="auto", steps=1), progress=False)
    assert trainer.cfg.train.amp in ("bf16", "none")
    assert trainer.raw_model.training  # the probe ran on a copy
    assert (cache_dir / "precision.json").is_file()
    assert math.isfinite(trainer.train_step(next(trainer.stream))["loss"])
    trainer.close()


# -------------------------------------------------------------------- samples/s and data wait


def test_log_has_samples_per_s_and_data_wait(root: Path, tmp_path: Path) -> None:
    train(_cfg(root, tmp_path / "run", steps=3, batch_size=2), progress=False)
    logs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3]
    for r in logs:
        assert {"steps_per_s", "samples_per_s", "data_wait", "elapsed_s", "amp"} <= set(r)
        assert r["samples_per_s"] > 0 and r["steps_per_s"] > 0
        # samples = steps x global batch (rounded separately in the record)
        assert r["samples_per_s"] == pytest.approx(2 * r["steps_per_s"], rel=0.01, abs=0.02)
        assert 0.0 <= r["data_wait"] <= 1.0
        assert r["amp"] == "none"


class _SlowStream:
    """A data stream whose every batch takes ``delay`` seconds to arrive."""

    def __init__(self, stream: Any, delay: float) -> None:
        self.stream, self.delay = stream, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def __next__(self) -> Any:
        time.sleep(self.delay)
        return next(self.stream)


def test_slow_data_is_measured_and_warned_once(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(train_module, "DATA_WAIT_AFTER", 1)  # the tests cannot wait 50 steps
    trainer = Trainer(_cfg(root, tmp_path / "run", steps=5, log_every=2), progress=False)
    trainer.stream = _SlowStream(trainer.stream, 0.5)  # type: ignore[assignment]
    capsys.readouterr()
    trainer.run()
    err = capsys.readouterr().err
    logs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 4, 5]
    assert all(r["data_wait"] > 0.3 for r in logs), logs  # 0.5 s per batch vs a tiny model
    # Windows starting at step >= 1 qualify: one warning, naming the setting to raise.
    assert err.count("the data loader does not keep up") == 1, err
    assert "data.workers=0" in err and "steps 1-2" in err


def test_data_wait_warning_only_after_warm_up(root: Path, tmp_path: Path, capsys) -> None:
    trainer = Trainer(_cfg(root, tmp_path / "run"), progress=False)
    capsys.readouterr()
    early = Window(means={}, elapsed=1.0, rate=1.0, data_wait=0.9, first_step=10)
    trainer._check_data_wait(early)  # loader start-up: no warning
    fine = Window(means={}, elapsed=1.0, rate=1.0, data_wait=0.2, first_step=100)
    trainer._check_data_wait(fine)
    assert "keep up" not in capsys.readouterr().err
    slow = Window(means={}, elapsed=1.0, rate=1.0, data_wait=0.45, first_step=100)
    trainer._check_data_wait(slow)
    trainer._check_data_wait(slow)
    assert capsys.readouterr().err.count("waited for the next batch 45% of the time") == 1
    trainer.close()
