"""End-to-end showcase on the bundled weights and package-shipped photos (``mofme demo``).

Makes one weathered image per weather type and a short snowy clip from scikit-image's bundled
photos (seeds disjoint from the ones the bundled weights were trained on), restores them,
and writes side-by-side pictures, an MP4, a routing plot and an HTML + Markdown summary.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from mofme.data.clips import camera_clip
from mofme.data.content import clean_sources, random_view
from mofme.data.io import atomic_write, save_image, to_uint8
from mofme.data.weather import CLEAN, WEATHER_TYPES, apply_weather, snow_video
from mofme.inference.tiling import restore_image
from mofme.inference.video import VideoRestorer
from mofme.inference.videoio import VideoWriter
from mofme.metrics import psnr, ssim
from mofme.model.analysis import mean_active_experts
from mofme.model.net import MoFMENet
from mofme.stats import RoutingStats, plot_top8

DEMO_WEATHER = (*WEATHER_TYPES, "snow_haze", CLEAN)
"""Every single weather type, one composite, and a clean photo (do no harm: it should come back
unchanged)."""

# Seeds >= 10_000 are never used by the training data of the bundled weights (see README).
DEMO_SEED = 10_000
LABEL_H = 18


@dataclass
class DemoResult:
    out: Path
    images: list[dict[str, Any]] = field(default_factory=list)
    video: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def _t(img: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` -> ``(1, 3, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0).float()


def _np(t: torch.Tensor) -> np.ndarray:
    return t[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _active(model: MoFMENet) -> float:
    return mean_active_experts(model.routing_weights())


def side_by_side(panels: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """Panels ``(H, W, 3)`` in [0, 1] next to each other with a caption strip above each."""
    h, w = panels[0].shape[:2]
    sheet = Image.new("RGB", (w * len(panels), h + LABEL_H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (p, label) in enumerate(zip(panels, labels)):
        sheet.paste(Image.fromarray(to_uint8(p)), (i * w, LABEL_H))
        draw.text((i * w + 4, 3), label, fill=(0, 0, 0))
    return np.asarray(sheet, dtype=np.float32) / 255.0


def _scores(degraded: np.ndarray, restored: torch.Tensor, clean: np.ndarray) -> dict[str, float]:
    """PSNR / SSIM of the degraded input (``*_in``) and of the restored output (``*_out``)."""
    gt, scores = _t(clean), {}
    for side, pred in (("in", _t(degraded)), ("out", restored.cpu())):
        scores[f"psnr_{side}"] = float(psnr(pred, gt)[0])
        scores[f"ssim_{side}"] = float(ssim(pred, gt)[0])
    return scores


def run_demo(
    image_model: MoFMENet,
    video_model: MoFMENet,
    out: Path,
    size_hw: tuple[int, int] = (192, 256),
    frames: int = 16,
    seed: int = DEMO_SEED,
    progress: bool = True,
) -> DemoResult:
    """Run the whole showcase and write its files under ``out``."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    res = DemoResult(out=out)
    photos = clean_sources()
    say = print if progress else (lambda *a, **k: None)

    # --- images: one per weather type -------------------------------------------------------
    say(
        f"restoring {len(DEMO_WEATHER)} images ({size_hw[0]}x{size_hw[1]}; held-out photos the "
        "bundled weights never trained on; the last one is clean) ..."
    )
    for i, name in enumerate(DEMO_WEATHER):
        rng = np.random.default_rng([seed, i])
        clean = random_view(photos[i % len(photos)], size_hw, rng)
        degraded = apply_weather(name, clean, rng, "medium")
        restored = restore_image(image_model, _t(degraded))
        active = _active(image_model)
        s = _scores(degraded, restored, clean)
        sheet = side_by_side(
            [degraded, _np(restored), clean],
            [f"{name} {s['psnr_in']:.2f} dB", f"mofme {s['psnr_out']:.2f} dB", "clean"],
        )
        path = out / "images" / f"{name}.png"
        save_image(path, sheet)
        file = str(path.relative_to(out))
        res.images.append(dict(type=name, **s, active_experts=active, file=file))
        say(
            f"  {name:<9} PSNR {s['psnr_in']:6.2f} -> {s['psnr_out']:6.2f} dB   "
            f"SSIM {s['ssim_in']:.3f} -> {s['ssim_out']:.3f}   active experts {active:.2f}"
        )

    # --- snowy clip with the reference-frame model ------------------------------------------
    say(f"restoring a {frames}-frame snowy clip with the reference-frame video model ...")
    rng = np.random.default_rng([seed, 99])
    clean_clip = camera_clip(photos[1 % len(photos)], frames, size_hw, rng)
    snowy_clip = snow_video(clean_clip, rng, "medium")
    restorer = VideoRestorer(video_model)
    stats = RoutingStats()
    per_frame = []
    video_path = out / "snowy_clip_restored.mp4"
    with VideoWriter(video_path, fps=8, overwrite=True) as writer:
        for t, (snowy, clean) in enumerate(zip(snowy_clip, clean_clip)):
            restored = restorer.step(_t(snowy))
            stats.add(video_model.routing_weights(), "first" if t == 0 else "other", "all")
            per_frame.append(dict(frame=t, **_scores(snowy, restored, clean)))
            panel = side_by_side([snowy, _np(restored), clean], ["snowy", "mofme", "clean"])
            writer.write(panel)
            if t == frames // 2:
                save_image(out / "images" / "video_frame.png", panel)
    summary = stats.summary()
    plot_top8(summary, out / "routing_top8.png")
    groups = summary["groups"]
    res.video = dict(
        frames=frames,
        psnr_in=float(np.mean([f["psnr_in"] for f in per_frame])),
        psnr_out=float(np.mean([f["psnr_out"] for f in per_frame])),
        ssim_in=float(np.mean([f["ssim_in"] for f in per_frame])),
        ssim_out=float(np.mean([f["ssim_out"] for f in per_frame])),
        psnr_out_first=per_frame[0]["psnr_out"],
        psnr_out_other=float(np.mean([f["psnr_out"] for f in per_frame[1:]]))
        if frames > 1
        else None,
        active_first=groups["first"]["mean"]["mean_active"],
        active_other=groups["other"]["mean"]["mean_active"] if "other" in groups else None,
        per_frame=per_frame,
    )
    v = res.video
    say(
        f"  video     PSNR {v['psnr_in']:6.2f} -> {v['psnr_out']:6.2f} dB   "
        f"SSIM {v['ssim_in']:.3f} -> {v['ssim_out']:.3f}"
    )

    res.seconds = time.perf_counter() - start
    res.files = {
        "summary_html": out / "summary.html",
        "summary_md": out / "summary.md",
        "results_json": out / "results.json",
        "video": video_path,
        "routing_plot": out / "routing_top8.png",
        "images": out / "images",
    }
    meta = dict(
        image_routing=image_model.cfg.routing.describe(),
        video_routing=video_model.cfg.routing.describe(),
        seconds=res.seconds,
    )
    md = _markdown(res, meta)
    atomic_write(out / "summary.md", lambda p: Path(p).write_text(md))
    page = _html(res, meta)
    atomic_write(out / "summary.html", lambda p: Path(p).write_text(page))
    payload = json.dumps(dict(images=res.images, video=res.video, meta=meta), indent=2)
    atomic_write(out / "results.json", lambda p: Path(p).write_text(payload))
    return res


