"""``mofme app``: a local web app (Gradio) for restoring photos and videos, and looking inside.

The page has two tabs:

* **Image**: drop a weathered photo (or pick a held-out example: synthetic weather on
  scikit-image's photos, seeds the bundled weights never trained on), compare before/after with
  a slider, download the result as a PNG at full resolution and bit depth (16-bit and alpha kept,
  written by the same code as ``mofme restore``). *Look inside* shows, over the photo, which
  expert each 8×8 token chose (top-1 expert) and how many experts were active per token, per
  FME layer, and routing controls (top-k / top-p / dense) that re-run the model and report the
  mean number of active experts and the time per image.
* **Video**: upload a short clip; it is restored frame by frame with the reference-frame model
  by ``mofme.load("video").restore_video`` (the code of ``mofme video``: frame timing and sound
  kept), with a progress bar, as a side-by-side video.

Everything runs locally: no share link, analytics off, fonts served by the app itself (the test
checks that the page makes no request outside the local server). Large images are tiled
(the same automatic rule as ``mofme restore``); images above ``max_megapixels`` (a limit of this
app, raisable with ``mofme app --max-megapixels``) are refused with a message instead of
hours of CPU time. Every error a user can cause (a text file, a broken video, a huge image, a
mismatched checkpoint) shows up as a readable message in the page, never a traceback.

>>> from mofme.app import build_app, launch_options
>>> demo = build_app(device="cpu")
>>> demo.launch(server_name="127.0.0.1", server_port=7860, **launch_options())  # doctest: +SKIP

Modules: :mod:`~mofme.app.restore` (image and video restore paths, no Gradio),
:mod:`~mofme.app.pictures` (overlays, legends, tables), :mod:`~mofme.app.examples` (held-out
examples), :mod:`~mofme.app.page` (the Gradio page).
"""

from mofme.app.examples import EXAMPLES, make_examples, make_video_example
from mofme.app.page import build_app, launch_options, theme
from mofme.app.pictures import render_maps, stats_markdown, video_markdown
from mofme.app.restore import (
    MAX_MEGAPIXELS,
    MAX_VIDEO_FRAMES,
    ImageResult,
    ModelCache,
    RoutingMaps,
    VideoReport,
    restore_file,
    restore_video_file,
)

__all__ = [
    "EXAMPLES",
    "MAX_MEGAPIXELS",
    "MAX_VIDEO_FRAMES",
    "ImageResult",
    "ModelCache",
    "RoutingMaps",
    "VideoReport",
    "build_app",
    "launch_options",
    "make_examples",
    "make_video_example",
    "render_maps",
    "restore_file",
    "restore_video_file",
    "stats_markdown",
    "theme",
    "video_markdown",
]
