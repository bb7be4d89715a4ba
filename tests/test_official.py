"""Official MoFME compatibility: the ``official`` preset, ``mofme convert`` and its errors.

The reference here is an oracle of the official equations written below from the official
code's description (SPEC §11), operating on a state dict in the official key layout; it shares
no code with ``mofme``. (The same conversion was also checked offline against the official
repository's own ``MoWE`` model: max |diff| 1.8e-7 at 240x240, see the README.)
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mofme import checkpoint
from mofme.cli import main as cli_main
from mofme.convert import official_param_count, read_official
from mofme.errors import MofmeError
from mofme.model.config import get_preset
from mofme.model.moe import select_topk
from mofme.model.net import MoFMENet

VIT = "Img_Encoder.vision_transformer."


# ------------------------------------------------------------------------ official layout


def official_shapes(
    dim: int, depth: int, experts: int, size: tuple[int, int], patch: int = 8
) -> dict[str, tuple[int, ...]]:
    """Every tensor of the official ``MoWE`` (``--moe-enable --gate film``), by key."""
    s: dict[str, tuple[int, ...]] = {}

    def lin(key: str, o: int, i: int, bias: bool = True) -> None:
        s[key + ".weight"] = (o, i)
        if bias:
            s[key + ".bias"] = (o,)

    def conv(key: str, o: int, i: int, k: int = 3) -> None:
        s[key + ".weight"], s[key + ".bias"] = (o, i, k, k), (o,)

    def norm(key: str) -> None:
        s[key + ".weight"], s[key + ".bias"] = (dim,), (dim,)

    lin("patch_embed_to_img_feature.0", patch * patch * 128, dim)
    s[VIT + "img_pos_embedding"] = (1, (size[0] // patch) * (size[1] // patch), dim)
    conv(VIT + "to_patch_embedding.proj", dim, 32, patch)
    norm(VIT + "to_patch_embedding.norm")
    for layer in range(depth):
        p = f"{VIT}transformer.layers.{layer}."
        norm(p + "0.norm")
        lin(p + "0.fn.to_qkv", 3 * 512, dim, bias=False)
        lin(p + "0.fn.to_out.0", dim, 512)
        lin(p + "1.0", experts, dim)
        lin(p + "2.0", 4 * dim, dim)
        lin(p + "2.3", dim, 4 * dim)
        norm(p + "3.0")
        lin(p + "3.1.0.0", dim, dim)
        lin(p + "3.1.1.0", dim, dim)
        for j in range(experts):
            lin(p + f"3.{3 + j}.expert.0", dim, dim)
            lin(p + f"3.{3 + j}.expert.1", dim, dim)
            norm(p + f"3.{3 + j}.norm")
    conv("head.0", 32, 3)
    for i in (1, 2):
        conv(f"head.{i}.body.0", 32, 32)
        conv(f"head.{i}.body.2", 32, 32)
    for i, ch in ((1, 128), (3, 64)):
        conv(f"tail.{i}.body.0", ch, ch)
        conv(f"tail.{i}.body.2", ch, ch)
    conv("tail.2", 64, 128)
    conv("tail.4", 3, 64)
    return s


def random_official(
    dim: int = 64, depth: int = 2, experts: int = 6, size: tuple[int, int] = (32, 32), seed: int = 0
) -> dict[str, Tensor]:
    """A random state dict in the official layout, scaled like a trained net (fan-in init)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_shapes(dim, depth, experts, size).items():
        t = torch.randn(shape, generator=g)
        if "norm" in key and key.endswith("weight") and len(shape) == 1:
            t = 1 + 0.2 * t  # LayerNorm gains around 1
        elif len(shape) >= 2:
            t = t / math.sqrt(math.prod(shape[1:]))
        else:
            t = 0.1 * t
        sd[key] = t
    return sd


# -------------------------------------------------------------------------------- oracle