def _markdown(res: DemoResult, meta: dict[str, Any]) -> str:
    lines = [
        "# mofme demo",
        "",
        f"Image model routing `{meta['image_routing']}`, video model routing "
        f"`{meta['video_routing']}`; {meta['seconds']:.0f} s.",
        "",
        "| weather | PSNR in | PSNR out | SSIM in | SSIM out | active experts | picture |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res.images:
        lines.append(
            f"| {r['type']} | {r['psnr_in']:.2f} | {r['psnr_out']:.2f} | {r['ssim_in']:.3f} | "
            f"{r['ssim_out']:.3f} | {r['active_experts']:.2f} | ![]({r['file']}) |"
        )
    v = res.video
    lines += [
        f"| snowy video ({v['frames']} frames) | {v['psnr_in']:.2f} | {v['psnr_out']:.2f} | "
        f"{v['ssim_in']:.3f} | {v['ssim_out']:.3f} | first {v['active_first']:.2f}"
        + (f" / other {v['active_other']:.2f}" if v["active_other"] is not None else "")
        + " | [snowy_clip_restored.mp4](snowy_clip_restored.mp4) |",
        "",
        "Routing of the video model (top-8 experts by mean weight, first frame vs other frames):",
        "",
        "![](routing_top8.png)",
        "",
    ]
    return "\n".join(lines)


def _html(res: DemoResult, meta: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r['type'])}</td><td>{r['psnr_in']:.2f}</td><td>{r['psnr_out']:.2f}</td>"
        f"<td>{r['ssim_in']:.3f}</td><td>{r['ssim_out']:.3f}</td><td>{r['active_experts']:.2f}</td>"
        f"<td><img src='{html.escape(r['file'])}' width='600'></td></tr>"
        for r in res.images
    )
    v = res.video
    return (
        "<!doctype html><meta charset='utf-8'><title>mofme demo</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 8px;border-bottom:1px solid #ddd}</style>"
        f"<h1>mofme demo</h1><p>Image routing <code>{meta['image_routing']}</code>, video routing "
        f"<code>{meta['video_routing']}</code>; {meta['seconds']:.0f} s.</p>"
        "<table><tr><th>weather</th><th>PSNR in</th><th>PSNR out</th><th>SSIM in</th>"
        f"<th>SSIM out</th><th>active experts</th><th>input | mofme | clean</th></tr>{rows}</table>"
        f"<h2>Snowy video ({v['frames']} frames)</h2><p>PSNR {v['psnr_in']:.2f} → {v['psnr_out']:.2f} dB, "
        f"SSIM {v['ssim_in']:.3f} → {v['ssim_out']:.3f}</p>"
        "<video src='snowy_clip_restored.mp4' controls loop autoplay muted></video>"
        "<p><img src='images/video_frame.png' width='600'></p>"
        "<h2>Routing</h2><img src='routing_top8.png' width='700'>"
    )
