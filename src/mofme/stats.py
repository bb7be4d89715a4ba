"""Routing statistics: which experts the router picks, how strongly, and how many per token.

``RoutingStats`` accumulates the sparse routing weights ``(B, N, E)`` of every FME layer over a
data set, split into named groups (a test set, a weather type, the first frame of a video vs the
others). It keeps exact sums (float64 weight sums, integer counts), so the summary does not
depend on batch sizes or the order in which data arrives:

* mean routing weight per expert: sum of the expert's weights / number of tokens;
* activation frequency per expert: fraction of tokens for which its weight is > 0;
* histogram of the number of active experts per token (1..E), and its mean;
* the largest deviation of a token's weights from summing to 1 (a sanity check of the router).

``collect_video`` and ``collect_images`` run a model over RVSD videos or Allweather-style image
pairs and fill a ``RoutingStats``; ``to_markdown``, ``to_json`` and ``write_plots`` turn its
``summary()`` into a report. Weights are captured with forward hooks on the FME layers, so tiled
inference (several forward passes per image) is counted completely: every token of every
forward pass, including tokens of the reflect-padded border and, with tiles, the overlaps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from mofme.errors import MofmeError
from mofme.model.analysis import active_experts

if TYPE_CHECKING:
    from mofme.evaluate import Sample

TOP = 8  # experts listed in "top-8" tables and plots (the MoFME report's Figure 3)
ALL = "all"  # the group that collects every token


@dataclass
class _LayerCounts:
    """Exact running totals for one (group, layer) pair with ``E`` experts."""

    num_experts: int
    weight_sum: np.ndarray = field(init=False)  # (E,) float64: Σ_tokens w_e
    active: np.ndarray = field(init=False)  # (E,) int64: tokens with w_e > 0
    hist: np.ndarray = field(init=False)  # (E + 1,) int64: tokens with k active experts, k = 0..E
    tokens: int = 0
    max_sum_dev: float = 0.0  # max over tokens of |Σ_e w_e − 1|
    entropy_sum: float = 0.0  # Σ_tokens H(w) = −Σ_e w_e·ln w_e (nats, over the used experts)
    top1_sum: float = 0.0  # Σ_tokens max_e w_e

    def __post_init__(self) -> None:
        self.weight_sum = np.zeros(self.num_experts, np.float64)
        self.active = np.zeros(self.num_experts, np.int64)
        self.hist = np.zeros(self.num_experts + 1, np.int64)

    def add(self, reduced: dict[str, Any]) -> None:
        self.weight_sum += reduced["weight_sum"]
        self.active += reduced["active"]
        self.hist += reduced["hist"]
        self.tokens += reduced["tokens"]
        self.max_sum_dev = max(self.max_sum_dev, reduced["max_sum_dev"])
        self.entropy_sum += reduced["entropy_sum"]
        self.top1_sum += reduced["top1_sum"]


def _reduce(weights: Tensor) -> dict[str, Any]:
    """Per-expert totals of one layer's weights ``(B, N, E)`` (reduced on the weights' device)."""
    e = weights.shape[-1]
    w = weights.reshape(-1, e)
    if w.device.type == "mps":  # no float64 there
        w = w.cpu()
    w64 = w.double()
    used = w > 0
    per_token = active_experts(w)
    return {
        "weight_sum": w64.sum(0).cpu().numpy(),
        "active": used.sum(0).cpu().numpy().astype(np.int64),
        "hist": torch.bincount(per_token, minlength=e + 1).cpu().numpy().astype(np.int64),
        "tokens": int(w.shape[0]),
        "max_sum_dev": float((w64.sum(-1) - 1.0).abs().max()) if w.shape[0] else 0.0,
        # How concentrated each token's routing is: the entropy of its weights (0 = one expert;
        # ln k = k equal experts) and the weight of its strongest expert.
        "entropy_sum": float(-(w64 * torch.where(used, w64, 1.0).log()).sum()),
        "top1_sum": float(w64.max(-1).values.sum()) if w.shape[0] else 0.0,
    }


class RoutingStats:
    """Accumulate routing weights per group and per layer; see the module docstring.

    >>> stats = RoutingStats()
    >>> stats.add(model.routing_weights(), "snow", "all")   # list over layers of (B, N, E)
    >>> stats.summary()["groups"]["snow"]["mean"]["top"]      # [[expert, mean weight], ...]
    """

    def __init__(self) -> None:
        self.num_experts: int | None = None
        self.num_layers: int | None = None
        self._groups: dict[str, list[_LayerCounts]] = {}
        self._samples: dict[str, int] = {}  # add() calls per group: images or frames

    @property
    def groups(self) -> list[str]:
        """Group names in the order they were first seen."""
        return list(self._groups)

    def add(self, weights_per_layer: Sequence[Tensor], group: str, *more_groups: str) -> None:
        """Add one forward pass: ``weights_per_layer[l]`` is layer l's weights ``(B, N, E)``.

        The tokens are counted in ``group`` and in each of ``more_groups`` (e.g. ``"all"``);
        each call counts as one sample (an image or a frame). Every call must give the same
        number of layers and experts.
        """
        if len(weights_per_layer) == 0:
            raise ValueError("no routing weights: run a forward pass of an MoFME model first")
        shapes = [tuple(w.shape) for w in weights_per_layer]
        if any(len(s) != 3 for s in shapes):
            raise ValueError(f"routing weights must be (B, N, E) per layer, got shapes {shapes}")
        experts = {s[-1] for s in shapes}
        if len(experts) != 1:
            raise ValueError(f"layers disagree on the number of experts: {shapes}")
        e, n_layers = experts.pop(), len(weights_per_layer)
        if self.num_experts is None:
            self.num_experts, self.num_layers = e, n_layers
        elif (e, n_layers) != (self.num_experts, self.num_layers):
            raise ValueError(
                f"expected {self.num_layers} layers x {self.num_experts} experts, "
                f"got {n_layers} x {e}"
            )
        reduced = [_reduce(w.detach()) for w in weights_per_layer]
        for name in dict.fromkeys((group, *more_groups)):  # a group named twice counts once
            layers = self._groups.get(name)
            if layers is None:
                layers = self._groups[name] = [_LayerCounts(e) for _ in range(n_layers)]
                self._samples[name] = 0
            self._samples[name] += 1
            for counts, r in zip(layers, reduced):
                counts.add(r)

    def tokens(self, group: str) -> int:
        """Tokens counted in ``group`` (per layer; every layer sees the same tokens)."""
        return self._groups[group][0].tokens if group in self._groups else 0

    def samples(self, group: str) -> int:
        """Images or frames (``add`` calls) counted in ``group``."""
        return self._samples.get(group, 0)

    def summary(self) -> dict[str, Any]:
        """Plain-data summary (JSON-ready).

        ``{"num_experts", "num_layers", "groups": {name: {"samples", "tokens", "layers": [...],
        "mean": averaged over layers}}}``. Each per-layer / mean entry holds ``mean_weight``
        ``[E]``, ``frequency`` ``[E]``, ``top`` (up to 8 ``[expert, mean weight]`` pairs, by
        weight descending, ties by expert id), ``mean_active``, ``entropy`` (mean routing entropy
        in nats over each token's weights), ``top1_weight`` (mean weight of each token's
        strongest expert), ``active_hist`` (token counts
        for 1..E active experts; summed over layers in ``mean``), ``no_expert_tokens`` (tokens
        with all weights 0, expected 0) and ``max_sum_deviation``.
        """
        groups: dict[str, Any] = {}
        names = [g for g in self._groups if g != ALL] + ([ALL] if ALL in self._groups else [])
        for name in names:
            layers = self._groups[name]
            per_layer = [_describe(c) for c in layers]
            mean_weight = np.mean([c.weight_sum / max(c.tokens, 1) for c in layers], axis=0)
            frequency = np.mean([c.active / max(c.tokens, 1) for c in layers], axis=0)
            hist = np.sum([c.hist for c in layers], axis=0)
            groups[name] = {
                "samples": self._samples[name],
                "tokens": layers[0].tokens,
                "layers": per_layer,
                "mean": {
                    "mean_weight": mean_weight.tolist(),
                    "frequency": frequency.tolist(),
                    "top": _top(mean_weight),
                    "mean_active": float(np.mean([d["mean_active"] for d in per_layer])),
                    "entropy": float(np.mean([d["entropy"] for d in per_layer])),
                    "top1_weight": float(np.mean([d["top1_weight"] for d in per_layer])),
                    "active_hist": hist[1:].tolist(),
                    "no_expert_tokens": int(hist[0]),
                    "max_sum_deviation": max(d["max_sum_deviation"] for d in per_layer),
                },
            }
        return {"num_experts": self.num_experts, "num_layers": self.num_layers, "groups": groups}


def _top(mean_weight: np.ndarray, n: int = TOP) -> list[list[float]]:
    order = sorted(range(len(mean_weight)), key=lambda i: (-mean_weight[i], i))[:n]
    return [[i, float(mean_weight[i])] for i in order]


def _describe(c: _LayerCounts) -> dict[str, Any]:
    tokens = max(c.tokens, 1)
    mean_weight = c.weight_sum / tokens
    return {
        "mean_weight": mean_weight.tolist(),
        "frequency": (c.active / tokens).tolist(),
        "top": _top(mean_weight),
        "mean_active": float(c.active.sum() / tokens),
        "entropy": c.entropy_sum / tokens,
        "top1_weight": c.top1_sum / tokens,
        "active_hist": c.hist[1:].tolist(),
        "no_expert_tokens": int(c.hist[0]),
        "max_sum_deviation": c.max_sum_dev,
    }


# ---------------------------------------------------------------------------------------------
# Collecting from a model


class RoutingObserver:
    """An observer of the evaluation loop (:mod:`mofme.evaluate`) that adds the routing weights
    of every restored image or frame to ``stats``, in the groups ``groups(sample)`` names."""

    def __init__(self, stats: RoutingStats, groups: Callable[[Sample], Sequence[str]]) -> None:
        self.stats, self.groups = stats, groups

    def __call__(self, sample: Sample) -> None:
        if not sample.routing or not sample.routing[0]:
            raise RuntimeError("the model ran no FME layer (is it an MoFMENet?)")
        merged = []
        for passes in sample.routing:
            e = passes[0].shape[-1]
            # Tiles differ in token count: concatenate all their tokens as one batch of 1.
            merged.append(torch.cat([p.reshape(-1, e) for p in passes]).unsqueeze(0))
        self.stats.add(merged, *self.groups(sample))


def collect_video(
    model: nn.Module,
    videos: Iterable[Any],
    tile: int | None = None,
    device: str | torch.device | None = None,
    max_frames: int | None = None,
    overlap: int = 32,
    progress: bool = True,
) -> RoutingStats:
    """Stream RVSD videos through ``VideoRestorer`` and collect routing statistics.

    Args:
        model: an ``MoFMENet`` (6-channel video model with the previous restored frame as
            reference, or a 3-channel image model run frame by frame); on ``device``.
        videos: ``VideoPair`` items (``mofme.data.pairs.find_videos``); only the degraded
            frames (``snow_frames``) are read.
        tile: tile side for ``restore_image`` (``None``: whole frames).
        device: where the frames go (default: the model's device).
        max_frames: use at most this many frames of each video (from its start).
        progress: show a progress bar over frames.
        overlap: tile overlap in pixels (with ``tile``).

    Groups: ``"first"`` (frame 0 of each video, reference all zeros), ``"other"`` (the rest),
    ``"all"``.
    """
    from mofme.evaluate import restore_and_score

    stats = RoutingStats()
    observe = RoutingObserver(stats, lambda s: ("first" if s.index == 0 else "other", ALL))
    restore_and_score(
        model, list(videos), tile=tile, overlap=overlap, max_frames=max_frames, device=device,
        score=False, progress=progress, strict=True, warmup=False, observers=[observe],
    )  # fmt: skip
    return stats


def collect_images(
    model: nn.Module,
    pairs: Iterable[Any],
    tile: int | None = None,
    device: str | torch.device | None = None,
    max_images: int | None = None,
    overlap: int = 32,
    progress: bool = True,
) -> RoutingStats:
    """Restore the degraded images of ``pairs`` and collect routing statistics.

    Args:
        model: a 3-channel ``MoFMENet`` on ``device``.
        pairs: ``Pair(input, gt, group)`` items (``mofme.data.pairs.find_pairs``); only the
            inputs are read.
        tile: tile side for ``restore_image`` (``None``: whole images).
        device: where the images go (default: the model's device).
        max_images: use at most this many images of each group.
        progress: show a progress bar over images.
        overlap: tile overlap in pixels (with ``tile``).

    Groups: each pair's ``group`` (test set / weather type), plus ``"all"``.
    """
    from mofme.evaluate import limit_per_group, restore_and_score

    in_channels = model.cfg.in_channels  # type: ignore[attr-defined]
    if in_channels != 3:
        raise MofmeError(
            f"the model takes {in_channels}-channel input (a video model); "
            "routing statistics for it need video data (RVSD layout)"
        )
    stats = RoutingStats()
    observe = RoutingObserver(stats, lambda s: (str(s.group), ALL))
    restore_and_score(
        model, limit_per_group(list(pairs), max_images), tile=tile, overlap=overlap,
        device=device, score=False, progress=progress, strict=True, warmup=False,
        observers=[observe],
    )  # fmt: skip
    return stats


# ---------------------------------------------------------------------------------------------
# Reports


def to_json(summary: dict[str, Any]) -> str:
    """The summary as indented JSON."""
    return json.dumps(summary, indent=2)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def to_markdown(summary: dict[str, Any]) -> str:
    """A Markdown report: per-group overview, top-8 experts per group, all experts, per layer.

    ``summary`` is ``RoutingStats.summary()``, optionally with a ``"meta"`` dict of
    ``name: value`` lines printed first (model, routing, data).
    """
    groups: dict[str, Any] = summary["groups"]
    e = summary["num_experts"]
    lines = ["# Routing statistics", ""]
    for key, value in summary.get("meta", {}).items():
        lines.append(f"- {key}: {value}")
    if summary.get("meta"):
        lines.append("")
    if not groups:
        return "\n".join([*lines, "No tokens were routed.", ""])
    lines += [
        f"{summary['num_layers']} FME layers x {e} experts. Mean weight = average routing "
        "weight of the expert over all tokens (0 where not selected); frequency = share of "
        "tokens that use the expert. Values are averaged over layers.",
        "",
        "Routing entropy = mean over tokens of −Σ w·ln w over the token's experts (nats; 0 = "
        "one expert, ln k = k equal ones); top-1 weight = mean weight of each token's strongest "
        "expert. Both measure how concentrated the routing is.",
        "",
        "| group | images / frames | tokens | mean active experts | routing entropy | top-1 weight "
        "| max abs(sum w - 1) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, g in groups.items():
        m = g["mean"]
        lines.append(
            f"| {name} | {g['samples']:,} | {g['tokens']:,} | {m['mean_active']:.3f} "
            f"| {m['entropy']:.3f} | {m['top1_weight']:.3f} | {m['max_sum_deviation']:.1e} |"
        )
    for name, g in groups.items():
        m = g["mean"]
        lines += ["", f"## Top-{len(m['top'])} experts: {name}", ""]
        lines += ["| rank | expert | mean weight | frequency |", "|---:|---:|---:|---:|"]
        for rank, (expert, weight) in enumerate(m["top"], 1):
            freq = m["frequency"][int(expert)]
            lines.append(f"| {rank} | {int(expert)} | {weight:.4f} | {_pct(freq)} |")
    names = list(groups)
    lines += ["", "## All experts: mean weight (frequency)", ""]
    lines.append("| expert | " + " | ".join(names) + " |")
    lines.append("|---:|" + "---:|" * len(names))
    for i in range(e):
        cells = [
            f"{groups[n]['mean']['mean_weight'][i]:.4f} ({_pct(groups[n]['mean']['frequency'][i])})"
            for n in names
        ]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines += ["", "## Per layer", ""]
    lines += ["| group | layer | mean active | top experts (expert: mean weight) |"]
    lines += ["|---|---:|---:|---|"]
    for name, g in groups.items():
        for layer, d in enumerate(g["layers"]):
            top = ", ".join(f"{int(x)}: {w:.3f}" for x, w in d["top"])
            lines.append(f"| {name} | {layer} | {d['mean_active']:.3f} | {top} |")
    lines += ["", "## Active experts per token (share of tokens, all layers)", ""]
    lines.append("| experts | " + " | ".join(names) + " |")
    lines.append("|---:|" + "---:|" * len(names))
    for k in range(1, e + 1):
        cells = []
        for n in names:
            hist = groups[n]["mean"]["active_hist"]
            cells.append(_pct(hist[k - 1] / max(sum(hist), 1)))
        if any(groups[n]["mean"]["active_hist"][k - 1] for n in names):
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save_figure(fig: Any, path: Path) -> None:
    from mofme.checkpoint import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def plot_top8(summary: dict[str, Any], path: str | Path) -> None:
    """Bar charts side by side, one per group: the top-8 experts by mean weight, descending."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    groups = summary["groups"]
    n = max(len(groups), 1)
    fig = Figure(figsize=(2.6 * n + 0.6, 3.0), layout="constrained")
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    for ax, (name, g) in zip(axes, groups.items()):
        top = g["mean"]["top"]
        ax.bar(range(len(top)), [w for _, w in top], color="tab:blue")
        ax.set_xticks(range(len(top)), [str(int(x)) for x, _ in top])
        ax.set_title(name)
        ax.set_xlabel("expert")
    axes[0].set_ylabel("mean routing weight")
    _save_figure(fig, Path(path))


def plot_heatmap(summary: dict[str, Any], path: str | Path) -> None:
    """Heatmap of mean weight per expert (columns) for every (group, layer) row."""
    from matplotlib.figure import Figure

    groups = summary["groups"]
    e = summary["num_experts"] or 1
    rows, labels = [], []
    for name, g in groups.items():
        for layer, d in enumerate(g["layers"]):
            rows.append(d["mean_weight"])
            labels.append(f"{name} / layer {layer}")
    data = np.array(rows) if rows else np.zeros((1, e))
    fig = Figure(figsize=(1.2 + 0.45 * e, 1.0 + 0.32 * len(data)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_xticks(range(e), [str(i) for i in range(e)])
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("expert")
    if data.size <= 400:  # values stay legible
        cut = 0.6 * float(data.max()) if data.size else 0.0
        for (r, c), v in np.ndenumerate(data):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if v > cut else "white")  # fmt: skip
    fig.colorbar(image, ax=ax, label="mean routing weight")
    _save_figure(fig, Path(path))


def plot_active_hist(summary: dict[str, Any], path: str | Path) -> None:
    """Grouped bars: share of tokens with k = 1..E active experts, one colour per group."""
    from matplotlib.figure import Figure

    groups = summary["groups"]
    e = summary["num_experts"] or 1
    fig = Figure(figsize=(max(4.0, 0.5 * e + 2.0), 3.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(groups), 1)
    ks = np.arange(1, e + 1)
    for j, (name, g) in enumerate(groups.items()):
        hist = np.asarray(g["mean"]["active_hist"], np.float64)
        share = hist / max(hist.sum(), 1.0)
        label = f"{name} (mean {g['mean']['mean_active']:.2f})"
        ax.bar(ks - 0.4 + width * (j + 0.5), share, width=width, label=label)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("active experts per token")
    ax.set_ylabel("share of tokens")
    if groups:
        ax.legend(fontsize=7)
    _save_figure(fig, Path(path))


def write_report(summary: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``stats.md``, ``stats.json``, ``top8.png``, ``heatmap.png``, ``active_hist.png``."""
    from mofme.checkpoint import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "stats.md",
        "json": out / "stats.json",
        "top8": out / "top8.png",
        "heatmap": out / "heatmap.png",
        "active_hist": out / "active_hist.png",
    }
    md, js = to_markdown(summary), to_json(summary)
    atomic_write(paths["markdown"], lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(js + "\n", encoding="utf-8"))
    plot_top8(summary, paths["top8"])
    plot_heatmap(summary, paths["heatmap"])
    plot_active_hist(summary, paths["active_hist"])
    return paths
