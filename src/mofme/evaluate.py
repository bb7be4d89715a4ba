"""Evaluation on paired test sets and videos: PSNR / SSIM, speed, active experts (SPEC §6).

Protocol:

* Images are evaluated at full resolution unless ``resize=(W, H)`` is given; ``(720, 480)``
  reproduces the official MoFME protocol (Pillow bicubic on input *and* ground truth).
* Each image is restored with :func:`mofme.inference.tiling.restore_image` (one whole-image
  pass, or overlapping tiles with ``tile``), clamped to ``[0, 1]`` and scored on RGB and on the
  BT.601 Y channel (:mod:`mofme.metrics`, matched to scikit-image).
* PSNR of an exact match is infinite; per image it is capped at :data:`PSNR_CAP` (100 dB, an
  MSE of 1e-10, far below 8-bit quantisation) so that means and JSON stay finite.
* A test set's numbers are means over its images; the ``average`` row is the mean over test
  sets (every set counts once, as papers report); ``overall`` is the mean over all images.
* Videos (RVSD) are restored in a stream with :class:`mofme.inference.video.VideoRestorer`
  (the previous restored frame is the reference of a 6-channel model; a 3-channel model runs
  frame by frame). Per video: means over frames, also for the first frame (all-zero reference)
  and the other frames separately; the ``average`` row is the mean over videos.
* Time is the restoration alone (no file I/O, no metrics), with CUDA synchronised before and
  after; one untimed warm-up pass runs first.
* Active experts: the number of experts with nonzero weight per token, averaged over the FME
  layers and over every token the model computed (all tiles with ``tile``), read from each
  layer's routing weights after every forward pass (``FMELayer.last_weights``, the data of
  ``MoFMENet.routing_weights()``).
* GFLOPs are counted at a fixed reference size (240×240 by default, the training crop) on a
  random input, so they are comparable between models and routings but not tied to the data.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from mofme.data.datasets import Pair, VideoPair
from mofme.data.io import load_image, resize_rgb, save_image, to_numpy, to_tensor
from mofme.errors import MofmeError
from mofme.inference import tiling
from mofme.inference.tiling import model_device
from mofme.inference.video import VideoRestorer, model_in_channels
from mofme.metrics import psnr, ssim

__all__ = [
    "METRICS",
    "PSNR_CAP",
    "EvalResult",
    "Record",
    "evaluate_images",
    "evaluate_videos",
    "limit_per_group",
    "plot_sweep",
    "routing_sweep",
    "sweep_markdown",
]

#: Per-image PSNR ceiling in dB (an exact match would otherwise be ``inf``).
PSNR_CAP = 100.0
#: Metric names, in table order.
METRICS = ("psnr", "ssim", "psnr_y", "ssim_y")


class InputAsOutput(nn.Module):
    """The "no restoration" baseline: returns the degraded input (its first 3 channels), so the
    same evaluation gives the input's own PSNR / SSIM (``mofme test --input-baseline``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :3]


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _ExpertMeter:
    """Counts active experts per token over every forward pass of the FME layers.

    Reading the weights in a forward hook (rather than ``routing_weights()`` once at the end)
    counts every tile of a tiled restoration, not only the last one. Counts stay on the device
    until read, so timing is not disturbed by synchronisation.
    """

    def __init__(self, model: nn.Module) -> None:
        layers = getattr(model, "fme_layers", [])
        self._handles = [layer.register_forward_hook(self._hook) for layer in layers]
        self.reset()

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        weights = getattr(module, "last_weights", None)  # (B, N, E)
        if weights is None:
            return
        self._active.append((weights > 0).sum())
        self._tokens += weights.shape[0] * weights.shape[1]

    def reset(self) -> None:
        self._active: list[Tensor] = []
        self._tokens = 0

    def value(self) -> float | None:
        """Mean active experts per (layer, token) since the last ``reset``."""
        if not self._tokens:
            return None
        return float(torch.stack(self._active).sum()) / self._tokens

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> _ExpertMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_pair(
    input_path: Path, gt_path: Path, resize: tuple[int, int] | None
) -> tuple[Tensor, Tensor]:
    """Input and ground truth as ``(3, H, W)`` tensors, optionally resized to ``(W, H)``."""
    source, target = load_image(input_path), load_image(gt_path)
    if source.rgb.shape != target.rgb.shape:
        (h1, w1), (h2, w2) = source.rgb.shape[:2], target.rgb.shape[:2]
        raise MofmeError(
            f"size mismatch: {input_path} is {w1}x{h1} but its ground truth {gt_path} is {w2}x{h2}"
        )
    x, y = source.rgb, target.rgb
    if resize is not None:
        x = resize_rgb(x, resize, source.bit_depth)
        y = resize_rgb(y, resize, target.bit_depth)
    return to_tensor(x), to_tensor(y)