def oracle(sd: dict[str, Tensor], x: Tensor, top_k: int, patch: int = 8) -> Tensor:
    """The official forward on ``x`` in [-1, 1] (what its data pipeline feeds), from ``sd``."""

    def lin(t: Tensor, key: str) -> Tensor:
        return F.linear(t, sd[key + ".weight"], sd.get(key + ".bias"))

    def conv(t: Tensor, key: str) -> Tensor:
        return F.conv2d(t, sd[key + ".weight"], sd[key + ".bias"], padding=1)

    def res(t: Tensor, key: str) -> Tensor:
        return t + conv(F.relu(conv(t, key + ".body.0")), key + ".body.2")

    def ln(t: Tensor, key: str) -> Tensor:
        return F.layer_norm(t, t.shape[-1:], sd[key + ".weight"], sd[key + ".bias"])

    b, _, h, w = x.shape
    f = conv(x, "head.0")
    f = res(res(f, "head.1"), "head.2")
    tok = F.conv2d(
        f, sd[VIT + "to_patch_embedding.proj.weight"], sd[VIT + "to_patch_embedding.proj.bias"],
        stride=patch,
    )  # fmt: skip
    tok = ln(tok.flatten(2).transpose(1, 2), VIT + "to_patch_embedding.norm")  # (b, n, d)
    n_experts = sd[VIT + "transformer.layers.0.1.0.weight"].shape[0]
    layer = 0
    while f"{VIT}transformer.layers.{layer}.0.norm.weight" in sd:
        p = f"{VIT}transformer.layers.{layer}."
        # Pre-norm attention, 8 heads, explicit softmax(q k^T / sqrt(d)) v.
        q, k, v = lin(ln(tok, p + "0.norm"), p + "0.fn.to_qkv").chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, 8, t.shape[-1] // 8).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1) @ v
        tok = tok + lin(att.transpose(1, 2).reshape(b, -1, q.shape[-1] * 8), p + "0.fn.to_out.0")
        # Router on the residual stream: KeepTopK (logits below the k-th -> -inf), softmax.
        logits = lin(tok, p + "1.0")
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        weights = logits.masked_fill(logits < kth, float("-inf")).softmax(-1)
        yt = ln(tok, p + "3.0")
        yt = F.gelu(lin(yt, p + "3.1.0.0")) * lin(yt, p + "3.1.1.0")
        # ff_list = [LayerNorm, basenet, GELU, expert_0, ...]; slot i is ff_list[i + 2].
        y = torch.zeros_like(yt)
        for i in range(n_experts):
            if i == 0:
                out = F.gelu(yt)
            else:
                e = f"{p}3.{i + 2}.expert."
                out = lin(yt, e + "0") * yt + lin(yt, e + "1")
            y = y + weights[..., i : i + 1] * out
        y = lin(F.gelu(lin(y, p + "2.0")), p + "2.3")
        tok = tok + y
        layer += 1
    # Rearrange 'b (h w) (p1 p2 c) -> b c (h p1) (w p2)'.
    up = lin(tok, "patch_embed_to_img_feature.0")
    gh, gw = h // patch, w // patch
    img = up.view(b, gh, gw, patch, patch, -1).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, h, w)
    img = res(img, "tail.1")
    img = res(conv(img, "tail.2"), "tail.3")
    return torch.sigmoid(conv(img, "tail.4"))


# --------------------------------------------------------------------------------- helpers


def _save_official(path: Path, sd: dict[str, Tensor], wrap: str = "training") -> Path:
    """Save like the official code: its training dict with DataParallel ``module.`` keys."""
    if wrap == "training":
        obj: object = {
            "arch": "mowe",
            "model_state_dict": {"module." + k: v for k, v in sd.items()},
            "epoch": 7,
            "psnr": 28.5,
            "ssim": 0.91,
        }
    else:
        obj = sd
    torch.save(obj, path)
    return path


def _convert(tmp_path: Path, sd: dict[str, Tensor], *extra: str) -> MoFMENet:
    src = _save_official(tmp_path / "best_metric.pth", sd)
    out = tmp_path / "converted.safetensors"
    assert cli_main(["convert", str(src), str(out), *extra]) == 0
    return checkpoint.load(out)


# ----------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def official_sd() -> dict[str, Tensor]:
    return random_official()


@pytest.mark.parametrize("size", [(16, 16), (24, 40), (48, 32)])
@pytest.mark.parametrize("impl", ["sparse", "dense"])
def test_converted_equals_official_oracle(
    tmp_path: Path, official_sd: dict[str, Tensor], size: tuple[int, int], impl: str
) -> None:
    model = _convert(tmp_path, official_sd, "--top-k", "2")
    model.set_expert_impl(impl)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)  # mofme takes [0, 1] ...
        ref = oracle(official_sd, 2 * x - 1, top_k=2)  # ... the official code 2x - 1
    assert (ours - ref).abs().max().item() < 1e-5
    # Slot 0 (the GELU) and the FiLM experts are both used; the dead expert never is.
    used = torch.cat([w.reshape(-1, w.shape[-1]) for w in model.routing_weights()]) > 0
    assert used[:, 0].any() and used[:, 1:].any()


