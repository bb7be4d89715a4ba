"""``mofme demo`` end to end on the bundled weights (CPU)."""

from __future__ import annotations

import json

from mofme.cli import main
from mofme.weights import bundled_path


def test_bundled_weights_load() -> None:
    from mofme import checkpoint

    image = checkpoint.load(bundled_path("image"))
    video = checkpoint.load(bundled_path("video"))
    assert image.cfg.in_channels == 3 and video.cfg.in_channels == 6
    assert image.extra.get("kind") == "image" and video.extra.get("kind") == "video"


def test_demo_end_to_end_improves_psnr(tmp_path, capsys) -> None:
    out = tmp_path / "demo out"
    assert main(["demo", "--out", str(out), "--size", "128x160", "--frames", "6"]) == 0
    printed = capsys.readouterr().out
    assert "summary.html" in printed
    for name in (
        "summary.html",
        "summary.md",
        "results.json",
        "snowy_clip_restored.mp4",
        "routing_top8.png",
        "images/video_frame.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert len(res["images"]) == 7
    for row in res["images"]:
        assert (out / row["file"]).is_file()
        if row["type"] == "clean":  # do no harm: a clean photo comes back nearly unchanged
            # Measured with the bundled weights: 35.3 dB at this small size (fine detail per
            # pixel is denser than in training views), 38.1 dB at the demo's default size.
            assert row["psnr_out"] > 34.0, row
        else:
            assert row["psnr_out"] > row["psnr_in"], row
    assert res["video"]["psnr_out"] > res["video"]["psnr_in"]
    assert not list(out.rglob(".*tmp*"))  # no temporary files left behind
