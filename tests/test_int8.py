"""Dynamic int8 Linear layers (``--precision int8``) against the fp32 reference."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from mofme import checkpoint
from mofme.bench import bench_input
from mofme.cli import main
from mofme.data.io import load_image, save_image
from mofme.inference.fast import Int8Linear, int8_usable, quantize_int8
from mofme.inference.precision import TOLERANCE_DB
from mofme.inference.tiling import restore_image
from mofme.metrics import psnr
from mofme.model.moe import LinearRouter, ModulationExperts, select_topk
from mofme.model.net import MoFMENet

pytestmark = pytest.mark.skipif(not int8_usable(), reason="no int8 CPU engine in this build")


@pytest.fixture(scope="module")
def tiny() -> MoFMENet:
    torch.manual_seed(0)
    return MoFMENet.from_preset("tiny").eval()


def test_int8_linear_close_to_fp32():
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    x = torch.randn(300, 64)
    with torch.inference_mode():
        ref, got = lin(x), Int8Linear(lin)(x)
    # 8-bit weights per output channel, 7-bit activations: ~1 % of the output's scale.
    assert (got - ref).abs().max() < 0.03 * ref.abs().max()
    assert got.shape == ref.shape and got.dtype == torch.float32


def test_int8_linear_keeps_leading_dims():
    lin = nn.Linear(8, 4)
    x = torch.randn(2, 5, 8)
    with torch.inference_mode():
        assert Int8Linear(lin)(x).shape == (2, 5, 4)


def test_quantize_int8_converts_token_layers_not_routers(tiny):
    model = copy.deepcopy(tiny)
    n = quantize_int8(model)
    cfg = model.cfg
    # Per block: qkv, out, W1, W2, two adaptor Linears and E experts; plus the unpatch Linear.
    per_block = 6 + cfg.num_experts
    linear_unpatch = int(isinstance(tiny.unpatch, nn.Linear))
    assert n == cfg.depth * per_block + linear_unpatch
    for layer in model.fme_layers:
        assert isinstance(layer.router, LinearRouter)
        assert type(layer.router.proj) is nn.Linear  # logits stay fp32: they pick the experts
        assert isinstance(layer.experts, ModulationExperts)
    assert not any(type(m) is nn.Linear for blk in model.blocks for m in blk.attn.modules())
    # The checkpoint view of the model is unchanged.
    ref_state, q_state = tiny.state_dict(), model.state_dict()
    assert list(ref_state) == list(q_state)
    assert all(torch.equal(ref_state[k], q_state[k]) for k in ref_state)


def test_int8_model_within_probe_tolerance(tiny):
    x = bench_input((64, 96), 3)
    model = copy.deepcopy(tiny)
    quantize_int8(model)
    ref = restore_image(tiny, x)
    got = restore_image(model, x)
    assert float(psnr(got, ref)[0]) >= TOLERANCE_DB


def test_int8_experts_close_to_fp32_reference():
    torch.manual_seed(0)
    ref = ModulationExperts(32, 8)
    holder = nn.Module()
    holder.experts = copy.deepcopy(ref)
    quantize_int8(holder)
    y = torch.randn(200, 32)
    w = select_topk(torch.randn(200, 8) * 3, 3)
    with torch.inference_mode():
        want = ref.forward_dense(y, w)
        scale = want.abs().max()
        # Activations are quantised per call, so the sparse path (a subset of tokens per
        # expert) and the dense one round differently; both stay near the fp32 reference.
        for got in (holder.experts.forward_sparse(y, w), holder.experts.forward_dense(y, w)):
            assert (got - want).abs().max() < 0.03 * scale


def test_restore_cli_int8_close_to_fp32(tmp_path, tiny):
    ckpt = tmp_path / "tiny.safetensors"
    checkpoint.save(tiny, ckpt)
    rgb = np.asarray(bench_input((40, 56), 3)[0].permute(1, 2, 0))
    save_image(tmp_path / "in" / "a.png", rgb)
    outs = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        args = ["restore", str(tmp_path / "in"), "--out", str(out), "--ckpt", str(ckpt)]
        assert main([*args, "--precision", precision]) == 0
        outs[precision] = torch.from_numpy(load_image(out / "a.png").rgb).permute(2, 0, 1)[None]
    # PNG rounding to 8 bits adds ~59 dB of noise to both; the int8 path must stay close.
    assert float(psnr(outs["int8"], outs["fp32"])[0]) >= 45


def test_bench_shows_the_chosen_precision_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(
        ["bench", "--preset", "tiny", "--size", "32x48", "--crop", "16", "--tile", "16",
         "--overlap", "4", "--repeat", "1", "--no-fme", "--threads", "1",
         "--precision", "int8", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    table = capsys.readouterr().out
    assert "precision int8 (--precision)" in table and "Speed-ups" in table
    rows = {r["note"]: r for r in json.loads(out.read_text())["frame"]}
    assert "int8" in rows["chosen"]["name"] and "int8" in rows["matched"]["name"]
    # vs the official-style crops, int8 whole-image output scores like the fp32 whole image
    # (16-pixel crops see little context, so both differ from the crops by the same amount).
    assert abs(rows["chosen"]["psnr_db"] - rows["default"]["psnr_db"]) < 1.0
    assert (
        rows["chosen"]["speedup_min"] <= rows["chosen"]["speedup"] <= rows["chosen"]["speedup_max"]
    )


def test_int8_official_gelu_slot_matches_fp32():
    # The official layout's slot 0 is GELU(y) with no weights: only the FiLM slots are packed.
    torch.manual_seed(0)
    model = MoFMENet.from_preset("official", dim=64, depth=1, num_experts=4, routing="topk:2")
    model.eval()
    x = torch.rand(1, 3, 32, 40)
    with torch.inference_mode():
        ref = model(x)
        q = copy.deepcopy(model)
        n = quantize_int8(q)
        got = q(x)
    assert n == 6 + 3 + int(isinstance(model.unpatch, nn.Linear))  # 3 FiLM experts of 4 slots
    assert float(psnr(got, ref)) > 40.0
