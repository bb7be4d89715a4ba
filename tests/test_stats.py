"""Routing statistics (``mofme.stats``) and the ``mofme stats`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mofme import checkpoint
from mofme.cli import main
from mofme.data.io import save_image
from mofme.data.pairs import Pair, find_videos
from mofme.model.config import parse_routing
from mofme.model.net import MoFMENet
from mofme.stats import (
    RoutingStats,
    collect_images,
    collect_video,
    to_json,
    to_markdown,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ------------------------------------------------------------------------------ hand-built


def _w(rows: list[list[float]]) -> torch.Tensor:
    """Token weights ``[[w_0..w_E-1], ...]`` -> ``(1, N, E)``."""
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(0)


# Group "a", 4 tokens over two calls. All values are binary fractions, so sums are exact.
A_LAYER0 = [[0.5, 0.5, 0, 0], [1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0, 0, 0.75, 0.25]]
A_LAYER1 = [[0, 0.5, 0.5, 0]] * 4  # experts 1 and 2 tie: ties are ordered by expert id


def _hand_built() -> RoutingStats:
    stats = RoutingStats()
    stats.add([_w(A_LAYER0[:2]), _w(A_LAYER1[:2])], "a", "all")
    stats.add([_w(A_LAYER0[2:]), _w(A_LAYER1[2:])], "a", "all")
    # "all" named first here: the summary still lists it last.
    stats.add([_w([[0, 0, 0, 1]]), _w([[0, 0, 0, 1]])], "all", "b")
    return stats


def test_hand_built_per_layer_values_are_exact() -> None:
    s = _hand_built().summary()
    assert (s["num_experts"], s["num_layers"]) == (4, 2)
    assert list(s["groups"]) == ["a", "b", "all"]
    a = s["groups"]["a"]
    assert (a["samples"], a["tokens"]) == (2, 4)
    l0, l1 = a["layers"]
    assert l0["mean_weight"] == [0.4375, 0.1875, 0.25, 0.125]
    assert l0["frequency"] == [0.75, 0.5, 0.5, 0.5]
    assert l0["top"] == [[0, 0.4375], [2, 0.25], [1, 0.1875], [3, 0.125]]
    assert l0["active_hist"] == [1, 2, 0, 1]  # tokens with 1, 2, 3, 4 active experts
    assert l0["mean_active"] == 2.25
    assert l1["top"] == [[1, 0.5], [2, 0.5], [0, 0.0], [3, 0.0]]
    assert l1["active_hist"] == [0, 4, 0, 0]
    assert l0["max_sum_deviation"] == 0.0 and l0["no_expert_tokens"] == 0


def test_routing_entropy_and_top1_weight_are_exact() -> None:
    """Layer 0 of group "a": tokens with weights (.5,.5), (1), (.25 x4), (.75,.25)."""
    import math

    s = _hand_built().summary()
    l0, l1 = s["groups"]["a"]["layers"]
    h = [math.log(2), 0.0, math.log(4), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]
    assert l0["entropy"] == pytest.approx(sum(h) / 4, abs=1e-12)
    assert l0["top1_weight"] == pytest.approx((0.5 + 1 + 0.25 + 0.75) / 4, abs=1e-12)
    assert l1["entropy"] == pytest.approx(math.log(2), abs=1e-12)
    mean = s["groups"]["a"]["mean"]
    assert mean["entropy"] == pytest.approx((l0["entropy"] + l1["entropy"]) / 2, abs=1e-12)
    b = s["groups"]["b"]["mean"]  # one expert at weight 1: no spread at all
    assert (b["entropy"], b["top1_weight"]) == (0.0, 1.0)
    assert "routing entropy" in to_markdown(s)


def test_hand_built_layer_average_and_groups() -> None:
    s = _hand_built().summary()
    m = s["groups"]["a"]["mean"]
    assert m["mean_weight"] == [0.21875, 0.34375, 0.375, 0.0625]
    assert m["frequency"] == [0.375, 0.75, 0.75, 0.25]
    assert [e for e, _ in m["top"]] == [2, 1, 0, 3]
    assert m["mean_active"] == 2.125
    assert m["active_hist"] == [1, 6, 0, 1]  # summed over both layers
    b = s["groups"]["b"]["mean"]
    assert b["top"][0] == [3, 1.0] and b["mean_active"] == 1.0
    everything = s["groups"]["all"]
    assert (everything["samples"], everything["tokens"]) == (3, 5)
    assert everything["layers"][0]["mean_weight"] == [1.75 / 5, 0.75 / 5, 1.0 / 5, 1.5 / 5]
    assert json.loads(to_json(s)) == s


def test_batching_does_not_change_the_result() -> None:
    rng = torch.Generator().manual_seed(0)
    w = torch.rand(3, 10, 6, generator=rng) * (torch.rand(3, 10, 6, generator=rng) > 0.5)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-9)
    one, many = RoutingStats(), RoutingStats()
    one.add([w], "g")
    for b in range(3):
        for start in (0, 4):
            many.add([w[b : b + 1, start : start + (4 if start == 0 else 6)]], "g")
    s1, s2 = one.summary()["groups"]["g"], many.summary()["groups"]["g"]
    assert s1["tokens"] == s2["tokens"] == 30
    np.testing.assert_allclose(s1["mean"]["mean_weight"], s2["mean"]["mean_weight"], rtol=1e-15)
    assert s1["mean"]["active_hist"] == s2["mean"]["active_hist"]


def test_sum_check_reports_bad_tokens() -> None:
    stats = RoutingStats()
    stats.add([_w([[0.5, 0.25, 0, 0], [0, 0, 0, 0]])], "g")
    m = stats.summary()["groups"]["g"]["mean"]
    assert m["max_sum_deviation"] == 1.0  # the all-zero token
    assert m["no_expert_tokens"] == 1
    assert m["active_hist"] == [0, 1, 0, 0]


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [torch.zeros(4, 4)],  # not (B, N, E)
        [torch.zeros(1, 2, 4), torch.zeros(1, 2, 5)],  # layers disagree
    ],
)
def test_add_rejects_bad_input(bad: list[torch.Tensor]) -> None:
    with pytest.raises(ValueError):
        RoutingStats().add(bad, "g")


def test_add_rejects_a_different_model() -> None:
    stats = RoutingStats()
    stats.add([torch.ones(1, 2, 1)], "g")
    with pytest.raises(ValueError, match="1 layers x 1 experts"):
        stats.add([torch.ones(1, 2, 1), torch.ones(1, 2, 1)], "g")


def test_markdown_lists_top_experts_in_order() -> None:
    md = to_markdown({**_hand_built().summary(), "meta": {"model": "hand-built"}})
    assert "- model: hand-built" in md
    assert "| a | 2 | 4 | 2.125 | 0.677 | 0.562 | 0.0e+00 |" in md
    top_a = md.split("## Top-4 experts: a")[1].split("##")[0]
    assert [line.split("|")[2].strip() for line in top_a.strip().splitlines()[2:]] == [
        "2",
        "1",
        "0",
        "3",
    ]
    assert "| a | 0 | 2.250 | 0: 0.438, 2: 0.250, 1: 0.188, 3: 0.125 |" in md


# ------------------------------------------------------------------------ through a model

BIASES = (
    [0.0, 1.0, -1.0, 2.0, 0.5, -2.0, 0.25, 1.5],
    [1.2, -0.5, 0.3, 0.0, 2.5, 0.8, -1.0, 1.9],
)


def _expected_weights(bias: list[float], spec: str) -> np.ndarray:
    """Routing weights for constant logits ``bias``, computed independently in float64."""
    routing = parse_routing(spec)
    logits = np.asarray(bias, np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if routing.selection == "dense":
        return probs
    order = np.argsort(-probs, kind="stable")
    if routing.selection == "topk":
        keep = list(order[: routing.k])
    else:
        keep, total = [], 0.0
        for i in order:
            if total > routing.p and len(keep) >= routing.k_min:
                break
            keep.append(i)
            total += probs[i]
        keep = keep[: routing.k_max or len(probs)]
    w = np.zeros_like(probs)
    w[keep] = probs[keep] / probs[keep].sum()
    return w


def _fixed_router_model(spec: str, in_channels: int = 3) -> MoFMENet:
    """Tiny model whose routers ignore the token: logits = a known bias per layer."""
    torch.manual_seed(0)
    model = MoFMENet.from_preset("tiny", in_channels=in_channels, routing=spec).eval()
    with torch.no_grad():
        for layer, bias in zip(model.fme_layers, BIASES):
            layer.router.proj.weight.zero_()
            layer.router.proj.bias.copy_(torch.tensor(bias))
    return model


def _check_fixed(summary_group: dict, spec: str) -> None:
    for layer, bias in zip(summary_group["layers"], BIASES):
        expected = _expected_weights(bias, spec)
        np.testing.assert_allclose(layer["mean_weight"], expected, rtol=0, atol=1e-6)
        assert layer["frequency"] == (expected > 0).astype(float).tolist()
        order = sorted(range(8), key=lambda i: (-expected[i], i))
        assert [e for e, _ in layer["top"]] == order
        k = int((expected > 0).sum())
        assert layer["active_hist"][k - 1] == summary_group["tokens"]
        assert layer["mean_active"] == k


def _write_image(path: Path, seed: int, hw: tuple[int, int] = (24, 40)) -> Path:
    rgb = np.random.default_rng(seed).random((*hw, 3)).astype(np.float32)
    return save_image(path, rgb)


@pytest.mark.parametrize("spec", ["topk:2", "topp:0.7", "dense"])
def test_collect_images_matches_a_hand_set_router(tmp_path: Path, spec: str) -> None:
    pairs = [
        Pair(_write_image(tmp_path / f"{g}{i}.png", i), tmp_path / "unused.png", g)
        for i, g in enumerate(["rain", "rain", "snow"])
    ]
    stats = collect_images(_fixed_router_model(spec), pairs, progress=False)
    s = stats.summary()
    assert list(s["groups"]) == ["rain", "snow", "all"]
    # 24 x 40 pixels -> 3 x 5 patches of 8 x 8 per image
    assert [s["groups"][g]["tokens"] for g in ("rain", "snow", "all")] == [30, 15, 45]
    for group in s["groups"].values():
        _check_fixed(group, spec)


def test_collect_images_counts_every_tile(tmp_path: Path) -> None:
    pairs = [Pair(_write_image(tmp_path / "x.png", 0), tmp_path / "unused.png", "x")]
    model = _fixed_router_model("topk:2")
    stats = collect_images(model, pairs, tile=16, overlap=8, progress=False)
    # 24 x 40 in 16 x 16 tiles with stride 8: rows at 0, 8; columns at 0, 8, 16, 24 -> 8 tiles
    # of 2 x 2 patches each.
    group = stats.summary()["groups"]["x"]
    assert (group["samples"], group["tokens"]) == (1, 32)
    _check_fixed(group, "topk:2")
    assert all(not layer._forward_hooks for layer in model.fme_layers)  # hooks removed


def test_collect_images_refuses_a_video_model(tmp_path: Path) -> None:
    from mofme.errors import MofmeError

    pairs = [Pair(_write_image(tmp_path / "x.png", 0), tmp_path / "unused.png", "x")]
    with pytest.raises(MofmeError, match="video data"):
        collect_images(_fixed_router_model("topk:2", in_channels=6), pairs, progress=False)


@pytest.mark.parametrize("spec", ["topk:3", "topp:0.6", "topp:0.9:2:4", "dense"])
def test_weights_per_token_sum_to_one(spec: str) -> None:
    torch.manual_seed(1)
    model = MoFMENet.from_preset("tiny", routing=spec).eval()
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 48))
    stats = RoutingStats()
    stats.add(model.routing_weights(), "g")
    group = stats.summary()["groups"]["g"]
    routing = parse_routing(spec)
    lo, hi = {"topk": (routing.k, routing.k), "dense": (8, 8)}.get(
        routing.selection, (routing.k_min, routing.k_max or 8)
    )
    assert group["tokens"] == 2 * 4 * 6
    for layer, w in zip(group["layers"], model.routing_weights()):
        assert layer["max_sum_deviation"] < 1e-6
        assert layer["no_expert_tokens"] == 0
        hist = layer["active_hist"]
        assert sum(hist[lo - 1 : hi]) == group["tokens"]  # every token within [k_min, k_max]
        np.testing.assert_allclose(layer["mean_weight"], w.double().mean((0, 1)), atol=1e-12)
        assert layer["mean_active"] == pytest.approx(float((w > 0).sum(-1).float().mean()))


# ------------------------------------------------------------------------------ video data


def _write_rvsd(root: Path, frames: dict[str, int], hw: tuple[int, int] = (16, 24)) -> Path:
    """``root/test/{snow,clean}/<video>/<i>.png`` with ``frames[video]`` frames each."""
    for v, (name, n) in enumerate(frames.items()):
        for i in range(1, n + 1):
            for side in ("snow", "clean"):
                _write_image(root / "test" / side / name / f"{i}.png", 100 * v + i, hw)
    return root


@pytest.mark.parametrize("in_channels", [3, 6])
def test_first_and_other_frames(tmp_path: Path, in_channels: int) -> None:
    videos = find_videos(_write_rvsd(tmp_path / "rvsd", {"clip": 3}), "test")
    stats = collect_video(_fixed_router_model("topk:2", in_channels), videos, progress=False)
    s = stats.summary()
    assert list(s["groups"]) == ["first", "other", "all"]
    per_frame = 2 * 3  # 16 x 24 pixels -> 2 x 3 patches
    counts = [(s["groups"][g]["samples"], s["groups"][g]["tokens"]) for g in s["groups"]]
    assert counts == [(1, per_frame), (2, 2 * per_frame), (3, 3 * per_frame)]
    for group in s["groups"].values():
        _check_fixed(group, "topk:2")


def test_max_frames_and_several_videos(tmp_path: Path) -> None:
    videos = find_videos(_write_rvsd(tmp_path / "rvsd", {"a": 3, "b": 2}), "test")
    model = MoFMENet.from_preset("tiny", in_channels=6).eval()
    s = collect_video(model, videos, max_frames=2, progress=False).summary()
    assert [s["groups"][g]["samples"] for g in ("first", "other", "all")] == [2, 2, 4]


# ----------------------------------------------------------------------------------- reports


def test_write_report_writes_every_file(tmp_path: Path) -> None:
    paths = write_report(_hand_built().summary(), tmp_path / "out")
    names = sorted(p.name for p in paths.values())
    assert names == ["active_hist.png", "heatmap.png", "stats.json", "stats.md", "top8.png"]
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names  # no temp files left


# ---------------------------------------------------------------------------------------- CLI


@pytest.fixture(autouse=True)
def _only_stats_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real ``mofme`` entry point, with only this command registered: the tests here do not
    # depend on (or pay for importing) the other commands.
    monkeypatch.setattr("mofme.cli.COMMANDS", ("stats",))


def test_cli_on_video_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _write_rvsd(tmp_path / "rvsd", {"clip": 3})
    out = tmp_path / "out"
    args = ["stats", "--preset", "tiny", "--data", str(root), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("# Routing statistics")
    assert stdout == (out / "stats.md").read_text()
    for name in ("top8.png", "heatmap.png", "active_hist.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    s = json.loads((out / "stats.json").read_text())
    assert list(s["groups"]) == ["first", "other", "all"]
    assert s["meta"]["routing"] == "topk:2"


def test_cli_video_model_on_image_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "imgs"
    for side in ("input", "gt"):
        _write_image(root / side / "a.png", 0)
    ckpt = tmp_path / "video.safetensors"
    checkpoint.save(MoFMENet.from_preset("tiny", in_channels=6), ckpt)
    common = ["--data", str(root), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(["stats", str(ckpt), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs video data" in err
    # An image model on the same folder works.
    assert main(["stats", "--preset", "tiny", "--routing", "dense", *common]) == 0
    s = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert list(s["groups"]) == ["imgs", "all"]
    assert s["groups"]["all"]["mean"]["mean_active"] == 8


def _empty_rvsd(root: Path) -> None:
    for side in ("snow", "clean"):
        (root / "test" / side).mkdir(parents=True)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "cannot tell the dataset layout"),
        (lambda root: _empty_rvsd(root), "no videos found"),
        (lambda root: (root / "input").mkdir(parents=True), "no ground-truth folder"),
    ],
)
def test_cli_missing_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, message: str
) -> None:
    root = tmp_path / "data"
    make(root)
    args = ["stats", "--preset", "tiny", "--data", str(root), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()
