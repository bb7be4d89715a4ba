"""What an evaluation produced and how it is reported: per-item records, per-group rows and
their means, model size and cost, and the tables (Markdown, JSON) of ``mofme test`` (SPEC §6).

Produced by the evaluation loop (:mod:`mofme.evaluate`); ``routing_sweep`` runs that loop once
per routing spec and ``sweep_markdown`` / ``plot_sweep`` report the sweep.

* A test set's numbers are means over its images; the ``average`` row is the mean over test
  sets (every set counts once, as papers report); ``overall`` is the mean over all images.
* Videos: per video, means over frames, also for the first frame (all-zero reference) and the
  other frames separately; the ``average`` row is the mean over videos.
* GFLOPs are counted at a fixed reference size (240x240 by default, the training crop) on a
  random input, so they are comparable between models and routings but not tied to the data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mofme.errors import MofmeError

__all__ = [
    "METRICS",
    "EvalResult",
    "Record",
    "plot_sweep",
    "routing_sweep",
    "severity_gains",
    "summarise",
    "sweep_markdown",
]

#: Metric names, in table order.
METRICS = ("psnr", "ssim", "psnr_y", "ssim_y")


@dataclass
class Record:
    """Scores of one evaluated image or video frame."""

    group: str  # test set (images) or video name
    name: str  # input file name
    index: int  # position in its test set, or frame number in its video
    psnr: float
    ssim: float
    psnr_y: float
    ssim_y: float
    ms: float  # restoration time
    active_experts: float | None  # mean experts per token (None: the model has no FME layers)
    height: int
    width: int
    first_frame: bool = False  # video: restored with an all-zero reference


@dataclass
class EvalResult:
    """Per-group rows, their average, per-item records, model size and cost.

    ``rows`` hold one dict per test set (images) or video, with keys ``name``, ``count``, the
    :data:`METRICS`, ``ms`` and ``active_experts``; video rows add the same keys suffixed
    ``_first`` / ``_other`` (plus ``count_first`` / ``count_other``). ``average`` is the mean
    over rows (the headline number), ``overall`` the mean over all images / frames.
    """

    kind: str  # "images" or "video"
    rows: list[dict[str, Any]]
    average: dict[str, Any]
    overall: dict[str, Any]
    records: list[Record]
    failed: list[dict[str, str]]  # {"path": ..., "error": ...}
    params: dict[str, int]
    gflops: float | None
    flops_size: tuple[int, int] | None  # (H, W) the GFLOPs were counted at (None: not counted)
    routing: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready data (non-finite numbers become ``None``)."""
        return _finite(
            {
                "kind": self.kind,
                "routing": self.routing,
                "params": self.params,
                "gflops": self.gflops,
                "flops_size": list(self.flops_size) if self.flops_size else None,
                "rows": self.rows,
                "average": self.average,
                "overall": self.overall,
                "failed": self.failed,
                "meta": self.meta,
                "records": [asdict(r) for r in self.records],
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_markdown(self) -> str:
        """The results table plus lines on params, GFLOPs, routing and failures."""
        video = self.kind == "video"
        unit = "frame" if video else "image"
        header = [
            "video" if video else "test set",
            "frames" if video else "images",
            "PSNR",
            "SSIM",
            "PSNR (Y)",
            "SSIM (Y)",
        ]
        if video:
            header += ["PSNR 1st", "PSNR rest", "SSIM 1st", "SSIM rest"]
        header += [f"ms/{unit}", "experts/token (all / 1st / rest)" if video else "experts/token"]

        def cells(row: dict[str, Any], label: str) -> list[str]:
            out = [label, str(row["count"])]
            out += [_fmt(row[m], m) for m in METRICS]
            if video:
                out += [_fmt(row.get("psnr_first"), "psnr"), _fmt(row.get("psnr_other"), "psnr")]
                out += [_fmt(row.get("ssim_first"), "ssim"), _fmt(row.get("ssim_other"), "ssim")]
            out.append(_fmt(row["ms"], "ms"))
            experts = _fmt(row["active_experts"], "experts")
            if video:
                experts += " / " + " / ".join(
                    _fmt(row.get(f"active_experts_{s}"), "experts") for s in ("first", "other")
                )
            out.append(experts)
            return out

        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(cells(row, row["name"])) + " |" for row in self.rows]
        if len(self.rows) > 1:
            mean_label = "**mean over videos**" if video else "**average**"
            lines.append("| " + " | ".join(cells(self.average, mean_label)) + " |")
            all_label = "all frames" if video else "all images"
            lines.append("| " + " | ".join(cells(self.overall, all_label)) + " |")
        lines.append("")
        total = self.params.get("total", 0)
        experts = self.params.get("experts")
        params = f"{total / 1e6:.3f} M" + (
            f" ({experts / 1e6:.3f} M in experts)" if experts is not None else ""
        )
        lines.append(f"params: {params}")
        if self.gflops is not None and self.flops_size is not None:
            h, w = self.flops_size
            lines.append(
                f"GFLOPs: {self.gflops:.3f} per {h}x{w} input "
                f"(routing {self.routing}, counted on a random input)"
            )
        lines.append(f"routing: {self.routing}")
        if self.failed:
            names = ", ".join(Path(f["path"]).name for f in self.failed[:5])
            more = f" and {len(self.failed) - 5} more" if len(self.failed) > 5 else ""
            lines.append(f"failed: {len(self.failed)} {unit}(s) skipped: {names}{more}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------- helpers


def _finite(value: Any) -> Any:
    """Replace NaN / inf by ``None`` recursively (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _fmt(value: float | None, kind: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    digits = {"psnr": 2, "psnr_y": 2, "ssim": 4, "ssim_y": 4, "ms": 1, "experts": 2}[kind]
    return f"{value:.{digits}f}"


def _mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not ``None`` (``None`` when there are none)."""
    kept = [float(v) for v in values if v is not None]
    return math.fsum(kept) / len(kept) if kept else None


def _row(name: str, records: Sequence[Record], video: bool) -> dict[str, Any]:
    """Means over ``records`` (one group, or all)."""
    row: dict[str, Any] = {"name": name, "count": len(records)}
    for m in METRICS:
        row[m] = _mean(getattr(r, m) for r in records)
    row["ms"] = _mean(r.ms for r in records)
    row["active_experts"] = _mean(r.active_experts for r in records)
    if video:
        parts = {
            "first": [r for r in records if r.first_frame],
            "other": [r for r in records if not r.first_frame],
        }
        for suffix, subset in parts.items():
            row[f"count_{suffix}"] = len(subset)
            for m in METRICS:
                row[f"{m}_{suffix}"] = _mean(getattr(r, m) for r in subset)
            row[f"active_experts_{suffix}"] = _mean(r.active_experts for r in subset)
    return row


def _average(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """Mean over rows of every numeric column; counts are summed."""
    out: dict[str, Any] = {"name": name}
    for key in rows[0] if rows else []:
        if key == "name":
            continue
        if key.startswith("count"):
            out[key] = sum(r[key] for r in rows)
        else:
            out[key] = _mean(r.get(key) for r in rows)
    return out


def summarise(
    kind: str,
    records: list[Record],
    failed: list[dict[str, str]],
    model: nn.Module,
    flops_size: tuple[int, int] | None,
    meta: dict[str, Any],
) -> EvalResult:
    """The ``EvalResult`` of ``records`` (``kind`` ``"images"`` or ``"video"``): one row per
    group in the order first seen, their mean, the mean over all records, the model's cost."""
    video = kind == "video"
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record.group, []).append(record)
    rows = [_row(name, recs, video) for name, recs in groups.items()]
    average = _average(rows, "mean over videos" if video else "average")
    overall = _row("all frames" if video else "all images", records, video)
    params, gflops = _model_cost(model, flops_size)
    cfg = getattr(model, "cfg", None)
    routing = cfg.routing.describe() if cfg is not None else "n/a"
    return EvalResult(
        kind, rows, average, overall, records, failed, params, gflops, flops_size, routing, meta
    )


def _model_cost(
    model: nn.Module, size_hw: tuple[int, int] | None
) -> tuple[dict[str, int], float | None]:
    """Parameter counts and GFLOPs at ``size_hw`` (GFLOPs only for a ``MoFMENet`` and a size)."""
    from mofme.model.analysis import count_flops, param_counts
    from mofme.model.net import MoFMENet

    if not isinstance(model, MoFMENet):
        return {"total": sum(p.numel() for p in model.parameters())}, None
    gflops = count_flops(model, size_hw).total / 1e9 if size_hw is not None else None
    return param_counts(model), gflops


# ---------------------------------------------------------------------------- routing sweep


def routing_sweep(
    model: nn.Module, specs: Sequence[str], run_fn: Callable[[], EvalResult]
) -> list[dict[str, Any]]:
    """Evaluate under each routing spec (``topk:2``, ``topp:0.6``, ``dense``, ...).

    ``run_fn()`` runs one evaluation (e.g. ``lambda: evaluate_images(model, pairs)``); it is
    called once per spec inside ``with model.routing(spec)``. Each row holds the headline
    (``average``) numbers: the :data:`METRICS`, ``active_experts``, ``gflops``, ``ms`` (per
    image or frame), plus ``psnr_first`` / ``psnr_other`` for videos, and ``kind``.
    """
    from mofme.model.config import parse_routing

    for spec in specs:  # fail on a typo before the first (possibly long) evaluation
        try:
            parse_routing(spec).check(model.cfg.num_experts)  # type: ignore[union-attr]
        except MofmeError as exc:
            raise MofmeError(f"routing {spec!r}: {exc}") from None
    rows = []
    for spec in specs:
        with model.routing(spec):  # type: ignore[operator]
            result = run_fn()
        avg = result.average
        row: dict[str, Any] = {"routing": spec, "kind": result.kind}
        row.update({m: avg.get(m) for m in METRICS})
        row["active_experts"] = avg.get("active_experts")
        row["gflops"] = result.gflops
        row["ms"] = avg.get("ms")
        if result.kind == "video":
            row["psnr_first"] = avg.get("psnr_first")
            row["psnr_other"] = avg.get("psnr_other")
            row["active_experts_first"] = avg.get("active_experts_first")
            row["active_experts_other"] = avg.get("active_experts_other")
        rows.append(row)
    return rows


def sweep_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The sweep as a Markdown table, one row per routing spec."""
    video = any(r.get("kind") == "video" for r in rows)
    header = ["routing", "PSNR", "SSIM", "PSNR (Y)", "SSIM (Y)", "experts/token", "GFLOPs"]
    if video:
        header[5:5] = ["PSNR 1st", "PSNR rest"]
    header.append("ms/frame" if video else "ms/image")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|",
    ]
    for r in rows:
        cells = [r["routing"]] + [_fmt(r.get(m), m) for m in METRICS]
        if video:
            cells += [_fmt(r.get("psnr_first"), "psnr"), _fmt(r.get("psnr_other"), "psnr")]
        gflops = r.get("gflops")
        cells += [
            _fmt(r.get("active_experts"), "experts"),
            "–" if gflops is None else f"{gflops:.3f}",
            _fmt(r.get("ms"), "ms"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict[str, Any]], png_path: str | Path) -> Path:
    """PSNR against mean active experts per token, one labelled point per routing spec.

    Points of one family (top-k, top-p) are joined in order of their experts. Written
    atomically as a PNG; returns the path.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    from mofme.checkpoint import atomic_write

    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    families: dict[str, list[tuple[float, float, str]]] = {}
    for r in rows:
        x, y = r.get("active_experts"), r.get("psnr")
        if x is None or y is None:
            continue
        family = str(r["routing"]).split(":")[0]
        families.setdefault(family, []).append((float(x), float(y), str(r["routing"])))
    styles = {"topk": ("o-", "top-k"), "topp": ("s--", "top-p (dynamic)"), "dense": ("*", "dense")}
    for family, points in families.items():
        points.sort()
        style, label = styles.get(family, ("^", family))
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label, markersize=8)
        for x, y, spec in points:
            ax.annotate(spec, (x, y), textcoords="offset points", xytext=(4, 5), fontsize=8)
    ax.set_xlabel("mean active experts per token")
    ax.set_ylabel("PSNR (dB, RGB)")
    ax.set_title("Routing sweep: quality vs. experts used")
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="y", useOffset=False)  # plain dB values, no "+1.06e1" offset
    ax.margins(x=0.15, y=0.15)  # room for the labels of the outermost points
    if families:
        ax.legend(fontsize=8)
    png_path = Path(png_path)
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return png_path


def severity_gains(
    restored: dict[str, float], inputs: dict[str, float], skip: Iterable[str] = ("clean",)
) -> dict[str, dict[str, float]]:
    """Mean and worst PSNR gain per severity of a benchmark (``mofme synth bench``): set names
    ``<type>_<severity>`` -> PSNR of the restored images and of the inputs. Returns
    ``{severity: {"mean": dB, "worst": dB}}``; sets in ``skip`` (the clean set) are left out."""
    gains: dict[str, list[float]] = {}
    for name, psnr in restored.items():
        if name in skip:
            continue
        gains.setdefault(name.rsplit("_", 1)[-1], []).append(psnr - inputs[name])
    return {sev: {"mean": sum(g) / len(g), "worst": min(g)} for sev, g in gains.items()}
