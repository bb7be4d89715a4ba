"""Guard for refactoring the training code: a few deterministic steps must give the very same
weights and logged losses as the golden run recorded in ``tests/data/train_guard.json``.

The golden was written by the training code before it was split into modules. Bit-identical
weights are only promised on the platform a golden was recorded on: the same PyTorch version,
CPU architecture and CPU capability (``tests/golden.py``; AVX2 and AVX-512 kernels round
differently). Digests of the same code recorded on other platforms are kept under
``platforms`` and matched exactly too. Elsewhere the logged losses are compared with a relative
tolerance of 1e-5 instead of the weight hashes, and the test says so in its output.

Regenerate (only when a change of the numbers is intended): ``MOFME_WRITE_GOLDEN=1 pytest
tests/test_refactor_guard_train.py``. Add this platform's exact digests (step 1, before any
update can compound rounding, must first match the golden at the cross-platform tolerance):
``MOFME_WRITE_GOLDEN=platform pytest tests/test_refactor_guard_train.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from golden import cpu_capability, exact_entry, platform_key, recorded_commit
from mofme.config import from_dict
from mofme.train import TrainRunConfig, train
from tiny import TINY_MODEL, save_png

GOLDEN = Path(__file__).parent / "data" / "train_guard.json"
WRITE = os.environ.get("MOFME_WRITE_GOLDEN") == "1"
ADD_PLATFORM = os.environ.get("MOFME_WRITE_GOLDEN") == "platform"
LOGGED = ("loss", "smooth_l1", "aux", "grad_norm", "lr")

MODEL = {
    **TINY_MODEL,
    "router": "uar",  # Monte-Carlo dropout: the run depends on every RNG stream being in step
    "uar_samples": 2,
    "dropout": 0.1,
}


def _image(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    c = rng.uniform(0.2, 0.8, size=(3, 3))
    img = np.stack([c[i, 0] + 0.4 * c[i, 1] * xx + 0.4 * c[i, 2] * yy for i in range(3)], -1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _rain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = img.astype(np.float32)
    for x in rng.integers(0, img.shape[1], size=img.shape[1] // 4):
        out[:, x] = 0.5 * out[:, x] + 127.5
    return out.astype(np.uint8)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("guard")
    rng = np.random.default_rng(7)
    for i in range(6):
        clean = _image(rng, 32)
        save_png(base / "img" / "train" / "input" / f"{i}.png", _rain(clean, rng))
        save_png(base / "img" / "train" / "gt" / f"{i}.png", clean)
    for v in range(3):
        clean = _image(rng, 40)
        for f in range(4):
            frame = np.roll(clean, 2 * f, axis=1)[:32, :32]
            save_png(base / "vid" / "train" / "clean" / f"v{v}" / f"{f}.png", frame)
            save_png(base / "vid" / "train" / "snow" / f"v{v}" / f"{f}.png", _rain(frame, rng))
    return {"image": base / "img", "video": base / "vid"}


def _config(kind: str, root: Path, out: Path) -> TrainRunConfig:
    video = kind == "video"
    data = {"kind": kind, "root": str(root), "crop": 24, "workers": 0}
    train_section = {
        "batch_size": 2,
        "steps": 4,
        "warmup_steps": 1,
        "lr": 1e-3,
        "ema": 0.5,
        "balance_weight": 0.01,
        "log_every": 1,
        "val_every": 0,
        "ckpt_every": 0,
        "tensorboard": False,
        "threads": 1,
        "device": "cpu",
        "seed": 3,
    }
    if video:
        data |= {"clip_len": 3}
    else:
        data |= {"identity_share": 0.25}
        train_section |= {"balance_loss": "cv2"}
    d = {
        "model": {**MODEL, "in_channels": 6 if video else 3},
        "data": data,
        "train": train_section,
        "video": {"reference": "prediction", "zero_ref_prob": 0.5},
        "out": str(out),
    }
    return from_dict(TrainRunConfig, d)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _outcome(out: Path) -> dict:
    state = torch.load(out / "state_last.pt", weights_only=True)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {
        "model_sha256": _digest(state["model"]),
        "ema_sha256": _digest(load_file(str(out / "model_last.safetensors"))),
        "log": [{k: r[k] for k in ("step", *LOGGED)} for r in log],
    }


def _run(kind: str, root: Path, out: Path, stop_after: int | None = None) -> dict:
    result = train(_config(kind, root, out), progress=False, stop_after=stop_after)
    if stop_after is not None:
        assert result["step"] == stop_after
        result = train(_config(kind, root, out), resume=True, progress=False)
    assert result["finished"] and result["skipped"] == 0
    return _outcome(out)


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


def _close_log(got: list[dict], want: list[dict]) -> None:
    for g, w in zip(got, want):
        for k in LOGGED:
            assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (g["step"], k)


def _check(kind: str, got: dict, capsys: pytest.CaptureFixture[str]) -> None:
    golden = _golden()
    want = golden["runs"][kind]
    assert [r["step"] for r in got["log"]] == [r["step"] for r in want["log"]]
    exact = exact_entry(golden)
    if exact is not None:
        want = exact["runs"][kind]
        assert got["log"] == want["log"]
        assert got["model_sha256"] == want["model_sha256"]
        assert got["ema_sha256"] == want["ema_sha256"]
        return
    with capsys.disabled():
        print(
            f"\nguard ({kind}): golden from torch {golden['torch']} on {golden['machine']} "
            f"({golden.get('cpu', 'cpu capability not kept')}), this is {platform_key()}: "
            "comparing the logged losses with rel tol 1e-5, not the weight hashes"
        )
    _close_log(got["log"], want["log"])


def _add_platform(kind: str, got: dict) -> None:
    """Keep ``got`` as this platform's exact digests, once its first step agrees with the golden."""
    golden = _golden()
    want = golden["runs"][kind]
    assert [r["step"] for r in got["log"]] == [r["step"] for r in want["log"]]
    _close_log(got["log"][:1], want["log"][:1])
    entry = golden.setdefault("platforms", {}).setdefault(platform_key(), {"runs": {}})
    entry["commit"] = recorded_commit()
    entry["runs"][kind] = got
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("kind", ["image", "video"])
def test_training_matches_golden(
    roots: dict[str, Path], tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got = _run(kind, roots[kind], tmp_path / "run")
    if WRITE:
        data = _golden() if GOLDEN.is_file() else {"runs": {}}
        if data.get("cpu") != cpu_capability():
            data = {"runs": {}}  # a new primary: other platforms' digests no longer apply
        data |= {"torch": torch.__version__, "machine": platform.machine(), "cpu": cpu_capability()}
        data.pop("platforms", None)
        data["runs"][kind] = got
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {GOLDEN} ({kind})")
    if ADD_PLATFORM:
        _add_platform(kind, got)
        pytest.skip(f"added {platform_key()} digests ({kind})")
    _check(kind, got, capsys)


def test_interrupted_run_matches_golden(
    roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped after step 2 and resumed: the same weights and losses as the straight run."""
    if WRITE or ADD_PLATFORM:
        pytest.skip("the golden comes from the straight run")
    _check("image", _run("image", roots["image"], tmp_path / "run", stop_after=2), capsys)
