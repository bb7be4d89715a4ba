"""``--precision``: the probe picks the fastest path within tolerance, else fp32."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch

from mofme.cli import main
from mofme.errors import MofmeError
from mofme.inference.fast import (
    Int8Linear,
    NNPackConv2d,
    int8_usable,
    nnpack_usable,
    optimize,
    undo_optimize,
)
from mofme.inference.options import apply_precision_option
from mofme.inference.precision import (
    PLAIN,
    TOLERANCE_DB,
    ProbeResult,
    apply_precision,
    cache_path,
    choose,
    probe,
)
from mofme.inference.tiling import restore_image
from mofme.model.net import MoFMENet

SMALL = (32, 48)  # probe size for the tests: the tiny model, a few ms per forward


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MOFME_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def tiny() -> MoFMENet:
    torch.manual_seed(0)
    return MoFMENet.from_preset("tiny").eval()


def test_choose_takes_the_fastest_path_within_tolerance():
    ms = {"fp32": 100.0, "bf16": 40.0, "int8": 60.0}
    speedup = {"fp32": 1.0, "bf16": 2.5, "int8": 1.7}
    assert choose(ms, speedup, {"fp32": 999, "bf16": 55, "int8": 60})[0] == "bf16"
    # bf16 out of tolerance: the next fastest accurate path.
    assert choose(ms, speedup, {"fp32": 999, "bf16": 40, "int8": 60})[0] == "int8"


def test_choose_falls_back_to_fp32():
    ms = {"fp32": 100.0, "bf16": 40.0}
    speedup = {"fp32": 1.0, "bf16": 2.5}
    choice, reason = choose(ms, speedup, {"fp32": 999, "bf16": TOLERANCE_DB - 0.1})
    assert choice == "fp32" and "out of tolerance" in reason
    # Accurate but within timing noise of fp32: not worth switching.
    choice, reason = choose(ms, {"fp32": 1.0, "bf16": 1.02}, {"fp32": 999, "bf16": 80})
    assert choice == "fp32" and "faster" in reason


def test_probe_rejects_an_inaccurate_fast_path(tiny):
    """An injected candidate that skips most of the work and is far off fp32 is never chosen."""
    fp32 = lambda x: tiny(x).float()  # noqa: E731
    cheap = lambda x: x[:, :3].clone()  # instant, and wrong: returns the input  # noqa: E731
    noisy = lambda x: (tiny(x) + 0.05).float()  # noqa: E731
    result = probe(tiny, "cpu", size=SMALL, candidates={"fp32": fp32, "bf16": cheap, "int8": noisy})
    assert result.choice == "fp32"
    assert result.psnr_db["bf16"] < TOLERANCE_DB and result.psnr_db["int8"] < TOLERANCE_DB
    assert "out of tolerance" in result.reason
    assert set(result.ms) == {"fp32", "bf16", "int8"}


def test_probe_measures_real_candidates_and_caches(tiny, cache_dir):
    first = probe(tiny, "cpu", size=SMALL)
    assert not first.cached and first.choice in first.ms
    assert first.psnr_db["fp32"] >= 999 - 1e-6
    for name, db in first.psnr_db.items():
        if name == first.choice and name != "fp32":
            assert db >= TOLERANCE_DB
    data = json.loads(cache_path().read_text())
    assert first.key in data
    again = probe(tiny, "cpu", size=SMALL)
    assert again.cached and again.choice == first.choice and again.ms == first.ms
    # Other weights are another model: the tolerance depends on them, so no cache hit.
    other = copy.deepcopy(tiny)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert probe(other, "cpu", size=SMALL, use_cache=False).key != first.key
    assert not probe(tiny, "cpu", size=SMALL, refresh=True).cached


def test_corrupt_cache_is_ignored(tiny, cache_dir):
    cache_dir.mkdir(parents=True)
    cache_path().write_text("{not json")
    assert not probe(tiny, "cpu", size=SMALL).cached
    assert json.loads(cache_path().read_text())  # rewritten whole


def test_cached_result_round_trips():
    r = ProbeResult("bf16", "why", {"fp32": 1.0}, {"fp32": 1.0}, {"fp32": 999.0}, {}, 50.0, (8, 8))
    back = ProbeResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r


def test_apply_forced_precisions(tiny):
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    ref = restore_image(tiny, x)
    m = copy.deepcopy(tiny)
    chosen = apply_precision(m, "bf16", "cpu")
    assert chosen.amp == "bf16" and chosen.name == "bf16"
    diff = (restore_image(m, x, amp=chosen.amp) - ref).abs()
    assert diff.max() < 0.05 and diff.mean() < 5e-3  # bf16 vs the fp32 reference
    m = copy.deepcopy(tiny)
    assert apply_precision(m, "fp32", "cpu").amp == "none"
    torch.testing.assert_close(restore_image(m, x), ref, atol=0, rtol=0)
    if int8_usable():
        m = copy.deepcopy(tiny)
        assert apply_precision(m, "int8", "cpu").amp == "none"
        assert any(isinstance(mod, Int8Linear) for mod in m.modules())
    with pytest.raises(MofmeError):
        apply_precision(copy.deepcopy(tiny), "fp16", "cpu")


def test_amp_option_is_an_alias_and_conflicts_are_errors(tiny):
    args = argparse.Namespace(amp="bf16", precision="auto")
    assert apply_precision_option(copy.deepcopy(tiny), args, "cpu").name == "bf16"
    assert args.amp == "bf16"
    args = argparse.Namespace(amp=None, precision="fp32")
    assert apply_precision_option(copy.deepcopy(tiny), args, "cpu").name == "fp32"
    assert args.amp == "none"
    with pytest.raises(MofmeError, match="contradicts"):
        apply_precision_option(tiny, argparse.Namespace(amp="bf16", precision="int8"), "cpu")
    # The Python API's option namespaces have no --precision: they stay fp32.
    assert apply_precision_option(tiny, argparse.Namespace(amp="none"), "cpu").name == "fp32"


def test_restore_cli_auto_reports_the_choice(tmp_path, tiny, capsys, monkeypatch):
    import mofme.inference.precision as precision
    from mofme import checkpoint
    from mofme.data.io import save_image

    monkeypatch.setattr(precision, "PROBE_SIZE", SMALL)
    ckpt = tmp_path / "m.safetensors"
    checkpoint.save(tiny, ckpt)
    save_image(tmp_path / "in" / "a.png", torch.rand(20, 30, 3).numpy())
    args = ["restore", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--ckpt", str(ckpt)]
    assert main([*args, "--precision", "auto"]) == 0
    err = capsys.readouterr().err
    assert "precision " in err and "probe" in err
    assert (tmp_path / "out" / "a.png").exists()
    assert main([*args, "--precision", "int8", "--amp", "bf16", "--overwrite"]) == 2


needs_nnpack = pytest.mark.skipif(not nnpack_usable(), reason="NNPACK not available")


@needs_nnpack
def test_undo_optimize_restores_plain_convs(tiny):
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    ref = restore_image(tiny, x)
    m = copy.deepcopy(tiny)
    optimize(m, "cpu")
    assert any(isinstance(mod, NNPackConv2d) for mod in m.modules())
    assert undo_optimize(m)
    assert not any(isinstance(mod, NNPackConv2d) for mod in m.modules())
    assert all(p.is_contiguous() for p in m.parameters())
    torch.testing.assert_close(restore_image(m, x), ref, atol=0, rtol=0)


@needs_nnpack
def test_probe_times_the_fast_convs_and_never_chooses_them_as_precision(tiny):
    m = copy.deepcopy(tiny)
    optimize(m, "cpu")
    result = probe(m, "cpu", size=SMALL, use_cache=False)
    assert PLAIN in result.ms and isinstance(result.fast_convs, bool)
    assert result.choice != PLAIN and result.psnr_db[PLAIN] > 80  # rounding only
    assert "fast convs" in result.describe()


@needs_nnpack
def test_auto_turns_fast_convs_off_where_the_probe_found_them_slower(tiny, monkeypatch):
    import mofme.inference.precision as precision

    slower = ProbeResult("fp32", "injected", fast_convs=False)
    monkeypatch.setattr(precision, "probe", lambda *a, **k: slower)
    m = copy.deepcopy(tiny)
    optimize(m, "cpu")
    assert apply_precision(m, "auto", "cpu").name == "fp32"
    assert not any(isinstance(mod, NNPackConv2d) for mod in m.modules())
