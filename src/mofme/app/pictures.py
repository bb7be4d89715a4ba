"""What the page shows: routing-map overlays, their HTML legends, and the result tables."""

from __future__ import annotations

import functools
import html

import numpy as np

from mofme.app.restore import ImageResult, RoutingMaps, VideoReport


@functools.lru_cache(maxsize=8)
def expert_palette(num_experts: int) -> np.ndarray:
    """``(E, 3)`` uint8 colours, distinct for neighbouring expert ids (tab10 / tab20 / hsv)."""
    from matplotlib import colormaps

    if num_experts <= 10:
        colours = colormaps["tab10"](np.arange(num_experts))
    elif num_experts <= 20:
        # tab20 pairs a dark and a light shade; order all darks first so 0..9 stay distinct.
        order = [*range(0, 20, 2), *range(1, 20, 2)][:num_experts]
        colours = colormaps["tab20"](np.array(order))
    else:
        colours = colormaps["hsv"](np.linspace(0, 1, num_experts, endpoint=False))
    return (colours[:, :3] * 255 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def count_palette(num_experts: int) -> np.ndarray:
    """``(E + 1, 3)`` uint8 colours for 0..E active experts (viridis, light = more)."""
    from matplotlib import colormaps

    levels = np.linspace(0.0, 1.0, num_experts) if num_experts > 1 else np.array([0.5])
    colours = colormaps["viridis"](levels)[:, :3]
    return (np.concatenate([np.zeros((1, 3)), colours]) * 255 + 0.5).astype(np.uint8)


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels where the label differs from the right or lower neighbour (region outlines)."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[:-1, :] |= labels[1:, :] != labels[:-1, :]
    return edge


def overlay(
    photo: np.ndarray, labels: np.ndarray, palette: np.ndarray, opacity: float
) -> np.ndarray:
    """Colour ``labels`` ``(h, w)`` over a desaturated ``photo`` ``(h, w, 3)`` uint8, with thin
    dark outlines between regions so that token boundaries read clearly."""
    grey = photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    base = np.repeat(grey[..., None], 3, axis=2)
    colour = palette[np.clip(labels, 0, len(palette) - 1)].astype(np.float32)
    out = (1.0 - opacity) * base + opacity * colour
    out[labels < 0] = base[labels < 0]
    out[_edges(labels)] *= 0.55
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _hex(rgb: np.ndarray) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def expert_legend(maps: RoutingMaps, layer: int) -> str:
    """HTML legend: one swatch per expert with the share of tokens choosing it first, and the
    share of tokens using it at all (as a bar)."""
    palette = expert_palette(maps.num_experts)
    rows = []
    for e in range(maps.num_experts):
        first = maps.top1_share[layer][e]
        used = maps.active_share[layer][e]
        rows.append(
            f'<div class="mofme-leg-row"><span class="mofme-swatch" '
            f'style="background:{_hex(palette[e])}"></span>'
            f'<span class="mofme-leg-name">expert {e}</span>'
            f'<span class="mofme-bar"><span style="width:{100 * used:.1f}%;'
            f'background:{_hex(palette[e])}"></span></span>'
            f'<span class="mofme-leg-num" title="tokens choosing it first">{100 * first:.0f}%'
            f'</span><span class="mofme-leg-num mofme-dim" title="tokens using it">'
            f"{100 * used:.0f}%</span></div>"
        )
    head = (
        '<div class="mofme-leg-row mofme-leg-head"><span></span>'
        '<span class="mofme-leg-name"></span><span class="mofme-bar-head">used by</span>'
        '<span class="mofme-leg-num">top-1</span><span class="mofme-leg-num mofme-dim">used'
        "</span></div>"
    )
    return f'<div class="mofme-legend" id="expert-legend">{head}{"".join(rows)}</div>'


def count_legend(maps: RoutingMaps, layer: int) -> str:
    """HTML legend for the active-experts map: a colour per count 1..E with its token share."""
    palette = count_palette(maps.num_experts)
    counts = maps.active[layer]
    painted = counts[counts > 0]
    total = max(painted.size, 1)
    cells = []
    for k in range(1, maps.num_experts + 1):
        share = float((painted == k).sum()) / total
        dim = "" if share > 0 else " mofme-faint"
        cells.append(
            f'<div class="mofme-count{dim}"><span class="mofme-swatch" '
            f'style="background:{_hex(palette[k])}"></span><b>{k}</b>'
            f"<small>{100 * share:.0f}%</small></div>"
        )
    return (
        f'<div class="mofme-legend mofme-counts" id="count-legend">{"".join(cells)}</div>'
        f'<div class="mofme-caption">mean {maps.mean_active[layer]:.2f} active experts per '
        f"token in layer {layer + 1}</div>"
    )


def render_maps(
    photo: np.ndarray, maps: RoutingMaps, layer: int, opacity: float
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """The two overlays and their legends for one layer."""
    layer = max(0, min(layer, len(maps.top1) - 1))
    experts = overlay(photo, maps.top1[layer], expert_palette(maps.num_experts), opacity)
    counts = overlay(photo, maps.active[layer], count_palette(maps.num_experts), opacity)
    return experts, counts, expert_legend(maps, layer), count_legend(maps, layer)


def stats_markdown(res: ImageResult) -> str:
    """The numbers under the result: routing, active experts, time."""
    h, w = res.size_hw
    mp = h * w / 1e6
    layers = " · ".join(f"L{i + 1} {m:.2f}" for i, m in enumerate(res.maps.mean_active))
    mean = float(np.mean(res.maps.mean_active))
    tiles = "whole image" if res.tiles == 1 else f"{res.tiles} tiles"
    depth = f"{res.bit_depth}-bit"
    return (
        f"| | |\n|---|---|\n"
        f"| **routing** | `{res.routing}` |\n"
        f"| **mean active experts** | **{mean:.2f}** of {res.maps.num_experts} ({layers}) |\n"
        f"| **time per image** | **{res.seconds:.2f} s** ({mp / max(res.seconds, 1e-9):.2f} MP/s"
        f" on {res.device}) |\n"
        f"| **image** | {w}×{h} ({mp:.2f} MP), {tiles}, saved as {depth} PNG |\n"
        f"| **checkpoint** | `{res.ckpt}` |\n" + (f"\n{res.map_note}\n" if res.map_note else "")
    )


def video_markdown(res: VideoReport) -> str:
    """The numbers under the video result."""
    if res.audio_in == 0:
        sound = "the input has no sound"
    elif res.audio_out >= res.audio_in:
        sound = f"kept ({res.audio_out} audio stream{'s' if res.audio_out > 1 else ''})"
    else:
        sound = f"**not kept** ({res.audio_out} of {res.audio_in} audio streams)"
    rate = res.frames / max(res.seconds, 1e-9)
    fps = f" at {res.fps:.3g} fps" if res.fps else ""
    notes = "".join(f"| | {html.escape(n)} |\n" for n in res.notes)
    return (
        f"| | |\n|---|---|\n"
        f"| **frames** | {res.frames}{fps}, {res.width}×{res.height} |\n"
        f"| **time** | {res.seconds:.1f} s ({rate:.2f} frames/s) |\n"
        f"| **sound** | {sound} |\n{notes}"
    )