def test_convert_report_and_metadata(
    tmp_path: Path, official_sd: dict[str, Tensor], capsys: pytest.CaptureFixture[str]
) -> None:
    model = _convert(tmp_path, official_sd)
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1
    d, e = 64, 6
    assert f"position embedding ({16 * d:,})" in line  # (32/8)^2 tokens
    assert f"{2 * e} expert LayerNorms ({2 * e * 2 * d:,})" in line
    assert f"dead expert_{e - 1} x 2 ({2 * 2 * (d * d + d):,})" in line
    cfg = model.cfg
    assert (cfg.dim, cfg.depth, cfg.num_experts, cfg.routing.k) == (d, 2, e, 4)
    assert cfg.gelu_expert and cfg.input_range == "signed" and cfg.unpatch_order == "p1 p2 c"
    assert model.extra["converted_from"]["epoch"] == 7
    assert model.extra["converted_from"]["psnr"] == 28.5
    ours = sum(p.numel() for p in model.parameters())
    total = sum(t.numel() for t in official_sd.values())
    dropped = 16 * d + 2 * e * 2 * d + 2 * 2 * (d * d + d)
    assert ours + dropped == total


def test_bare_state_dict_and_pickled_objects_are_not_executed(
    tmp_path: Path, official_sd: dict[str, Tensor]
) -> None:
    # A bare state dict converts too.
    src = _save_official(tmp_path / "bare.pth", official_sd, wrap="bare")
    state, _ = read_official(src)
    assert set(state) == set(official_sd)
    # The official checkpoint also pickles the model object ("net"). Reading it must not run
    # anything the pickle names: here a REDUCE of open(marker, "w").
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self) -> tuple:
            return (open, (str(marker), "w"))

    torch.save({"net": Payload(), "model_state_dict": official_sd}, tmp_path / "full.pth")
    state, _ = read_official(tmp_path / "full.pth")
    assert not marker.exists()
    assert set(state) == set(official_sd)


def _convert_error(tmp_path: Path, obj: object, *extra: str) -> str:
    src = tmp_path / "in.pth"
    if isinstance(obj, bytes):
        src.write_bytes(obj)
    else:
        torch.save(obj, src)
    out = tmp_path / "out.safetensors"
    with pytest.raises(MofmeError) as e:
        from mofme.convert import convert

        convert(src, out, *extra)
    assert not out.exists()
    return str(e.value)


def test_convert_errors(
    tmp_path: Path, official_sd: dict[str, Tensor], capsys: pytest.CaptureFixture[str]
) -> None:
    assert "not a readable PyTorch checkpoint" in _convert_error(tmp_path, b"not a pickle")
    assert "holds no state dict" in _convert_error(tmp_path, {"epoch": 3})
    msg = _convert_error(tmp_path, {"fc.weight": torch.zeros(2, 2)})
    assert "not an official MoFME" in msg and "head.0.weight" in msg
    baseline = {k: v for k, v in official_sd.items() if ".expert." not in k}
    assert "no FiLM experts" in _convert_error(tmp_path, baseline)
    msg = _convert_error(tmp_path, {"model_state_dict": official_sd}, 4, 16)
    assert "has 6 experts per layer, expected 16" in msg
    uneven = {k: v for k, v in official_sd.items() if "layers.1.3.8." not in k}
    assert "layer 0: 6, layer 1: 5" in _convert_error(tmp_path, uneven)
    assert "--top-k 7 is out of range for 6 experts" in _convert_error(tmp_path, official_sd, 7)
    extra = {**official_sd, "Img_Encoder.vision_transformer.cls_token": torch.zeros(1, 64)}
    assert "cls_token" in _convert_error(tmp_path, extra)
    # The CLI: one line, exit 2; and no silent replacement of an existing output.
    src = _save_official(tmp_path / "ok.pth", official_sd)
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep")
    assert cli_main(["convert", str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mofme convert: error:") and "--overwrite" in err
    assert out.read_bytes() == b"keep"
    assert cli_main(["convert", str(src), str(out), "--overwrite"]) == 0


def test_full_size_official_network(tmp_path: Path) -> None:
    """The paper configuration: 18,799,395 official = ours + 961,536 unused (SPEC §11)."""
    shapes = official_shapes(384, 2, 16, (240, 240))
    assert sum(math.prod(s) for s in shapes.values()) == 18_799_395
    cfg = get_preset("official")
    counts = official_param_count(cfg, (240, 240))
    assert counts == {
        "ours": 17_837_859,
        "position_embedding": 345_600,
        "expert_layernorms": 24_576,
        "dead_expert": 591_360,
        "official": 18_799_395,
    }
    paper = sum(p.numel() for p in MoFMENet.from_preset("paper").parameters())
    assert paper == 18_429_219 == counts["ours"] + 591_360  # + our FiLM expert in slot 0
    # A full-size official state dict converts and runs (small input for speed).
    sd = random_official(384, 2, 16, (240, 240), seed=3)
    model = _convert(tmp_path, sd)
    assert sum(p.numel() for p in model.parameters()) == counts["ours"]
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(x) - oracle(sd, 2 * x - 1, top_k=4)).abs().max().item() < 1e-5


def test_info_reports_official_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["info", "--preset", "official", "--size", "240x240"]) == 0
    out = capsys.readouterr().out
    assert "params     17,837,859" in out
    assert "official   18,799,395 params in the official code at 240x240" in out
    assert "position embedding 345,600" in out and "dead expert 591,360" in out


