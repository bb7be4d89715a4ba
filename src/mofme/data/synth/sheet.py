"""A contact sheet: every weather type at every severity, and snowy-video frames, in one PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mofme.data.clips import camera_clip
from mofme.data.content import clean_sources, random_view
from mofme.data.io import atomic_write_bytes, to_uint8
from mofme.data.synth.items import psnr_u8
from mofme.data.synth.runner import check_seed
from mofme.data.weather import SEVERITIES, WEATHER_TYPES, snow_video


def contact_sheet(
    out_png: str | Path, seed: int = 0, size: int = 160, source_folder: str | Path | None = None
) -> Path:
    """A labelled PNG grid of every weather type at every severity, plus snowy-video frames.

    Rows: the weather types and one row "snow video"; columns: clean / light / medium / heavy
    (for the video row: clean frame 0 and snowy frames 0, 2, 4 of a medium clip). Each tile
    shows its PSNR against the clean tile. Returns the written path.
    """
    out_png = Path(out_png)
    seed = check_seed(seed)
    sources = clean_sources(str(source_folder) if source_folder is not None else None)
    rng = np.random.default_rng([seed, 20])
    clean = random_view(sources[int(rng.integers(len(sources)))], (size, size), rng)
    rows: list[tuple[str, list[tuple[np.ndarray, str]]]] = []
    for r, (name, fn) in enumerate(WEATHER_TYPES.items()):
        tiles = [(clean, "")]
        for c, sev in enumerate(SEVERITIES):
            bad = fn(clean, np.random.default_rng([seed, 21, r, c]), sev)
            tiles.append((bad, f"{psnr_u8(to_uint8(bad), to_uint8(clean)):.1f} dB"))
        rows.append((name, tiles))
    vrng = np.random.default_rng([seed, 22])
    clip = camera_clip(sources[int(vrng.integers(len(sources)))], 5, (size, size), vrng)
    snowy = snow_video(clip, vrng, "medium")
    rows.append(
        (
            "snow video",
            [(clip[0], "clean t=0")] + [(snowy[t], f"t={t}") for t in (0, 2, 4)],
        )
    )

    label_w, header_h, pad = 90, 22, 4
    n_cols = 4
    sheet_w = label_w + n_cols * (size + pad) + pad
    sheet_h = header_h + len(rows) * (size + pad) + pad
    sheet = Image.new("RGB", (sheet_w, sheet_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(("clean", *SEVERITIES)):
        draw.text((label_w + c * (size + pad) + pad + 2, 5), title, fill=(0, 0, 0))
    for r, (name, tiles) in enumerate(rows):
        y = header_h + r * (size + pad)
        draw.text((6, y + size // 2 - 6), name, fill=(0, 0, 0))
        for c, (tile, caption) in enumerate(tiles):
            x = label_w + c * (size + pad) + pad
            sheet.paste(Image.fromarray(to_uint8(tile)), (x, y))
            if caption:
                box = draw.textbbox((x + 3, y + size - 14), caption)
                draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
                draw.text((x + 3, y + size - 14), caption, fill=(255, 255, 255))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(out_png, buf.getvalue())
    return out_png