def _scores(out: Tensor, gt: Tensor) -> dict[str, float]:
    """PSNR / SSIM on RGB and Y of one image pair ``(1, 3, H, W)``; PSNR capped."""
    values = {
        "psnr": float(psnr(out, gt)[0]),
        "ssim": float(ssim(out, gt)[0]),
        "psnr_y": float(psnr(out, gt, y_channel=True)[0]),
        "ssim_y": float(ssim(out, gt, y_channel=True)[0]),
    }
    for key in ("psnr", "psnr_y"):
        values[key] = min(values[key], PSNR_CAP)
    return values


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


def _summarise(
    kind: str,
    records: list[Record],
    failed: list[dict[str, str]],
    model: nn.Module,
    flops_size: tuple[int, int] | None,
    meta: dict[str, Any],
) -> EvalResult:
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


def _skip(failed: list[dict[str, str]], path: Path, exc: Exception, strict: bool) -> None:
    if strict:
        raise exc
    failed.append({"path": str(path), "error": str(exc)})
    warnings.warn(f"skipped {path}: {exc}", stacklevel=3)


def _check_amp(amp: str) -> None:
    if amp not in tiling.AMP_MODES:
        raise MofmeError(f"unknown --amp {amp!r}; use one of {', '.join(tiling.AMP_MODES)}")


# -------------------------------------------------------------------------------- images


def evaluate_images(
    model: nn.Module,
    pairs: Sequence[Pair],
    resize: tuple[int, int] | None = None,
    tile: int | None = None,
    device: str | torch.device | None = None,
    amp: str = "none",
    save_dir: str | Path | None = None,
    progress: bool = True,
    strict: bool = False,
    overlap: int = 32,
    flops_size: tuple[int, int] | None = (240, 240),
    warmup: bool = True,
    official: bool = False,
) -> EvalResult:
    """Restore and score every pair; group the results by ``pair.group``.

    Args:
        model: ``MoFMENet`` (or any ``(B, C, H, W) -> (B, 3, H, W)`` module). A 6-channel video
            model gets an all-zero reference, i.e. every image is a first frame.
        pairs: from :func:`mofme.data.datasets.find_pairs`.
        resize: ``(width, height)`` applied to input and ground truth (bicubic), e.g.
            ``(720, 480)`` for the official protocol; ``None`` = full resolution.
        tile: tile side for tiled restoration (``None``: whole image), ``overlap`` pixels shared.
        device: where to run (default: the model's device; the model is moved there). The
            model runs in eval mode; its previous train/eval mode is restored afterwards.
        amp: ``"none"`` or ``"bf16"``.
        save_dir: write restored images to ``save_dir/<group>/<input stem>.png``.
        progress: show a progress bar.
        strict: raise on an unreadable image or size mismatch instead of skipping it (a
            skipped image is warned about and listed in ``EvalResult.failed``).
        flops_size: ``(H, W)`` at which GFLOPs are counted; ``None`` skips the count.
        warmup: run one untimed pass first so the first timing excludes start-up costs.
        official: restore like the official MoFME code instead (overlapping 240×240 crops,
            dense experts, fp32, overlaps averaged), to compare against our default path.
    """
    _check_amp(amp)

    def restore(inp: Tensor) -> Tensor:
        if official:
            return tiling.official_crops(model, inp)
        return tiling.restore_image(model, inp, tile=tile, overlap=overlap, amp=amp)

    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    reference = model_in_channels(model) == 6
    records: list[Record] = []
    failed: list[dict[str, str]] = []
    position: dict[str, int] = {}
    need_warmup = warmup

    with tiling.eval_mode(model), _ExpertMeter(model) as meter:
        for pair in tqdm(pairs, desc="test", unit="img", disable=not progress, leave=False):
            index = position.get(pair.group, 0)
            position[pair.group] = index + 1
            try:
                x, gt = _load_pair(Path(pair.input), Path(pair.gt), resize)
            except MofmeError as exc:
                _skip(failed, Path(pair.input), exc, strict)
                continue
            inp = x.unsqueeze(0).to(device)
            if reference:
                inp = torch.cat([inp, torch.zeros_like(inp)], dim=1)  # (1, 6, H, W)
            if need_warmup:
                restore(inp)
                need_warmup = False
            meter.reset()
            _sync(device)
            start = time.perf_counter()
            out = restore(inp)
            _sync(device)
            ms = 1000.0 * (time.perf_counter() - start)
            out = out.float().clamp(0.0, 1.0)
            try:
                scores = _scores(out, gt.unsqueeze(0).to(device))
            except MofmeError as exc:  # e.g. smaller than the SSIM window
                _skip(failed, Path(pair.input), MofmeError(f"{pair.input}: {exc}"), strict)
                continue
            records.append(
                Record(
                    pair.group, Path(pair.input).name, index, **scores, ms=ms,
                    active_experts=meter.value(), height=x.shape[1], width=x.shape[2],
                )
            )  # fmt: skip
            if save_dir is not None:
                dest = Path(save_dir) / pair.group / f"{Path(pair.input).stem}.png"
                save_image(dest, to_numpy(out))

    meta = {"resize": list(resize) if resize else None, "tile": tile, "amp": amp}
    meta["official_crops"] = official
    meta["device"] = str(device)
    return _summarise("images", records, failed, model, flops_size, meta)


