"""MoFMENet, routing selection, sparse experts and checkpoints (SPEC §1-3, §7)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mofme import checkpoint
from mofme.errors import MofmeError
from mofme.model.config import RoutingConfig, get_preset, parse_routing
from mofme.model.moe import FMELayer, ModulationExperts, select_topk, select_topp
from mofme.model.net import MoFMENet

torch.set_num_threads(1)


def tiny(**kw) -> MoFMENet:
    torch.manual_seed(0)
    return MoFMENet.from_preset("tiny", **kw).eval()


# --- selection -------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_topk_keeps_exactly_k_summing_to_one(k: int) -> None:
    logits = torch.randn(500, 8)
    w = select_topk(logits, k)
    assert ((w > 0).sum(-1) == k).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(500))
    # The kept experts are the k largest logits.
    kept = w > 0
    assert (
        logits[kept].view(500, k).min(-1).values >= logits[~kept].view(500, 8 - k).max(-1).values
    ).all()


@settings(max_examples=50, deadline=None)
@given(
    p=st.floats(0.0, 0.999),
    k_min=st.integers(1, 4),
    extra=st.integers(0, 12),
    seed=st.integers(0, 10_000),
)
def test_topp_is_shortest_prefix_above_p(p: float, k_min: int, extra: int, seed: int) -> None:
    e = 16
    k_max = min(e, k_min + extra)
    logits = torch.randn(64, e, generator=torch.Generator().manual_seed(seed)) * 2
    w = select_topp(logits, p, k_min, k_max)
    probs = logits.softmax(-1)
    sorted_p = probs.sort(-1, descending=True).values
    counts = (w > 0).sum(-1)
    torch.testing.assert_close(w.sum(-1), torch.ones(64))
    for i in range(64):
        c = int(counts[i])
        assert k_min <= c <= k_max
        prefix = sorted_p[i].cumsum(0)
        # Shortest prefix whose sum exceeds p, clamped to [k_min, k_max].
        shortest = int((prefix > p).nonzero()[0]) + 1
        assert c == min(max(shortest, k_min), k_max)
        # Kept weights are the renormalised top-c probabilities.
        top = sorted_p[i, :c] / sorted_p[i, :c].sum()
        torch.testing.assert_close(w[i].sort(descending=True).values[:c], top)


def test_topp_limits() -> None:
    logits = torch.randn(300, 16)
    torch.testing.assert_close(select_topp(logits, 0.0), select_topk(logits, 1))
    torch.testing.assert_close(select_topp(logits, 1e-9), select_topk(logits, 1))
    torch.testing.assert_close(select_topp(logits, 1.0), logits.softmax(-1))


def test_parse_routing() -> None:
    assert parse_routing("topk:4") == RoutingConfig("topk", k=4)
    assert parse_routing("topp:0.6") == RoutingConfig("topp", p=0.6)
    assert parse_routing("TOPP:0.5:2:6") == RoutingConfig("topp", p=0.5, k_min=2, k_max=6)
    assert parse_routing("dense").selection == "dense"
    for bad in ("topk", "topk:x", "top:3", "dense:1", "topp:0.5:1:2:3"):
        with pytest.raises(MofmeError):
            parse_routing(bad)
    with pytest.raises(MofmeError):
        tiny().set_routing("topk:9")  # tiny has 8 experts


# --- sparse experts == dense reference ------------------------------------------------------


def _weights(kind: str, n: int, e: int, gen: torch.Generator) -> torch.Tensor:
    logits = torch.randn(n, e, generator=gen)
    if kind == "topk":
        return select_topk(logits, 4)
    if kind == "topp":
        return select_topp(logits, 0.6)
    if kind == "starved":  # experts 0-9 receive no token at all
        logits[:, :10] = -1e4
        return select_topk(logits, 3)
    if kind == "one_takes_all":  # expert 5 gets every token, alone
        w = torch.zeros(n, e)
        w[:, 5] = 1.0
        return w
    return logits.softmax(-1)


@pytest.mark.parametrize("kind", ["topk", "topp", "starved", "one_takes_all", "dense"])
@pytest.mark.parametrize("n", [1, 7, 300])
def test_sparse_experts_equal_dense(kind: str, n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    experts = ModulationExperts(dim=48, num_experts=16)
    y = torch.randn(n, 48, generator=gen)
    w = _weights(kind, n, 16, gen)
    torch.testing.assert_close(
        experts.forward_sparse(y, w), experts.forward_dense(y, w), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("routing", ["topk:2", "topp:0.6", "dense"])
@pytest.mark.parametrize("router", ["linear", "uar"])
def test_whole_model_sparse_equals_dense(routing: str, router: str) -> None:
    model = tiny(router=router)
    model.set_routing(routing)
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        sparse = model(x)
        model.set_expert_impl("dense")
        dense = model(x)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)


def test_sparse_runs_only_selected_experts() -> None:
    """Expert cost follows the routing: FLOPs of the expert stage scale with k."""
    from torch.utils.flop_counter import FlopCounterMode

    experts = ModulationExperts(dim=32, num_experts=8)
    y = torch.randn(100, 32)
    logits = torch.randn(100, 8)
    flops = {}
    for k in (1, 2, 8):
        counter = FlopCounterMode(display=False)
        with counter:
            experts.forward_sparse(y, select_topk(logits, k))
        flops[k] = counter.get_total_flops()
    assert flops[2] == 2 * flops[1] and flops[8] == 8 * flops[1]


# --- shapes, any size, determinism ----------------------------------------------------------


@pytest.mark.parametrize("hw", [(1, 1), (5, 3), (37, 53), (8, 8), (64, 48)])
def test_any_size(hw: tuple[int, int]) -> None:
    model = tiny()
    x = torch.rand(1, 3, *hw)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, *hw)
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


@pytest.mark.slow
def test_240_square_and_paper_preset() -> None:
    model = MoFMENet.from_preset("paper").eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 240, 240))
    assert y.shape == (1, 3, 240, 240) and torch.isfinite(y).all()


@pytest.mark.parametrize("routing", ["topk:2", "topp:0.6"])
@pytest.mark.parametrize("router", ["linear", "uar"])
def test_batch_equals_one_by_one(routing: str, router: str) -> None:
    model = tiny(router=router)
    model.set_routing(routing)
    x = torch.rand(3, 3, 32, 40)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_eval_is_deterministic_and_uar_training_is_stochastic() -> None:
    model = tiny(router="uar")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        a, b = model(x), model(x)
    assert not torch.equal(a, b)  # fresh MC-dropout masks each training step


def test_video_model_takes_six_channels() -> None:
    model = tiny(in_channels=6)
    with torch.no_grad():
        assert model(torch.rand(1, 6, 16, 24)).shape == (1, 3, 16, 24)
    with pytest.raises(ValueError, match="6"):
        model(torch.rand(1, 3, 16, 24))


def test_global_residual_starts_near_identity_when_tail_is_zero() -> None:
    model = tiny(global_residual=True)
    last = model.tail[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = torch.rand(1, 3, 16, 16) * 0.9 + 0.05
    with torch.no_grad():
        torch.testing.assert_close(model(x), x, atol=1e-4, rtol=0)


def test_head_skip_is_off_in_presets_and_starts_as_the_same_function() -> None:
    from mofme.model.config import PRESETS

    assert all(not get_preset(name).head_skip for name in PRESETS)
    plain = tiny(global_residual=True, unpatch="overlap")
    torch.nn.init.normal_(plain.tail[-1].weight, std=0.1)  # a trained tail, not the zero start
    skip = MoFMENet.from_preset("tiny", global_residual=True, unpatch="overlap", head_skip=True)
    missing, unexpected = skip.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["skip.bias", "skip.weight"] and not unexpected
    skip.eval()
    x = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        assert torch.equal(skip(x), plain(x))  # zero skip: the very same output
        skip.skip.weight.normal_()
        assert not torch.equal(skip(x), plain(x))  # ... and it is on the output's path


def test_gradients_reach_a_zero_head_skip() -> None:
    model = tiny(head_skip=True).train()
    assert model.skip.weight.abs().sum() == 0
    model(torch.rand(2, 3, 32, 32)).square().mean().backward()
    assert model.skip.weight.grad.abs().sum() > 0 and model.skip.bias.grad.abs().sum() > 0


# --- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("router", ["linear", "uar"])
@pytest.mark.parametrize("routing", ["topk:2", "topp:0.6"])
def test_gradients_reach_router_and_selected_experts(router: str, routing: str) -> None:
    model = tiny(router=router)
    model.set_routing(routing)
    model.train()
    model(torch.rand(2, 3, 32, 32)).square().mean().backward()
    for layer in model.fme_layers:
        assert layer.router.proj.weight.grad is not None
        assert layer.router.proj.weight.grad.abs().sum() > 0
        used = (layer.last_weights.reshape(-1, 8) > 0).any(0)
        grads = layer.experts.weight.grad.flatten(1).abs().sum(-1)
        assert (grads[used] > 0).all()
        assert (grads[~used] == 0).all()  # unselected experts get no gradient
        if router == "uar":
            assert layer.router.log_tau.grad is not None and layer.router.log_tau.grad != 0


@pytest.mark.parametrize("kind", ["switch", "cv2"])
def test_balance_loss(kind: str) -> None:
    cfg = get_preset("tiny")
    layer = FMELayer(cfg).train()
    layer.balance_loss = kind
    layer(torch.randn(2, 50, cfg.dim))
    loss = layer.aux_loss()
    assert loss.ndim == 0 and torch.isfinite(loss) and loss >= -1e-6
    loss.backward()
    assert layer.router.proj.weight.grad.abs().sum() > 0
    # Perfect balance: uniform probabilities and every expert used equally -> 0.
    layer.last_probs = torch.full((1, 8, 8), 1 / 8)
    layer.last_weights = torch.eye(8).unsqueeze(0)
    assert abs(float(layer.aux_loss())) < 1e-6


# --- checkpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("router", ["linear", "uar"])
def test_checkpoint_round_trip_is_bit_identical(tmp_path, router: str) -> None:
    model = tiny(router=router, in_channels=6)
    model.set_routing("topp:0.6")
    path = tmp_path / "m.safetensors"
    checkpoint.save(model, path, step=123, extra={"kind": "video"})
    loaded = checkpoint.load(path)
    assert loaded.cfg == model.cfg and loaded.step == 123 and loaded.extra == {"kind": "video"}
    x = torch.rand(1, 6, 21, 35)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left


def test_checkpoint_for_other_config_fails_clearly(tmp_path) -> None:
    """A file whose config does not describe its tensors is refused before anything is built."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = tmp_path / "tiny.safetensors"
    checkpoint.save(tiny(), path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta["config"] = json.dumps({**json.loads(meta["config"]), "dim": 32})
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(MofmeError, match=r"does not match its model config: .*file .* vs config"):
        checkpoint.load(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_mofme", "nan"])
def test_bad_checkpoints(tmp_path, damage: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    checkpoint.save(tiny(), path)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not_mofme":
        save_file({"w": torch.zeros(2)}, str(path))
    else:
        model = tiny()
        with torch.no_grad():
            model.embed.weight[0, 0, 0, 0] = float("nan")
        checkpoint.save(model, path)
    with pytest.raises(MofmeError, match=r"bad\.safetensors"):
        checkpoint.load(path)


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(tiny(), path, step=1)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(MofmeError, match=r"m\.safetensors: disk full"):  # one line, no traceback
        checkpoint.save(tiny(), path, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_presets_and_overrides() -> None:
    assert get_preset("small").dim == 192
    cfg = get_preset("paper", router="uar", routing="topp:0.6")
    assert cfg.router == "uar" and cfg.routing.selection == "topp"
    with pytest.raises(MofmeError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(MofmeError, match=r"model config: unknown key\(s\) dimm"):
        get_preset("tiny", dimm=3)


def test_paper_param_count() -> None:
    from mofme.model.analysis import param_counts

    counts = param_counts(MoFMENet.from_preset("paper"))
    assert counts["total"] == 18_429_219  # README: vs 21.22 M in the paper
    assert counts["experts"] == 2 * 16 * (384 * 768 + 768)
