"""scripts/selection.py's rule and scripts/gate.py's release gate: what passes and what does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny import SCRIPTS, load_script

gate = load_script("gate")
selection = load_script("selection")


def _report(clean: float, grid: float, light: list[float], medium: list[float]) -> dict:
    """A quality_study.py image part: sets with input PSNR 20 and the given gains."""
    sets = {"clean": {"psnr": clean, "input_psnr": float("inf")}}
    for sev, gains in (("light", light), ("medium", medium)):
        for i, g in enumerate(gains):
            sets[f"type{i}_{sev}"] = {"psnr": 20.0 + g, "input_psnr": 20.0}
    return {"sets": sets, "grid_ratio": grid}


BUNDLED = _report(40.0, 1.01, [1.0, -0.26], [1.5, 1.6])


@pytest.mark.parametrize(
    ("candidate", "failed"),
    [
        (_report(41.0, 1.0, [0.5, -0.1], [1.5, 1.5]), []),
        (_report(37.9, 1.0, [0.5, -0.1], [1.5, 1.5]), [0]),  # harms clean photos
        (_report(41.0, 1.2, [0.5, -0.1], [1.5, 1.5]), [1]),  # token grid
        (_report(41.0, 1.0, [2.0, -0.26], [1.5, 1.5]), [2]),  # worst light no better
        (_report(41.0, 1.0, [0.5, -0.1], [1.4, 1.4]), [3]),  # gives up 0.15 dB at medium
    ],
)
def test_gate_fails_exactly_the_broken_criteria(candidate, failed):
    checks = gate.gate(gate.summary(candidate), gate.summary(BUNDLED))
    assert [i for i, (_, ok) in enumerate(checks) if not ok] == failed


def test_gate_command_exit_status(tmp_path):
    paths = []
    for name, image in (("cand", _report(41.0, 1.0, [0.5, -0.1], [1.5, 1.5])), ("base", BUNDLED)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"image": image}))
    ok = subprocess.run(
        [sys.executable, SCRIPTS / "gate.py", *paths], capture_output=True, text=True
    )
    assert ok.returncode == 0 and ok.stdout.count("pass") == 4
    bad = subprocess.run([sys.executable, SCRIPTS / "gate.py", paths[1], paths[1]],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and "FAIL  worst light" in bad.stdout


def test_selection_rule_picks_the_best_medium_gain_among_the_harmless():
    results = {
        "strong": {"clean": 38.5, "gain_light": 0.9, "gain_medium": 2.5},  # clean below 40
        "harmful_light": {"clean": 42.0, "gain_light": -0.1, "gain_medium": 2.0},
        "a": {"clean": 41.0, "gain_light": 0.2, "gain_medium": 1.2},
        "b": {"clean": 40.0, "gain_light": 0.0, "gain_medium": 1.4},
    }
    assert selection.pick(results) == "b"
    assert selection.pick({"strong": results["strong"]}) is None


def test_selection_rule_with_a_reference_keeps_every_medium_set():
    def r(clean: float, medium: float, haze: float) -> dict:
        sets = {"haze_medium": haze, "rain_medium": medium, "haze_heavy": -5.0}
        return {"clean": clean, "gain_light": 0.1, "gain_medium": medium, "sets": sets}

    results = {
        "bundled": r(37.0, 1.0, 4.0),  # the reference itself fails the clean bar
        "gave_up_haze": r(44.0, 1.5, 2.9),  # best mean, haze 1.1 dB below the reference
        "kept_haze": r(42.0, 1.2, 3.0),  # exactly at the 1 dB slack
    }
    assert selection.pick(results) == "gave_up_haze"
    assert selection.pick(results, reference="bundled") == "kept_haze"
    results["kept_haze"]["sets"]["haze_medium"] = 2.99
    assert selection.pick(results, reference="bundled") is None


def test_selection_reuses_a_score_only_for_the_same_file_and_pool(tmp_path: Path):
    ckpt = tmp_path / "a.safetensors"
    ckpt.write_bytes(b"weights")
    base = {"rain_medium": 20.0, "clean": float("inf")}
    pool, digest = selection.pool_digest(base), selection.file_digest(ckpt)
    previous = {str(ckpt): {"clean": 41.0, "sha256": digest, "pool": pool}}
    assert selection.reusable(previous, str(ckpt), digest, pool)["clean"] == 41.0
    ckpt.write_bytes(b"retrained")  # same path, other weights: scored again
    assert selection.reusable(previous, str(ckpt), selection.file_digest(ckpt), pool) is None
    other_pool = selection.pool_digest({**base, "rain_medium": 20.5})
    assert other_pool != pool
    assert selection.reusable(previous, str(ckpt), digest, other_pool) is None
    assert selection.reusable(previous, "b.safetensors", digest, pool) is None
    assert selection.reusable({str(ckpt): {"clean": 41.0}}, str(ckpt), digest, pool) is None


guard_script = load_script("lowfreq_guard")


def test_lowfreq_guard_removes_a_faint_shift_and_keeps_a_strong_one():
    rng = np.random.default_rng(0)
    x = rng.integers(40, 200, (48, 64, 3)).astype(np.uint8)
    faint = (x.astype(np.int16) - 3).astype(np.uint8)  # a faint global darkening
    assert np.array_equal(guard_script.guard(x, faint, "dc", 4.0), x)
    assert np.array_equal(guard_script.guard(x, faint, "dc", 0.0), faint)
    strong = (x.astype(np.int16) - 20).astype(np.uint8)  # real dehazing: kept, less t
    out = guard_script.guard(x, strong, 32.0, 4.0).astype(np.int16)
    assert np.abs(out - (x.astype(np.int16) - 16)).max() <= 1
    spot = x.copy()
    spot[10:13, 20:23] = 255  # a small, local change (a removed flake) passes unchanged
    out = guard_script.guard(x, spot, 32.0, 4.0).astype(np.int16)
    assert np.abs(out - spot.astype(np.int16)).max() <= 2


class _Darken(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5


def test_selection_score_reports_the_worst_single_photo(tmp_path: Path):
    from mofme.data import synth
    from mofme.data.pairs import find_pairs

    synth.write_benchmark(tmp_path / "b", n_per_set=2, size_hw=(32, 40), n_clips=0, seed=3,
                          progress=False)  # fmt: skip
    pairs = find_pairs(tmp_path / "b" / "images", "mofme", "test")
    base = selection.input_psnrs(pairs)
    same = selection.score(selection.InputAsOutput(), pairs, base)
    assert same["clean_min"] == 100.0 and same["worst_image"] == 0.0
    dark = selection.score(_Darken(), pairs, base)
    # The worst photo is at least as bad as the worst set's mean, the lowest clean photo at
    # most the clean mean, and both are real photos of the pool.
    assert dark["worst_image"] < 0
    assert dark["worst_image"] <= min(dark["sets"].values()) + 1e-9
    assert dark["clean_min"] <= dark["clean"] + 1e-9
    group, name = dark["worst_image_name"].split("/")
    assert (tmp_path / "b" / "images" / f"test_{group}" / "input" / name).is_file()
