"""Turn a finished training run into a bundled checkpoint with a model card.

The card (checkpoint metadata ``extra["card"]``, printed by ``mofme info CKPT``) records how the
model was trained (data, crop, steps) and what it measured on the held-out benchmark, and the
inference setting ``--tile auto`` uses: the cheapest of whole image / 384 / 256 / 192 / 128-pixel
tiles whose PSNR on the benchmark's weather sets is within 0.05 dB of the official-style 240x240
crops (or better).

    python scripts/bundle.py runs/bundled_image --bench data/bench \
        --out src/mofme/weights/mofme_tiny_allweather.safetensors
    python scripts/bundle.py runs/bundled_video --bench data/bench \
        --out src/mofme/weights/mofme_tiny_video.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import speck_check  # scripts/speck_check.py (this folder is on sys.path when run as a script)
import torch

from mofme.checkpoint import load, read_metadata, save
from mofme.data.pairs import find_pairs, find_videos
from mofme.evaluate import InputAsOutput, evaluate_images, evaluate_videos, limit_per_group
from mofme.results import severity_gains

TOLERANCE_DB = 0.05
CANDIDATES = (0, 384, 256, 192, 128)  # 0 = whole image; cheapest first on CPU


def _mean_psnr(result: Any) -> float:
    return float(sum(r["psnr"] for r in result.rows) / len(result.rows))


def choose_tile(model: torch.nn.Module, bench: Path, per_set: int) -> dict[str, Any]:
    pairs = [p for p in find_pairs(bench / "images", "mofme", "test") if p.group != "clean"]
    pairs = limit_per_group(pairs, per_set)
    official = _mean_psnr(evaluate_images(model, pairs, official=True, progress=False))
    measured: dict[str, float] = {"official_240": round(official, 4)}
    chosen = None
    for tile in CANDIDATES:
        t0 = time.perf_counter()
        psnr = _mean_psnr(evaluate_images(model, pairs, tile=tile or None, progress=False))
        measured[str(tile or "whole")] = round(psnr, 4)
        measured[f"{tile or 'whole'}_seconds"] = round(time.perf_counter() - t0, 2)
        if psnr >= official - TOLERANCE_DB:
            chosen = tile
            break
    if chosen is None:  # none within tolerance: take the best measured
        best = max(CANDIDATES, key=lambda t: measured.get(str(t or "whole"), -1e9))
        chosen = best
    return {"tile": chosen, "overlap": 32, "tolerance_db": TOLERANCE_DB, "measured": measured,
            "images": len(pairs)}  # fmt: skip


def held_out(
    model: torch.nn.Module, bench: Path, kind: str, tile: int, per_set: int | None = None
) -> dict[str, Any]:
    if kind == "video":
        out = {}
        for sub in ("video", "video_clean"):
            videos = find_videos(bench / sub, "test")
            base = evaluate_videos(InputAsOutput(), videos, progress=False, flops_size=None)
            specks = speck_check.Specks()
            res = evaluate_videos(model, videos, progress=False, observers=[specks])
            out[sub] = {"input_psnr": round(base.average["psnr"], 2),
                        "psnr": round(res.average["psnr"], 2),
                        "ssim": round(res.average["ssim"], 4)}  # fmt: skip
            if sub == "video":
                out[sub]["dark_specks_per_1000px"] = round(specks.summary()["specks"], 2)
        return out
    pairs = limit_per_group(find_pairs(bench / "images", "mofme", "test"), per_set)
    base = {
        r["name"]: r["psnr"] for r in evaluate_images(InputAsOutput(), pairs, progress=False).rows
    }
    res = {r["name"]: r["psnr"] for r in evaluate_images(
        model, pairs, tile=tile or None, progress=False).rows}  # fmt: skip
    gains = severity_gains(res, base)
    return {"clean_psnr": round(res["clean"], 2) if "clean" in res else None,
            **{f"mean_gain_{k}": round(g["mean"], 2) for k, g in gains.items()},
            **{f"min_gain_{k}": round(g["worst"], 2) for k, g in gains.items()}}  # fmt: skip


def _data_meta(cfg: dict[str, Any]) -> dict[str, Any]:
    meta_path = Path(cfg.get("data", {}).get("root", "")) / "meta.json"
    if not meta_path.is_file():
        return {}
    m = json.loads(meta_path.read_text())
    return {k: m.get(k) for k in ("kind", "seed", "size_hw", "n_train", "n_test",
                                  "identity_share", "content")}  # fmt: skip


def _run_seconds(run: Path) -> float | None:
    log_path = run / "log.jsonl"
    if not log_path.is_file():
        return None
    log = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    return max((e.get("elapsed_s", e.get("time", 0)) or 0) for e in log) if log else None


def _previous_stages(init: str | None) -> list[dict[str, Any]]:
    """The chain of runs a continued run started from, newest first: each one's data, crop,
    steps and training time, from its model card or, for a checkpoint never bundled, from the
    training config and run folder it records."""
    stages: list[dict[str, Any]] = []
    while init and Path(init).is_file() and len(stages) < 16:
        extra = read_metadata(init)["extra"]  # the header only: no model is built
        card, cfg = extra.get("card"), extra.get("train_config", {})
        if card:
            stage = {k: card.get(k) for k in ("trained_on", "crop", "steps", "train_seconds")}
        else:
            run = Path(cfg.get("out", ""))
            stage = {"trained_on": _data_meta(cfg), "crop": cfg.get("data", {}).get("crop"),
                     "steps": cfg.get("train", {}).get("steps"),
                     "train_seconds": _run_seconds(run) if run.is_dir() else None}  # fmt: skip
        stages.append({"init": str(init), **stage})
        if card and card.get("previous_stages"):
            stages += card["previous_stages"]
            break
        if card and card.get("previous_stage"):  # cards written before the chain was kept
            stages.append(card["previous_stage"])
            break
        init = cfg.get("train", {}).get("init")
    return stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="training run folder (model_last.safetensors)")
    ap.add_argument("--bench", type=Path, required=True, help="folder from `mofme synth bench`")
    ap.add_argument("--out", type=Path, required=True, help="bundled checkpoint to write")
    ap.add_argument("--per-set", type=int, default=3, help="images per set for the tile choice")
    ap.add_argument(
        "--held-out-per-set", type=int, default=None, help="images per set for the card's metrics"
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load(args.run / "model_last.safetensors")
    extra = dict(getattr(model, "extra", {}))
    cfg = extra.get("train_config", {})
    kind = extra.get("kind", "image")
    # A weight soup (scripts/soup.py) has no log of its own: its first part's run has.
    data_meta = _data_meta(cfg)
    seconds = _run_seconds(args.run) or _run_seconds(Path(cfg.get("out", "")))
    inference = (
        {"tile": 0, "note": "video clips are scored whole-frame"}
        if kind == "video"
        else choose_tile(model, args.bench, args.per_set)
    )
    train_cfg = cfg.get("train", {})
    card = {
        "kind": kind,
        "trained_on": data_meta,
        "crop": cfg.get("data", {}).get("crop"),
        "steps": model.step,
        "batch_size": train_cfg.get("batch_size"),
        "speck_weight": train_cfg.get("speck_weight", 0.0),
        "smooth_l1_beta": train_cfg.get("smooth_l1_beta", 1.0),
        "weather_weight": train_cfg.get("weather_weight", 0.0),
        "weather_mask": train_cfg.get("weather_mask", "any"),
        "train_seconds": seconds,
        "held_out_photos": "scikit-image astronaut, chelsea, coffee, rocket, motorcycle",
        "held_out": held_out(model, args.bench, kind, inference["tile"], args.held_out_per_set),
        "inference": inference,
    }
    if extra.get("soup"):
        card["soup"] = extra["soup"]
    stages = _previous_stages(train_cfg.get("init"))
    if stages:  # a continued run: keep what every earlier stage cost
        card["previous_stages"] = stages
        card["total_train_seconds"] = round(
            (seconds or 0) + sum(st.get("train_seconds") or 0 for st in stages), 1
        )
    save(model, args.out, model.step, extra={**extra, "card": card})
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
