"""``mofme info`` and the CLI's error contract."""

from __future__ import annotations

import json

import pytest

from mofme import checkpoint
from mofme.cli import main
from mofme.model.net import MoFMENet


def test_info_preset_prints_params_and_gflops(capsys) -> None:
    assert main(["info", "--preset", "tiny", "--size", "37x53"]) == 0
    out = capsys.readouterr().out
    assert "params     1,625,939" in out
    assert "GFLOPs" in out and "37x53" in out and "experts" in out


def test_info_json_from_checkpoint(tmp_path, capsys) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(MoFMENet.from_preset("tiny", router="uar"), path, step=7)
    assert main(["info", str(path), "--size", "16x16", "--json", "--routing", "dense"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 7 and info["router"] == "uar" and info["routing"] == "dense"
    assert info["mean_active_experts"] == 8.0
    # Dense routing: the expert stage costs E times a single expert's share.
    assert info["gflops"] == pytest.approx(info["gflops_dense"])
    assert set(info["gflops_parts"]) == {"head", "embed", "encoder", "experts", "unpatch", "tail"}


def test_info_topk_flops_are_a_fraction_of_dense(capsys) -> None:
    assert main(["info", "--preset", "tiny", "--size", "32x32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # top-2 of 8 experts: the expert stage costs a quarter of the dense one.
    assert info["gflops_parts"]["experts"] == pytest.approx(
        info["gflops_parts_dense"]["experts"] / 4
    )


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["info", "/no/such/file.safetensors"], "/no/such/file.safetensors"),
        (["info", "--preset", "huge"], "unknown preset"),
        (["info", "--preset", "tiny", "--size", "0x3"], "bad size"),
        (["info", "--preset", "tiny", "--routing", "topk:99"], "k=99"),
    ],
)
def test_bad_input_is_one_line_error(argv, needle, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_flops_include_attention_and_parts_add_up() -> None:
    import torch

    from mofme.model.analysis import count_flops

    torch.manual_seed(0)
    model = MoFMENet.from_preset("tiny", head_channels=8, unpatch_channels=16)
    rep = count_flops(model, (64, 96))
    n, cfg = (64 // 8) * (96 // 8), model.cfg
    qkv_out_and_attention = cfg.depth * (
        2 * n * cfg.dim * 3 * cfg.heads * cfg.head_dim  # qkv projection
        + 4 * cfg.heads * n * n * cfg.head_dim  # QKᵀ and AV
        + 2 * n * cfg.heads * cfg.head_dim * cfg.dim  # output projection
    )
    assert rep.parts["encoder"] > qkv_out_and_attention
    assert rep.total == pytest.approx(sum(rep.parts.values()))


def test_info_prints_the_card_and_one_line_per_earlier_stage(tmp_path, capsys) -> None:
    path = tmp_path / "m.safetensors"
    stages = [
        {"init": "runs/s2.safetensors", "steps": 2000, "crop": 96, "train_seconds": 1771.4,
         "trained_on": {"kind": "rvsd", "seed": 11, "n_train": 234}},
        {"init": "runs/s1.safetensors", "steps": 4000, "crop": 96, "train_seconds": 4461.3,
         "trained_on": {"kind": "rvsd", "seed": 7, "n_train": 58}},
    ]  # fmt: skip
    card = {"kind": "video", "steps": 4500, "previous_stages": stages}
    checkpoint.save(MoFMENet.from_preset("tiny"), path, step=7, extra={"card": card})
    assert main(["info", str(path), "--size", "16x16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("model card (how it was trained and what it measured on held-out photos)")
    card_lines = lines[start + 1 :]
    assert card_lines[0].split() == ["kind", "video"]
    assert "runs/s2.safetensors: 2000 steps, crop 96, 1771.4 s, data rvsd seed 11" in card_lines[2]
    assert card_lines[2].lstrip().startswith("previous_stages")
    assert "runs/s1.safetensors: 4000 steps" in card_lines[3]
    assert not card_lines[3].lstrip().startswith("previous_stages")


def test_head_skip_is_shown_and_counted_in_unpatch(tmp_path, capsys) -> None:
    import torch

    from mofme.model.analysis import count_flops, param_counts

    torch.manual_seed(0)
    kw = dict(head_channels=8, unpatch_channels=16)
    plain, skip = (
        MoFMENet.from_preset("tiny", **kw),
        MoFMENet.from_preset("tiny", head_skip=True, **kw),
    )
    extra = 8 * 16 + 16  # the 1x1 conv head -> unpatch channels
    assert param_counts(skip)["unpatch"] == param_counts(plain)["unpatch"] + extra
    assert param_counts(skip)["total"] == param_counts(plain)["total"] + extra
    rep = count_flops(skip, (32, 48))
    added = rep.parts["unpatch"] - count_flops(plain, (32, 48)).parts["unpatch"]
    assert added == 2 * 32 * 48 * 8 * 16  # one multiply-add per weight and pixel
    assert rep.total == pytest.approx(sum(rep.parts.values()))
    path = tmp_path / "skip.safetensors"
    checkpoint.save(skip, path)
    assert main(["info", str(path), "--size", "16x16"]) == 0
    assert "head_skip=True" in capsys.readouterr().out
