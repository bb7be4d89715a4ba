"""Refactoring guard: the synthetic data writers keep producing the same pixels.

``write_allweather``, ``write_rvsd`` (photos and a video file as sources) and
``write_benchmark`` (``mofme synth bench``), plus every weather type and the snowy video at a
large particle scale, are run on a tiny fixed configuration; their pixels must equal a golden
recorded in ``tests/data/refactor_guard_data.{npz,json}`` before the data package was split.

The golden stores the numpy and Pillow versions it was made with. Under the same versions the
pixels must be bit-identical (and ``meta.json`` equal, timings aside); under other versions the
test says so and allows a difference of at most 1 grey level (rounding in a resampler or a
transcendental function), comparing ``meta.json`` without its PSNR figures.

Regenerate (only on purpose, with the code whose output is the reference)::

    python tests/test_refactor_guard_data.py --regenerate
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import pytest
from PIL import Image

from mofme.data import content, synth, weather

GOLDEN = Path(__file__).resolve().parent / "data" / "refactor_guard_data"
SEED = 5
SIZE_HW = (16, 24)


def _versions() -> dict[str, str]:
    return {"numpy": np.__version__, "pillow": PIL.__version__}


def _write_lossless_clip(path: Path, n: int = 6, size_hw: tuple[int, int] = (40, 56)) -> None:
    """A short clip in a lossless codec (PNG in QuickTime), so decoding is exact everywhere."""
    import av

    rng = np.random.default_rng(11)
    base = (rng.random((*size_hw, 3)) * 255).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=8)
        stream.height, stream.width = size_hw
        stream.pix_fmt = "rgb24"
        for i in range(n):
            img = np.roll(base, 3 * i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _clean_meta(meta: dict[str, Any], root: Path) -> Any:
    """``meta.json`` without wall-clock timings, with temporary paths made relative."""

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items() if k != "seconds"}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, str) and x.startswith(str(root)):
            return x[len(str(root)) :]
        return x

    return walk(meta)


def _u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _pngs(out: Path, prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{prefix}/{p.relative_to(out)}": np.asarray(Image.open(p))
        for p in sorted(out.rglob("*.png"))
    }


def produce(tmp: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run every writer on the guard configuration: ``(pixels by file, meta by writer)``."""
    arrays: dict[str, np.ndarray] = {}
    metas: dict[str, Any] = {}
    kw: dict[str, Any] = {"seed": SEED, "progress": False}

    aw = tmp / "allweather"
    meta = synth.write_allweather(aw, n_train=12, n_test=1, size_hw=SIZE_HW, **kw)
    arrays |= _pngs(aw, "allweather")
    metas["allweather"] = _clean_meta(meta, tmp)
    metas["allweather_lists"] = {p.name: p.read_text() for p in sorted(aw.glob("*.txt"))}

    rv = tmp / "rvsd"
    meta = synth.write_rvsd(rv, n_videos=4, n_frames=3, size_hw=SIZE_HW, identity_share=0.3, **kw)
    arrays |= _pngs(rv, "rvsd")
    metas["rvsd"] = _clean_meta(meta, tmp)

    clip = tmp / "clip.mov"
    _write_lossless_clip(clip)
    rvf = tmp / "rvsd_video"
    meta = synth.write_rvsd(
        rvf, n_videos=2, n_frames=3, size_hw=SIZE_HW, split_test=1, video_files=[clip], **kw
    )
    arrays |= _pngs(rvf, "rvsd_video")
    metas["rvsd_video"] = _clean_meta(meta, tmp)

    bench = tmp / "bench"
    meta = synth.write_benchmark(
        bench, n_per_set=1, size_hw=(16, 16), n_clips=2, n_frames=2, clip_size_hw=(16, 24), **kw
    )
    arrays |= _pngs(bench, "bench")
    metas["bench"] = _clean_meta(meta, tmp)

    sheet = synth.contact_sheet(tmp / "sheet.png", seed=SEED, size=24)
    arrays["contact_sheet"] = np.asarray(Image.open(sheet))

    # Every weather at heavy severity and a large particle scale: the box-filter blur path.
    clean = content.random_view(content.clean_sources()[2], (48, 48), np.random.default_rng(SEED))
    for i, name in enumerate(weather.ALL_TYPES):
        out = weather.apply_weather(name, clean, np.random.default_rng([SEED, i]), "heavy", 1, 4.0)
        arrays[f"weather/{name}"] = _u8(out)
    frames = [clean, clean[:, ::-1].copy(), clean[::-1].copy()]
    for t, f in enumerate(weather.snow_video(frames, np.random.default_rng(SEED), "heavy", 3.0)):
        arrays[f"weather/snow_video/{t}"] = _u8(f)
    return arrays, metas


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(str((a.dtype.str, a.shape)).encode() + a.tobytes()).hexdigest()


def regenerate(tmp: Path) -> None:
    arrays, metas = produce(tmp)
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDEN.with_suffix(".npz"), **arrays)
    record = {
        "versions": _versions(),
        "hashes": {k: _digest(v) for k, v in arrays.items()},
        "metas": metas,
    }
    GOLDEN.with_suffix(".json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def _drop_psnr(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _drop_psnr(v) for k, v in x.items() if not k.startswith("psnr")}
    if isinstance(x, list):
        return [_drop_psnr(v) for v in x]
    return x


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_synthetic_data_matches_the_golden(tmp_path: Path) -> None:
    record = json.loads(GOLDEN.with_suffix(".json").read_text())
    arrays, metas = produce(tmp_path)
    assert sorted(arrays) == sorted(record["hashes"]), "the writers produced other files"
    same_versions = record["versions"] == _versions()
    if same_versions:
        changed = [k for k, a in arrays.items() if _digest(a) != record["hashes"][k]]
        assert not changed, f"pixels changed in {len(changed)} files, e.g. {changed[:5]}"
        assert metas == record["metas"]
        return
    warnings.warn(
        f"golden made with {record['versions']}, running {_versions()}: comparing with a "
        "tolerance of 1 grey level",
        stacklevel=1,
    )
    with np.load(GOLDEN.with_suffix(".npz")) as golden:
        for key, a in arrays.items():
            g = golden[key]
            assert a.shape == g.shape, key
            diff = np.abs(a.astype(np.int32) - g.astype(np.int32)).max()
            assert diff <= 1, f"{key}: max abs difference {diff}"
    assert _drop_psnr(metas) == _drop_psnr(record["metas"])


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_refactor_guard_data.py --regenerate")
    with tempfile.TemporaryDirectory() as d:
        regenerate(Path(d))
    print(f"wrote {GOLDEN}.npz and .json")
