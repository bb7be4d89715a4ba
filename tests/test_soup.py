"""scripts/soup.py: weighted weight averages, also across a head skip or a depth difference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mofme import checkpoint
from mofme.errors import MofmeError
from mofme.finetune import init_from_checkpoint
from mofme.model.net import MoFMENet
from tiny import load_script

soup_script = load_script("soup")


def _tiny(tmp_path: Path, name: str, seed: int, **over: object) -> tuple[Path, MoFMENet]:
    torch.manual_seed(seed)
    model = MoFMENet.from_preset("tiny", dim=32, heads=2, head_dim=16, **over).eval()
    path = tmp_path / f"{name}.safetensors"
    checkpoint.save(model, path)
    return path, model


def test_soup_is_the_weighted_mean(tmp_path: Path) -> None:
    a, ma = _tiny(tmp_path, "a", 0)
    b, mb = _tiny(tmp_path, "b", 1)
    mixed = soup_script.soup([(str(a), 0.25), (str(b), 0.75)]).state_dict()
    for k, v in ma.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(mixed[k], 0.25 * v + 0.75 * mb.state_dict()[k])
    with pytest.raises(MofmeError, match="sum to 1"):
        soup_script.soup([(str(a), 0.5), (str(b), 0.6)])
    c, _ = _tiny(tmp_path, "c", 2, num_experts=4)
    with pytest.raises(MofmeError, match=r"c.safetensors has a different architecture: num_exp"):
        soup_script.soup([(str(a), 0.5), (str(c), 0.5)])


def test_soup_deepens_a_shallower_checkpoint(tmp_path: Path) -> None:
    """A 2-block checkpoint mixes with a 4-block first one as its identity-deepened self: the
    extra blocks keep the first's inner weights and get their output projections scaled."""
    shallow, ms = _tiny(tmp_path, "shallow", 0)
    deep = MoFMENet(dataclasses.replace(ms.cfg, depth=4))
    init_from_checkpoint(deep, str(shallow))
    with torch.no_grad():  # "training" moved every tensor, the new blocks' outputs included
        for p in deep.parameters():
            p.add_(0.01 * torch.randn_like(p))
    deep_path = tmp_path / "deep.safetensors"
    checkpoint.save(deep, deep_path)
    mixed = soup_script.soup([(str(deep_path), 0.5), (str(shallow), 0.5)])
    state, ds = mixed.state_dict(), deep.state_dict()
    torch.testing.assert_close(
        state["blocks.3.attn.out.weight"], 0.5 * ds["blocks.3.attn.out.weight"]
    )
    torch.testing.assert_close(
        state["blocks.2.fme.ffn.3.bias"], 0.5 * ds["blocks.2.fme.ffn.3.bias"]
    )
    assert torch.equal(state["blocks.2.attn.qkv.weight"], ds["blocks.2.attn.qkv.weight"])
    torch.testing.assert_close(
        state["blocks.0.attn.qkv.weight"],
        0.5 * ds["blocks.0.attn.qkv.weight"] + 0.5 * ms.state_dict()["blocks.0.attn.qkv.weight"],
    )
    with pytest.raises(MofmeError, match="list the deeper checkpoint first"):
        soup_script.soup([(str(shallow), 0.5), (str(deep_path), 0.5)])
    # Weight 1 on the shallow side is the shallow model's function exactly.
    only = soup_script.soup([(str(deep_path), 0.0), (str(shallow), 1.0)]).eval()
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(only(x), ms(x), rtol=0, atol=1e-6)