# ------------------------------------------------------------------------- model options


def test_topk_ties_keep_every_tied_logit() -> None:
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0], [4.0, 3.0, 2.0, 1.0]])
    w = select_topk(logits, 2, ties=True)
    assert ((w > 0).sum(-1) == torch.tensor([3, 4, 2])).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    kept = (w > 0).float()
    expected = (logits.exp() * kept) / (logits.exp() * kept).sum(-1, keepdim=True)
    torch.testing.assert_close(w, expected)
    # Without ties exactly k, and untied rows agree.
    assert ((select_topk(logits, 2) > 0).sum(-1) == 2).all()
    torch.testing.assert_close(select_topk(logits, 2)[2], w[2])


@pytest.mark.parametrize("routing", ["topk:2", "topp:0.6", "dense"])
def test_gelu_slot_sparse_equals_dense(routing: str) -> None:
    torch.manual_seed(0)
    model = MoFMENet.from_preset("tiny", gelu_expert=True, routing=routing).eval()
    assert model.blocks[0].fme.experts.weight.shape[0] == 7  # 8 slots, 7 FiLM experts
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        sparse = model(x)
        model.set_expert_impl("dense")
        dense = model(x)
    assert (sparse - dense).abs().max().item() < 1e-5


def test_official_dropout_placement() -> None:
    cfg = get_preset("official", dim=64)
    model = MoFMENet(cfg)
    ffn = model.blocks[0].fme.ffn
    drops = [i for i, m in enumerate(ffn) if isinstance(m, torch.nn.Dropout)]
    assert drops == [2, 4] and all(ffn[i].p == 0.1 for i in drops)
    assert model.blocks[0].attn_dropout == 0.1
    x = torch.rand(1, 3, 16, 16)
    model.train()
    a, b = model(x), model(x)
    assert not torch.equal(a, b)  # dropout active in training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    # The paper preset keeps one adaptor dropout at 0 and none after attention.
    paper = MoFMENet.from_preset("paper", dim=64)
    assert len(paper.blocks[0].fme.ffn) == 4 and paper.blocks[0].attn_dropout == 0.0


def test_presets_keep_their_semantics() -> None:
    for name in ("paper", "small", "tiny"):
        cfg = get_preset(name)
        assert not cfg.gelu_expert and not cfg.topk_ties
        assert (cfg.unpatch_order, cfg.input_range) == ("c p1 p2", "unit")
        assert cfg.dropout == cfg.attn_dropout == cfg.ffn_out_dropout == 0.0
    with pytest.raises(MofmeError, match="unpatch_order"):
        get_preset("tiny", unpatch_order="c p2 p1")
    with pytest.raises(MofmeError, match="input_range"):
        get_preset("tiny", input_range="[-1,1]")
    with pytest.raises(MofmeError, match="gelu_expert"):
        get_preset("tiny", gelu_expert=True, num_experts=1, routing="topk:1")


def test_dense_routing_conversion(tmp_path: Path, official_sd: dict[str, Tensor]) -> None:
    """``--top-k 0``: the official KeepTopK is off, every expert weighted by the softmax."""
    model = _convert(tmp_path, official_sd, "--top-k", "0")
    assert model.cfg.routing.selection == "dense"
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(x) - oracle(official_sd, 2 * x - 1, top_k=6)).abs().max().item() < 1e-5


def test_unpatch_orders_differ_only_by_a_row_permutation() -> None:
    torch.manual_seed(0)
    ours = MoFMENet.from_preset("tiny").eval()
    theirs = MoFMENet.from_preset("tiny", unpatch_order="p1 p2 c").eval()
    sd = ours.state_dict()
    p, u = 8, ours.cfg.unpatch_channels
    # Row (c, p1, p2) of ours is row (p1, p2, c) of theirs.
    perm = torch.arange(u * p * p).view(u, p, p).permute(1, 2, 0).reshape(-1)
    sd = {
        **sd,
        "unpatch.weight": sd["unpatch.weight"][perm],
        "unpatch.bias": sd["unpatch.bias"][perm],
    }
    theirs.load_state_dict(sd)
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