# -------------------------------------------------------------------------------- videos


def evaluate_videos(
    model: nn.Module,
    videos: Sequence[VideoPair],
    tile: int | None = None,
    device: str | torch.device | None = None,
    amp: str = "none",
    save_dir: str | Path | None = None,
    progress: bool = True,
    strict: bool = False,
    resize: tuple[int, int] | None = None,
    overlap: int = 32,
    max_frames: int | None = None,
    flops_size: tuple[int, int] | None = (240, 240),
    warmup: bool = True,
) -> EvalResult:
    """Restore every video as a stream and score it frame by frame.

    Each video starts from an all-zero reference (``VideoRestorer.reset``); that first
    restored frame is counted under ``*_first``, the rest under ``*_other``. An unreadable
    frame is skipped (warned, listed in ``failed``) and the stream goes on with the last
    restored frame as reference; ``strict`` raises instead.

    Args:
        videos: from :func:`mofme.data.datasets.find_videos`.
        max_frames: evaluate only the first N frames of each video.
        Other arguments as in :func:`evaluate_images`.
    """
    _check_amp(amp)
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    restorer = VideoRestorer(model, tile=tile, overlap=overlap, amp=amp)
    records: list[Record] = []
    failed: list[dict[str, str]] = []
    need_warmup = warmup
    total = sum(len(v.snow_frames[:max_frames]) for v in videos)

    with (
        tiling.eval_mode(model),
        _ExpertMeter(model) as meter,
        tqdm(total=total, desc="test", unit="frame", disable=not progress, leave=False) as bar,
    ):
        for video in videos:
            restorer.reset()
            size: tuple[int, ...] | None = None
            frames = list(zip(video.snow_frames, video.clean_frames))[:max_frames]
            for index, (snow, clean) in enumerate(frames):
                bar.update(1)
                try:
                    x, gt = _load_pair(Path(snow), Path(clean), resize)
                    if size is not None and tuple(x.shape) != size:
                        raise MofmeError(
                            f"video {video.name}: frame {Path(snow).name} is "
                            f"{x.shape[2]}x{x.shape[1]}, other frames are {size[2]}x{size[1]}"
                        )
                except MofmeError as exc:
                    _skip(failed, Path(snow), exc, strict)
                    continue
                size = tuple(x.shape)
                frame = x.unsqueeze(0).to(device)
                if need_warmup:
                    restorer.step(frame)
                    restorer.reset()
                    need_warmup = False
                first = restorer.frames_done == 0
                meter.reset()
                _sync(device)
                start = time.perf_counter()
                out = restorer.step(frame)
                _sync(device)
                ms = 1000.0 * (time.perf_counter() - start)
                out = out.float().clamp(0.0, 1.0)
                try:
                    scores = _scores(out, gt.unsqueeze(0).to(device))
                except MofmeError as exc:
                    _skip(failed, Path(snow), MofmeError(f"{snow}: {exc}"), strict)
                    continue
                records.append(
                    Record(
                        video.name, Path(snow).name, index, **scores, ms=ms,
                        active_experts=meter.value(), height=x.shape[1], width=x.shape[2],
                        first_frame=first,
                    )
                )  # fmt: skip
                if save_dir is not None:
                    dest = Path(save_dir) / video.name / f"{Path(snow).stem}.png"
                    save_image(dest, to_numpy(out))

    meta = {"resize": list(resize) if resize else None, "tile": tile, "amp": amp}
    meta["device"] = str(device)
    meta["reference_frame"] = restorer.uses_reference
    return _summarise("video", records, failed, model, flops_size, meta)


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


def limit_per_group(pairs: Sequence[Pair], n: int | None) -> list[Pair]:
    """The first ``n`` pairs of every group (all of them when ``n`` is ``None``)."""
    if n is None:
        return list(pairs)
    seen: dict[str, int] = {}
    kept = []
    for pair in pairs:
        if seen.get(pair.group, 0) < n:
            kept.append(pair)
            seen[pair.group] = seen.get(pair.group, 0) + 1
    return kept
