"""A model on a test set, as ``mofme test`` runs it: find the data (Allweather layouts, a paired
folder, RVSD videos), load and prepare the model, evaluate it (:mod:`mofme.evaluate`), sharded
over the ranks under ``torchrun``, once per routing spec for a sweep, and with the degraded
inputs themselves as a baseline. The result holds the tables and the JSON payload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mofme.errors import MofmeError
from mofme.inference.options import InferenceOptions
from mofme.results import EvalResult

__all__ = ["DatasetReport", "DatasetRequest", "evaluate_dataset"]


@dataclass
class DatasetRequest:
    """What to evaluate and how (the data side; the inference side is ``InferenceOptions``)."""

    data: Path  # dataset root
    layout: str | None = None  # mofme | transweather | folder | rvsd; None: detected
    split: str | None = None  # comma-separated test sets (see mofme test --help)
    resize: tuple[int, int] | None = None  # (width, height) for input and ground truth
    max_images: int | None = None  # per test set (rvsd: frames per video)
    flops_size: tuple[int, int] | None = (240, 240)  # (H, W) for the GFLOPs count
    routings: list[str] = field(default_factory=list)  # two or more: a routing sweep
    official_crops: bool = False  # restore like the official code (image test sets)
    input_baseline: bool = False  # also score the degraded inputs themselves
    save_images: str | None = None  # folder for the restored images
    strict: bool = False  # stop at an unreadable image
    progress: bool = False
    source: str = ""  # how the model was given, for the meta data


@dataclass
class DatasetReport:
    """Tables and the JSON payload of an evaluation (``main``: this process reports)."""

    payload: dict[str, Any]
    result: EvalResult | None = None  # one routing
    sweep: list[dict[str, Any]] | None = None  # several routings: one row each
    results: list[EvalResult] = field(default_factory=list)  # per routing of the sweep
    baseline: EvalResult | None = None
    main: bool = True


def evaluate_dataset(
    request: DatasetRequest,
    load: Callable[[str, torch.device], nn.Module],
    options: InferenceOptions,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> DatasetReport:
    """Evaluate the model ``load(default, device)`` gives (``default``: ``"video"`` for RVSD
    data, else ``"image"``) on ``request.data``.

    The data is found before the model loads, so data errors come first. Only the precision
    of ``options`` is applied (no fast paths: the evaluation is the reference); with
    ``official_crops`` an ``auto`` precision is fp32, never probed.

    Raises:
        MofmeError: missing data, a layout that does not fit, a bad option combination.
    """
    from mofme.data.pairs import detect_layout, find_image_pairs, find_videos
    from mofme.evaluate import (
        InputAsOutput,
        evaluate_images,
        evaluate_videos,
        limit_per_group,
        routing_sweep,
    )
    from mofme.inference.distributed import init_ranks, merge_eval_results, prepare_on_ranks
    from mofme.inference.options import apply_precision_option

    root = Path(request.data)
    layout = request.layout or detect_layout(root)
    if request.official_crops and (layout == "rvsd" or options.tile != 0):
        raise MofmeError("--official-crops is for image test sets and replaces --tile")
    if layout == "rvsd":
        videos = find_videos(root, request.split or "test")
        items = f"{len(videos)} videos"
    else:
        pairs = limit_per_group(find_image_pairs(root, layout, request.split), request.max_images)
        groups = sorted({p.group for p in pairs})
        items = f"{len(pairs)} images in {len(groups)} test set(s)"

    # Under torchrun each rank evaluates its share of the images / videos (rank::world);
    # rank 0 merges the records into the one table a single process would print.
    ranks, device = init_ranks(device)
    model = load("video" if layout == "rvsd" else "image", device)
    # --official-crops is the fp32 reference: never probe or convert it.
    if request.official_crops and options.precision == "auto":
        options.precision = "fp32"
    chosen = prepare_on_ranks(
        lambda: apply_precision_option(model, options, device, log=log), options, ranks
    )
    if ranks.main:
        log(chosen.note)
        on = f"{device} x {ranks.world} ranks" if ranks.active else str(device)
        log(f"evaluating {request.source} on {root} ({layout}: {items}) on {on}")

    def run_once(save_dir: str | None = request.save_images, net: Any = model) -> EvalResult:
        common = dict(
            tile=options.tile or None,
            overlap=options.overlap,
            device=device,
            amp=options.amp,
            save_dir=save_dir,
            progress=request.progress,
            strict=request.strict,
            resize=request.resize,
            flops_size=request.flops_size,
        )
        if layout == "rvsd":
            shard = ranks.shard(videos)
            res = evaluate_videos(net, shard, max_frames=request.max_images, **common)
            order = [v.name for v in videos]
        else:
            official = request.official_crops and not isinstance(net, InputAsOutput)
            res = evaluate_images(net, ranks.shard(pairs), official=official, **common)
            order = [f"{p.group}/{Path(p.input).name}" for p in pairs]
        return merge_eval_results(ranks.gather(res), order, net) if ranks.active else res

    meta = {
        "source": request.source,
        "data": str(root),
        "layout": layout,
        "split": request.split,
        "max_images": request.max_images,
        "precision": chosen.name,
    }
    report = DatasetReport(payload={}, main=ranks.main)
    if request.input_baseline:
        report.baseline = run_once(save_dir=None, net=InputAsOutput())
    specs = request.routings
    if len(specs) <= 1:
        report.result = run_once()
        report.result.meta.update(meta)
        report.payload = report.result.to_dict()
    else:

        def sweep_run() -> EvalResult:
            # One image folder per routing, so the runs do not overwrite each other.
            spec = specs[len(report.results)]
            save = request.save_images
            res = run_once(save_dir=str(Path(save) / spec.replace(":", "_")) if save else None)
            res.meta.update(meta, routing_spec=spec)
            report.results.append(res)
            return res

        report.sweep = routing_sweep(model, specs, sweep_run)
        report.payload = {
            "meta": meta,
            "sweep": report.sweep,
            "results": {spec: r.to_dict() for spec, r in zip(specs, report.results)},
        }
    if report.baseline is not None:
        report.payload["input_baseline"] = report.baseline.to_dict()
    ranks.close()
    return report
