"""ONNX export (``mofme export``, ``mofme.export``) checked against PyTorch with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mofme import checkpoint
from mofme.cli import main
from mofme.errors import MofmeError
from mofme.export import (
    CHECK_SIZES,
    TOLERANCE,
    check_onnx,
    export_onnx,
    onnx_metadata,
    onnx_opset,
    ort_session,
    run_onnx,
    select_topp_exportable,
)
from mofme.model.config import get_preset
from mofme.model.moe import select_topp
from mofme.model.net import MoFMENet
from mofme.weights import bundled_path

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_check_sizes_are_three_and_include_non_multiples():
    assert len(CHECK_SIZES) == 3
    assert any(h % 8 or w % 8 for h, w in CHECK_SIZES)
    assert any(h % 8 == 0 and w % 8 == 0 for h, w in CHECK_SIZES)


def test_bundled_image_model_matches_pytorch_at_three_sizes(tmp_path):
    model = checkpoint.load(bundled_path("image"))
    path = export_onnx(model, tmp_path / "image.onnx")
    diffs = check_onnx(path, model, batch=2)
    assert [(h, w) for h, w, _ in diffs] == list(CHECK_SIZES)
    assert max(d for _, _, d in diffs) <= TOLERANCE, diffs
    meta = onnx_metadata(path)
    assert meta["mofme_routing"] == "topk:2" and meta["mofme_patch"] == "8"
    assert onnx_opset(path) == 17
    # The caller's model is untouched (the export works on a dense-expert copy).
    assert model.cfg.expert_impl == "sparse"


def test_video_model_and_top_p_routing(tmp_path):
    model = checkpoint.load(bundled_path("video"))
    model.set_routing("topp:0.6")
    path = export_onnx(model, tmp_path / "video.onnx", opset=18)
    diffs = check_onnx(path, model, sizes=[(48, 64), (33, 41), (80, 56)])
    assert max(d for _, _, d in diffs) <= TOLERANCE, diffs
    assert onnx_metadata(path)["mofme_in_channels"] == "6"
    assert onnx_opset(path) == 18


def test_uncertainty_router_exports(tmp_path):
    torch.manual_seed(0)
    model = MoFMENet(get_preset("tiny", router="uar", dim=32, heads=2, head_dim=16)).eval()
    path = export_onnx(model, tmp_path / "uar.onnx")
    assert max(d for _, _, d in check_onnx(path, model)) <= TOLERANCE


def test_head_skip_exports(tmp_path):
    torch.manual_seed(0)
    cfg = get_preset("tiny", dim=32, heads=2, head_dim=16, global_residual=True,
                     unpatch="overlap", head_skip=True)  # fmt: skip
    model = MoFMENet(cfg).eval()
    with torch.no_grad():  # a trained skip and tail, not the zero start
        torch.nn.init.normal_(model.skip.weight, std=0.1)
        torch.nn.init.normal_(model.tail[-1].weight, std=0.1)
    path = export_onnx(model, tmp_path / "skip.onnx")
    assert max(d for _, _, d in check_onnx(path, model)) <= TOLERANCE


def test_graph_size_is_dynamic_and_routing_is_in_the_graph(tmp_path):
    """The routing really is inside the graph: another top-k gives another (matching) output."""
    model = checkpoint.load(bundled_path("image"))
    session = ort_session(export_onnx(model, tmp_path / "k2.onnx"))
    model.set_routing("topk:1")
    session_k1 = ort_session(export_onnx(model, tmp_path / "k1.onnx"))
    x = torch.rand(1, 3, 40, 72, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want_k1 = model(x).numpy()
        model.set_routing("topk:2")
        want_k2 = model(x).numpy()
    out_k1, out_k2 = run_onnx(session_k1, x.numpy()), run_onnx(session, x.numpy())
    assert out_k2.shape == (1, 3, 40, 72)
    assert np.abs(out_k1 - want_k1).max() <= TOLERANCE
    assert np.abs(out_k2 - want_k2).max() <= TOLERANCE
    assert np.abs(out_k1 - out_k2).max() > 1e-3  # a different routing changes the result


@pytest.mark.parametrize("p", [0.0, 0.3, 0.6, 0.95, 1.0])
def test_sort_free_top_p_equals_top_p(p):
    logits = torch.randn(500, 8, generator=torch.Generator().manual_seed(0)) * 2
    for k_min, k_max in [(1, None), (2, 5)]:
        torch.testing.assert_close(
            select_topp_exportable(logits, p, k_min, k_max), select_topp(logits, p, k_min, k_max)
        )


def test_cli_export_checks_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "image", str(out), "--routing", "topk:1"]) == 0
    captured = capsys.readouterr()
    assert "checked with ONNX Runtime" in captured.out
    assert captured.err.count("max |ONNX Runtime - PyTorch|") == 3
    assert onnx_metadata(out)["mofme_routing"] == "topk:1"
    assert main(["export", "image", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "image", str(tmp_path / "model.txt")]) == 2
    assert main(["export", "nonexistent.safetensors", str(tmp_path / "x.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_bad_opset_and_exporter():
    model = checkpoint.load(bundled_path("image"))
    with pytest.raises(MofmeError, match="opset"):
        export_onnx(model, "unused.onnx", opset=11)
    with pytest.raises(MofmeError, match="exporter"):
        export_onnx(model, "unused.onnx", exporter="tf")


@pytest.mark.slow
def test_dynamo_exporter_matches_too(tmp_path):
    pytest.importorskip("onnxscript")
    model = checkpoint.load(bundled_path("image"))
    path = export_onnx(model, tmp_path / "dynamo.onnx", exporter="dynamo", opset=18)
    diffs = check_onnx(path, model, batch=2)
    assert max(d for _, _, d in diffs) <= TOLERANCE, diffs
