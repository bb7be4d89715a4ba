"""Model-size and crop-size pilot for the bundled image model: equal wall-clock budgets.

Each variant of ``configs/bundled_image.yaml`` (a wider token dimension, a wider full-resolution
conv head and tail, smaller training crops) is trained from scratch for the same compute: the
bundled variant gets ``--steps``, every other variant that many times its speed ratio to it
(one training step — forward and backward of a batch at the variant's crop — timed in this
process, variants alternating, so a loaded machine slows them all alike). Then each is scored
on the held-out benchmark (``mofme synth bench``: photos no training set uses), whole images,
one image per set: mean gain at light, medium and heavy severity, and clean photos (do no
harm). Lanes run side by side (one core each).

    python scripts/size_pilot.py --data data/aw4 --bench data/bench --steps 500 \
        --out docs/results/size_pilot --lanes 2

Writes ``OUT.md`` and ``OUT.json``; runs go to ``runs/pilot_<variant>``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import selection  # scripts/selection.py: the same scoring (the script's folder is on sys.path)
import torch

from mofme.checkpoint import load
from mofme.data.pairs import find_pairs
from mofme.model.net import MoFMENet

BASE = "configs/bundled_image.yaml"
SEVERITIES = ("light", "medium", "heavy")
BUNDLED = "dim64-crop128 (bundled)"
VARIANTS: dict[str, list[str]] = {
    "dim64-crop128 (bundled)": [],
    "dim64-crop96": ["data.crop=96"],
    "dim96-crop128": ["model.dim=96"],
    "dim64-head32-crop128": ["model.head_channels=32", "model.unpatch_channels=48"],
}


def _slug(name: str) -> str:
    return name.split(" ")[0]


def _train(data: str, sets: list[str], steps: int, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "mofme.cli", "train", BASE, "--overwrite", "--no-progress",
        "--out", str(out), "--steps", str(steps),
        "--set", f"data.root={data}", "--set", "train.val_every=0",
        "--set", f"train.ckpt_every={max(steps, 1)}", "--set", "train.tensorboard=false",
        "--set", "train.warmup_steps=" + str(min(100, max(1, steps // 10))),
    ]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "steps": steps, "steps_per_s": log[-1].get("steps_per_s")}


def step_seconds(names: list[str], rounds: int = 3, iters: int = 4) -> dict[str, float]:
    """Median seconds of one training step per variant (batch 8 at its crop, forward, L1 loss,
    backward), the variants alternating round by round."""
    from mofme.training.config import load_config

    setups = {}
    for name in names:
        run = load_config(BASE, VARIANTS[name])
        model = MoFMENet(run.model)
        x = torch.rand(run.train.batch_size, 3, run.data.crop, run.data.crop)
        setups[name] = (model, x)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for name, (model, x) in setups.items():
            model.zero_grad(set_to_none=True)
            (model(x) - x).abs().mean().backward()  # warm-up
            t0 = time.perf_counter()
            for _ in range(iters):
                model.zero_grad(set_to_none=True)
                (model(x) - x).abs().mean().backward()
            times[name].append((time.perf_counter() - t0) / iters)
    return {n: float(np.median(t)) for n, t in times.items()}


def run_variant(name: str, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    out = Path("runs") / f"pilot_{_slug(name)}"
    run = _train(args.data, VARIANTS[name], steps, out)
    score_ = score(out / "model_last.safetensors", args.bench)
    return {"variant": name, "overrides": VARIANTS[name], **run, **score_}


def score(ckpt: Path, bench: Path) -> dict[str, Any]:
    """Held-out benchmark, the first image of every set (scripts/selection.py's scoring)."""
    model = load(ckpt)
    firsts: dict[str, Any] = {}
    for p in find_pairs(bench / "images", "mofme", "test"):
        firsts.setdefault(p.group, p)
    pairs = list(firsts.values())
    r = selection.score(model, pairs, selection.input_psnrs(pairs))
    return {"params": sum(p.numel() for p in model.parameters()), "clean_psnr": r.pop("clean"), **r}


def markdown(rows: list[dict[str, Any]], base_steps: int) -> str:
    lines = [
        f"Equal compute: {base_steps} steps of the bundled variant, the others that many times "
        "its speed ratio (one step timed in one process, variants alternating); from scratch on "
        "the same data; held-out benchmark, one image per set, whole images.",
        "",
        "| variant | params | s/step | steps | clean PSNR | gain light (worst) | gain medium (worst) "
        "| gain heavy (worst) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = {sev: f"{r[f'gain_{sev}']:+.2f} ({r[f'worst_{sev}']:+.2f})" for sev in SEVERITIES}
        clean = "∞" if math.isinf(r["clean_psnr"]) else f"{r['clean_psnr']:.2f}"
        lines.append(
            f"| {r['variant']} | {r['params'] / 1e6:.2f} M | {r['step_seconds']:.3f} | "
            f"{r['steps']} | {clean} | "
            f"{g['light']} | {g['medium']} | {g['heavy']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/aw4", help="training data (mofme layout)")
    ap.add_argument("--bench", type=Path, default=Path("data/bench"))
    ap.add_argument("--steps", type=int, default=500, help="steps of the bundled variant")
    ap.add_argument("--lanes", type=int, default=2, help="variants trained at once")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("docs/results/size_pilot"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = list(dict.fromkeys([BUNDLED, *args.variants]))
    secs = step_seconds(names)
    steps = {n: max(1, round(args.steps * secs[BUNDLED] / secs[n])) for n in names}
    print("seconds per step:", {n: round(t, 3) for n, t in secs.items()}, flush=True)
    with ThreadPoolExecutor(args.lanes) as pool:
        rows = list(pool.map(lambda v: run_variant(v, steps[v], args), args.variants))
    for r in rows:
        r["step_seconds"] = secs[r["variant"]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=float))
    md = markdown(rows, args.steps)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
