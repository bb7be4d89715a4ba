"""Inference fast paths agree with the plain fp32 path; the bench command runs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mofme.cli import main
from mofme.inference.fast import NNPackConv2d, nnpack_usable, optimize, use_nnpack
from mofme.inference.tiling import restore_image
from mofme.model.moe import ModulationExperts, select_topk, select_topp
from mofme.model.net import MoFMENet


@pytest.fixture(scope="module")
def tiny() -> MoFMENet:
    torch.manual_seed(0)
    return MoFMENet.from_preset("tiny").eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(2, 3, 20, 36, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("routing", ["topk:2", "topk:5", "topp:0.6", "topp:0.9"])
def test_sparse_experts_equal_dense(tiny, x, routing):
    with tiny.routing(routing):
        sparse = restore_image(tiny, x)
        tiny.set_expert_impl("dense")
        try:
            dense = restore_image(tiny, x)
        finally:
            tiny.set_expert_impl("sparse")
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("selection", ["topk", "topp"])
def test_expert_stage_sparse_equals_dense(selection):
    torch.manual_seed(0)
    experts = ModulationExperts(48, 16)
    y = torch.randn(300, 48)
    logits = torch.randn(300, 16) * 3
    w = select_topk(logits, 4) if selection == "topk" else select_topp(logits, 0.6)
    with torch.inference_mode():
        torch.testing.assert_close(
            experts.forward_sparse(y, w), experts.forward_dense(y, w), atol=1e-5, rtol=0
        )


def test_bf16_autocast_close_to_fp32(tiny, x):
    fp32 = restore_image(tiny, x)
    bf16 = restore_image(tiny, x, amp="bf16")
    assert bf16.dtype == torch.float32
    diff = (bf16 - fp32).abs()
    # bf16 keeps 8 mantissa bits (~0.4 % relative); outputs are sigmoid values in [0, 1].
    assert diff.max() < 0.05 and diff.mean() < 5e-3


def test_channels_last_equals_default(x):
    torch.manual_seed(0)
    model = MoFMENet.from_preset("tiny").eval()
    ref = restore_image(model, x)
    out = restore_image(copy.deepcopy(model), x, channels_last=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_inference_mode_equals_no_grad(tiny, x):
    with torch.no_grad():
        ref = tiny(x)
    torch.testing.assert_close(restore_image(tiny, x), ref, atol=0, rtol=0)


def test_unpatch_matches_pixel_shuffle(tiny, x):
    """The one-copy unpatch rearrangement in MoFMENet.forward equals transpose + pixel_shuffle."""
    feats: dict[str, torch.Tensor] = {}
    tiny.unpatch.register_forward_hook(lambda m, a, out: feats.setdefault("tok", out))
    tiny.tail.register_forward_pre_hook(lambda m, a: feats.setdefault("img", a[0]))
    with torch.no_grad():
        tiny(x[:, :, :16, :32])
    tiny.unpatch._forward_hooks.clear()
    tiny.tail._forward_pre_hooks.clear()
    tok = feats["tok"]  # (B, N, 128·P²) for a 2×4 token grid
    ref = F.pixel_shuffle(tok.transpose(1, 2).reshape(2, -1, 2, 4), tiny.cfg.patch)
    torch.testing.assert_close(feats["img"], ref, atol=0, rtol=0)


needs_nnpack = pytest.mark.skipif(not nnpack_usable(), reason="NNPACK not available")


@needs_nnpack
@pytest.mark.parametrize("size", [(1, 1), (5, 9), (33, 17)])
def test_nnpack_conv_matches_conv2d(size):
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1)
    fast = copy.deepcopy(conv)
    holder = nn.Sequential(fast)
    assert use_nnpack(holder) == 1 and isinstance(holder[0], NNPackConv2d)
    inp = torch.rand(2, 64, *size)
    with torch.inference_mode():
        torch.testing.assert_close(holder(inp), conv(inp), atol=1e-4, rtol=1e-4)


@needs_nnpack
def test_optimize_keeps_outputs_parameters_and_training(x):
    torch.manual_seed(0)
    model = MoFMENet.from_preset("tiny").eval()
    ref = restore_image(model, x)
    fast = copy.deepcopy(model)
    notes = optimize(fast, "cpu")
    assert any("NNPACK" in n for n in notes)
    # Same state-dict keys and values: checkpoints are unaffected.
    ref_state, fast_state = model.state_dict(), fast.state_dict()
    assert list(ref_state) == list(fast_state)
    assert all(torch.equal(ref_state[k], fast_state[k].contiguous()) for k in ref_state)
    # Winograd changes rounding only.
    torch.testing.assert_close(restore_image(fast, x), ref, atol=1e-4, rtol=0)
    # Training mode with autograd falls back to the default conv and gets gradients.
    fast.train()
    fast(x).mean().backward()
    assert fast.tail[0].conv1.weight.grad is not None


def test_optimize_is_a_no_op_for_gpu_devices(tiny):
    model = copy.deepcopy(tiny)
    assert optimize(model, "cuda") == []
    assert not any(isinstance(m, NNPackConv2d) for m in model.modules())


def test_bench_command_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(
        ["bench", "--preset", "tiny", "--size", "32x48", "--crop", "16", "--tile", "16",
         "--overlap", "4", "--repeat", "1", "--tokens", "64", "--fme-dim", "16",
         "--experts", "4", "--topk", "2", "--threads", "1", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    table = capsys.readouterr().out
    assert "| official: 15 crops 16²" in table and "FME expert stage" in table
    result = json.loads(out.read_text())
    base, *others = result["frame"]
    assert base["speedup"] == pytest.approx(1.0) and base["note"] == "baseline"
    default = next(r for r in others if r["note"] == "default")
    assert default["gflops"] < base["gflops"]  # whole image + sparse do less work
    sparse_row = next(r for r in others if r["name"].startswith("+ sparse"))
    assert sparse_row["psnr_db"] > 60  # same crops, sparse == dense experts
    assert all(r["max_abs_diff"] < 1e-5 for r in result["fme"])
    assert result["machine"]["peak_fp32_gflops"] > 0
