"""What routing buys end to end: the experts' share of a whole frame's time and FLOPs.

For a model (a checkpoint, `video` / `image` for the bundled weights, or a preset built with
random weights) at one frame size, and for each routing (default top-4, top-p 0.6, dense):
the whole-frame time, the time spent inside the expert stage (`ModulationExperts` of every
FME layer, timed with forward hooks), the FLOPs of both (PyTorch's FLOP counter,
`mofme.model.analysis.count_flops`), and the mean active experts. Routings alternate inside
every round (order reversed on odd rounds) so a load change hits all alike; medians are shown.

    python scripts/expert_share.py video --size 480x720 --rounds 5 --json docs/results/expert_share.json
    python scripts/expert_share.py --preset paper --experts 16 --in-channels 6 --size 480x720

A preset with random weights has an untrained router: its top-p active count says nothing about
a trained model, so top-p rows are shown for checkpoints only unless --routings names them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from mofme.model.analysis import count_flops, mean_active_experts
from mofme.model.moe import ModulationExperts


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    if args.preset:
        from mofme.model.config import get_preset
        from mofme.model.net import MoFMENet

        over = {"num_experts": args.experts, "in_channels": args.in_channels}
        cfg = get_preset(args.preset, **{k: v for k, v in over.items() if v})
        torch.manual_seed(0)
        return MoFMENet(cfg).eval(), f"preset {args.preset} (random weights)"
    import mofme

    return mofme.load(args.model, device="cpu").model.eval(), args.model


def frame_input(model: torch.nn.Module, h: int, w: int) -> torch.Tensor:
    """A natural-looking input: a held-out photo resized to the frame (and itself as reference)."""
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.coffee()).resize((w, h), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    c = model.cfg.in_channels
    return torch.cat([x] * (c // 3), 1) if c > 3 else x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="video", help="checkpoint, or image / video")
    ap.add_argument("--preset", help="build this preset with random weights instead")
    ap.add_argument("--experts", type=int, help="with --preset: number of experts")
    ap.add_argument("--in-channels", type=int, help="with --preset: 3, or 6 for a reference")
    ap.add_argument("--size", default="480x720")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--routings", help="comma list (default topk:4,topp:0.6,dense)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    model, name = load_model(args)
    routings = (args.routings or "topk:4,topp:0.6,dense").split(",")
    if args.preset and not args.routings:
        routings = [r for r in routings if not r.startswith("topp")]
    x = frame_input(model, h, w)

    spent: list[float] = []
    starts: dict[int, float] = {}

    def pre(mod: torch.nn.Module, _inp: object) -> None:
        starts[id(mod)] = time.perf_counter()

    def post(mod: torch.nn.Module, _inp: object, _out: object) -> None:
        spent.append(time.perf_counter() - starts.pop(id(mod)))

    hooks = []
    for mod in model.modules():
        if isinstance(mod, ModulationExperts):
            hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]

    times: dict[str, list[float]] = {r: [] for r in routings}
    expert_times: dict[str, list[float]] = {r: [] for r in routings}
    actives: dict[str, float] = {}
    with torch.inference_mode():
        model.set_routing(routings[0])
        model(x)  # warm-up (allocations, kernels)
        for rnd in range(args.rounds):
            order = routings if rnd % 2 == 0 else routings[::-1]
            for r in order:
                model.set_routing(r)
                spent.clear()
                t0 = time.perf_counter()
                model(x)
                times[r].append(time.perf_counter() - t0)
                expert_times[r].append(sum(spent))
                # On x itself (count_flops below runs a random input).
                actives[r] = mean_active_experts(model.routing_weights())
    for hk in hooks:
        hk.remove()

    rows = []
    for r in routings:
        model.set_routing(r)
        fl = count_flops(model, (h, w))
        active = actives[r]
        t = statistics.median(times[r])
        te = statistics.median(expert_times[r])
        rows.append(
            {
                "routing": r,
                "frame_ms": round(1000 * t, 1),
                "experts_ms": round(1000 * te, 1),
                "experts_time_share": round(te / t, 4),
                "gflops": round(fl.total / 1e9, 3),
                "experts_gflops": round(fl.parts["experts"] / 1e9, 3),
                "experts_flop_share": round(fl.parts["experts"] / fl.total, 4),
                "mean_active_experts": round(active, 2),
            }
        )
    base = next((row for row in rows if row["routing"] == "dense"), rows[0])
    for row in rows:
        row["frame_speedup_vs_" + base["routing"]] = round(base["frame_ms"] / row["frame_ms"], 3)
    print(f"{name}, {h}x{w}, {args.rounds} alternating rounds, threads {torch.get_num_threads()}")
    print(
        "| routing | active experts | frame ms | expert stage ms | expert share of time "
        "| GFLOPs | expert share of FLOPs | frame speed-up vs dense |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        print(
            f"| {row['routing']} | {row['mean_active_experts']:.2f} | {row['frame_ms']:.0f} | "
            f"{row['experts_ms']:.0f} | {100 * row['experts_time_share']:.1f} % | "
            f"{row['gflops']:.1f} | {100 * row['experts_flop_share']:.1f} % | "
            f"{row['frame_speedup_vs_' + base['routing']]:.2f}x |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"model": name, "size": [h, w], "rounds": args.rounds}
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
