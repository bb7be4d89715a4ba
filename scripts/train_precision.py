"""Training throughput and loss curves, fp32 vs bf16 autocast, on this machine.

Runs the same short training twice through `mofme train` (same config, data, seed), once with
`train.amp=none` and once with `train.amp=bf16`, *at the same time* (one thread each), so a load
change on a shared machine slows both alike; then reads both `log.jsonl` files and writes a
table (samples/s, final loss) and the two loss curves side by side.

    python scripts/train_precision.py --config configs/bundled_image.yaml --data data/aw3 \
        --steps 300 --out docs/results/train_precision   # runs in runs/train_precision
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

MODES = ("none", "bf16")


def run(config: str, data: str, steps: int, out: Path, threads: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for amp in MODES:
        run_dir = out / f"run_{amp}"
        cmd = [
            sys.executable, "-m", "mofme.cli", "train", config, "--overwrite", "--no-progress",
            "--out", str(run_dir), "--steps", str(steps),
            "--set", f"data.root={data}", "--set", f"train.amp={amp}",
            "--set", f"train.threads={threads}", "--set", "train.val_every=0",
            "--set", "train.log_every=10", "--set", f"train.ckpt_every={steps}",
        ]  # fmt: skip
        log = open(out / f"run_{amp}.out", "w")  # noqa: SIM115 (closed below)
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log, amp))
    failed = []
    for proc, log, amp in procs:
        if proc.wait() != 0:
            failed.append(amp)
        log.close()
    if failed:
        raise SystemExit(f"training failed for amp={failed}: see {out}/run_<amp>.out")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(out: Path, batch: int) -> dict:
    rows = {}
    for amp in MODES:
        recs = read_log(out / f"run_{amp}" / "log.jsonl")
        # steps_per_s is the rate over each logging window; skip the first (start-up).
        rates = [r["steps_per_s"] for r in recs[1:]] or [recs[-1]["steps_per_s"]]
        rows[amp] = {
            "samples_per_s_median": round(statistics.median(rates) * batch, 3),
            "samples_per_s_min": round(min(rates) * batch, 3),
            "samples_per_s_max": round(max(rates) * batch, 3),
            "loss_last50_mean": round(statistics.mean(r["loss"] for r in recs[-5:]), 6),
            "steps": [r["step"] for r in recs],
            "loss": [r["loss"] for r in recs],
        }
    rows["bf16_vs_fp32"] = round(
        rows["bf16"]["samples_per_s_median"] / rows["none"]["samples_per_s_median"], 3
    )
    return rows


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, amp in zip(axes, MODES):
        r = rows[amp]
        label = "fp32" if amp == "none" else "bf16 autocast"
        ax.plot(r["steps"], r["loss"], lw=1.2)
        ax.set_title(f"{label}: {r['samples_per_s_median']:.1f} samples/s")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss (smooth L1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/bundled_image.yaml")
    ap.add_argument("--data", default="data/aw3")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="the config's train.batch_size")
    ap.add_argument("--out", default="docs/results/train_precision", help="table, plot, JSON")
    ap.add_argument("--runs", default="runs/train_precision", help="the two training runs")
    ap.add_argument("--summarise-only", action="store_true", help="read existing logs only")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs)
    if not args.summarise_only:
        run(args.config, args.data, args.steps, runs, args.threads)
    rows = summarise(runs, args.batch)
    plot(rows, out / "loss_curves.png")
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    print("| training precision | samples/s (median, min-max) | loss, last 50 steps |")
    print("|---|--:|--:|")
    for amp in MODES:
        r = rows[amp]
        name = "fp32" if amp == "none" else "bf16 autocast"
        print(
            f"| {name} | {r['samples_per_s_median']:.2f} ({r['samples_per_s_min']:.2f}-"
            f"{r['samples_per_s_max']:.2f}) | {r['loss_last50_mean']:.5f} |"
        )
    print(f"bf16 / fp32 samples/s: {rows['bf16_vs_fp32']:.2f}x  (cpu: {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
