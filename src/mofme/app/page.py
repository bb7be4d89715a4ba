"""The Gradio page of ``mofme app``: layout, event handlers, error messages, theme."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import tempfile
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Gradio reads these when it is imported: no usage analytics, no version check, no telemetry.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import gradio as gr
from PIL import Image

from mofme.app.examples import make_examples, make_video_example
from mofme.app.pictures import render_maps, stats_markdown, video_markdown
from mofme.app.restore import (
    MAX_MEGAPIXELS,
    ModelCache,
    restore_file,
    restore_video_file,
)
from mofme.errors import MofmeError

log = logging.getLogger("mofme.app")

#: Result files are deleted after this many seconds (and when the app exits).
RESULTS_KEEP_S = 3600
ROUTING_KINDS = ("top-k", "top-p", "dense")
CKPT_CHOICES = ("image", "video")


def _routing_spec(kind: str, k: float, p: float) -> str:
    """The UI's routing controls as a routing spec (``topk:K``, ``topp:P``, ``dense``)."""
    if kind == "top-k":
        return f"topk:{int(k)}"
    if kind == "top-p":
        return f"topp:{float(p):g}"
    return "dense"


CSS = """
.gradio-container {max-width: 1320px !important; margin: auto;}
#mofme-header h1 {font-size: 1.9rem; margin-bottom: 0.1rem; letter-spacing: -0.01em;}
#mofme-header p {margin-top: 0; opacity: 0.8;}
.mofme-pill {display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 0.8rem;
  background: var(--color-accent-soft); color: var(--color-accent); margin-right: 6px;}
.mofme-legend {font-size: 0.85rem; line-height: 1.25;}
.mofme-leg-row {display: grid; grid-template-columns: 16px 72px 1fr 42px 42px; gap: 8px;
  align-items: center; padding: 2px 0;}
.mofme-leg-head {font-size: 0.75rem; opacity: 0.7;}
.mofme-swatch {display: inline-block; width: 14px; height: 14px; border-radius: 3px;
  box-shadow: inset 0 0 0 1px rgba(0,0,0,0.25);}
.mofme-bar {height: 8px; border-radius: 4px; background: var(--neutral-200); overflow: hidden;}
.mofme-bar > span {display: block; height: 100%; border-radius: 4px;}
.mofme-leg-num {text-align: right; font-variant-numeric: tabular-nums;}
.mofme-dim {opacity: 0.6;}
.mofme-counts {display: flex; flex-wrap: wrap; gap: 6px;}
.mofme-count {display: flex; align-items: center; gap: 5px; padding: 3px 8px;
  border-radius: 6px; background: var(--neutral-100);}
.mofme-count small {opacity: 0.7; font-variant-numeric: tabular-nums;}
.mofme-faint {opacity: 0.35;}
.mofme-caption {font-size: 0.85rem; margin-top: 6px; opacity: 0.8;}
#mofme-stats table, #video-stats table {font-size: 0.9rem;}
#mofme-stats thead, #video-stats thead {display: none;}
"""

HEADER = """
<div id="mofme-header">
<h1>mofme — remove rain, raindrops, snow and haze</h1>
<p>One sparse mixture of feature-modulation experts (MoFME) for all weather.
<span class="mofme-pill">runs locally</span><span class="mofme-pill">nothing is uploaded
anywhere</span><span class="mofme-pill">look inside the router</span></p>
</div>
"""

LOOK_INSIDE = """
### Look inside: which experts did the work?
The network cuts the image into 8×8-pixel **tokens**. In every FME layer a router sends each
token to a few of its experts (each expert scales and shifts the token's features). Left: the
expert each token relied on most (its **top-1 expert**). Right: **how many experts** were
active for the token — fixed with top-k, adaptive with top-p (more where the weather is harder).
Change the routing on the left and the image is restored again.
"""


def _user_message(exc: BaseException, *paths: object) -> str:
    """A one-line message for the page: temporary upload folders replaced by the file name."""
    text = str(exc).strip() or type(exc).__name__
    for p in paths:
        if p:
            text = text.replace(str(p), Path(str(p)).name)
    return text.splitlines()[0]


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into a ``gr.Error`` (a readable message box), never a traceback.

    ``MofmeError`` messages are meant for users; anything else is a bug or an environment
    problem, logged with its traceback on the server console and summarised in the page.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MofmeError as e:
            raise gr.Error(_user_message(e, *args), print_exception=False) from None
        except Exception as e:
            log.error("mofme app: %s failed:\n%s", fn.__name__, traceback.format_exc())
            raise gr.Error(
                f"unexpected error ({type(e).__name__}: {_user_message(e, *args)}); the server "
                "console has the details",
                print_exception=False,
            ) from None

    return wrapper


def _guard_upload(component: gr.Image) -> gr.Image:
    """Make ``component``'s upload errors (a text file, a corrupt or enormous image) a readable
    message instead of Gradio's bare "Error".

    Gradio opens an uploaded image with Pillow before any event handler runs, so this has to
    wrap the component's own ``preprocess`` (on this instance only; subclassing a Gradio
    component would make Gradio write a ``.pyi`` stub next to this module).
    """
    original = component.preprocess
    # Gradio's page sends a failed upload's change event twice; one message is enough, so a
    # repeat of the last failure within a few seconds passes ``None`` (nothing to do) instead.
    last_failure: dict[str, float] = {}

    @functools.wraps(original)
    def preprocess(payload: Any) -> Any:
        name = str(getattr(payload, "orig_name", None) or "the uploaded file")
        path = str(getattr(payload, "path", None))
        if time.monotonic() - last_failure.get(path, -1e9) < 5.0:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return original(payload)
        except gr.Error:
            raise
        except Exception as e:
            last_failure.clear()
            last_failure[path] = time.monotonic()
            if isinstance(e, Image.DecompressionBombError):
                reason = (
                    f"{name} is too large to open safely (over "
                    f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels)"
                )
            else:
                reason = (
                    f"{name} is not an image this app can read ({_user_message(e, path)}). "
                    "Try a PNG, JPEG, TIFF, WebP or BMP file."
                )
            raise gr.Error(reason, print_exception=False) from None

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def _map_panel(label: str, name: str) -> tuple[gr.Image, gr.HTML]:
    """A routing-map picture (``#NAME-map``) over its legend (``#NAME-legend-box``), in a
    column of the enclosing row."""
    with gr.Column():
        image = gr.Image(
            label=label,
            height=400,
            elem_id=f"{name}-map",
            interactive=False,
            format="png",
            buttons=["download", "fullscreen"],
        )
        return image, gr.HTML(elem_id=f"{name}-legend-box")


def _kind_of(selection: str) -> str:
    return {"topk": "top-k", "topp": "top-p"}.get(selection, "dense")


def build_app(
    device: str = "cpu",
    ckpt: str = "image",
    video_ckpt: str = "video",
    max_megapixels: float = MAX_MEGAPIXELS,
    workdir: str | os.PathLike[str] | None = None,
) -> gr.Blocks:
    """The Gradio app (call ``.launch(**launch_options())`` on it, or use ``mofme app``).

    The image checkpoint is loaded up front, so that a bad path fails at start-up rather than
    on the first click; other checkpoints load on first use and stay loaded.

    Args:
        device: ``cpu`` (default), ``auto`` (CUDA when present), ``cuda``, ``cuda:1``, ...
        ckpt: image checkpoint: ``image``, ``video`` or a ``.safetensors`` path.
        video_ckpt: checkpoint for the video tab.
        max_megapixels: refuse larger images with a message (they would take too long).
        workdir: where examples and results are written (default: a temporary folder removed
            when the process exits).
    """
    cache = ModelCache(device)
    first = cache.get(ckpt)  # fail early on a bad checkpoint
    num_experts = int(first.cfg.num_experts)
    default = first.cfg.routing
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="mofme-app-"))
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    workdir = Path(workdir)
    examples = make_examples(workdir / "examples")
    video_example = make_video_example(workdir / "examples")
    results = workdir / "results"
    ckpt_choices = list(dict.fromkeys([ckpt, *CKPT_CHOICES]))
    layer_choices = [f"layer {i + 1}" for i in range(int(first.cfg.depth))]

    def new_folder() -> Path:
        # One folder per request: result names follow the input, and never collide. Folders
        # older than RESULTS_KEEP_S go, so a long-running app does not fill the disk (the
        # page has its own copy of every result it shows).
        if results.is_dir():
            cutoff = time.time() - RESULTS_KEEP_S
            for old in results.iterdir():
                if old.is_dir() and old.stat().st_mtime < cutoff:
                    shutil.rmtree(old, ignore_errors=True)
        return results / uuid.uuid4().hex[:12]

    def layer_index(layer: str) -> int:
        return layer_choices.index(layer) if layer in layer_choices else 0

    @_guard
    def restore(
        path: str | None,
        ckpt_name: str,
        kind: str,
        k: float,
        p: float,
        layer: str,
        opacity: float,
    ) -> tuple[Any, ...]:
        if not path:
            return (gr.skip(),) * 9  # the image was cleared: keep what is shown
        experts = int(cache.get(ckpt_name).cfg.num_experts)
        res = restore_file(
            path,
            cache,
            new_folder(),
            ckpt=ckpt_name,
            routing=_routing_spec(kind, min(int(k), experts), p),
            max_megapixels=max_megapixels,
        )
        expert_img, count_img, expert_html, count_html = render_maps(
            res.before, res.maps, layer_index(layer), opacity
        )
        return (
            (res.before, res.after),
            str(res.file),
            stats_markdown(res),
            expert_img,
            count_img,
            expert_html,
            count_html,
            {"photo": res.before, "maps": res.maps},
            kind,
        )

    # Moving a slider also selects its routing kind (k means top-k, p means top-p).
    def restore_topk(*args: Any) -> tuple[Any, ...]:
        return restore(args[0], args[1], "top-k", *args[3:])

    def restore_topp(*args: Any) -> tuple[Any, ...]:
        return restore(args[0], args[1], "top-p", *args[3:])

    @_guard
    def redraw(state: dict[str, Any] | None, layer: str, opacity: float) -> tuple[Any, ...]:
        if not state:
            return (gr.skip(),) * 4
        return render_maps(state["photo"], state["maps"], layer_index(layer), opacity)

    @_guard
    def checkpoint_changed(ckpt_name: str) -> tuple[Any, ...]:
        cfg = cache.get(ckpt_name).cfg
        e = int(cfg.num_experts)
        return (
            gr.update(value=_kind_of(cfg.routing.selection)),
            gr.update(maximum=e, value=min(cfg.routing.k, e)),
            gr.update(value=cfg.routing.p),
        )

    @_guard
    def restore_video(
        path: str | None,
        ckpt_name: str,
        side: bool,
        # Gradio finds the progress tracker by this default value (its documented idiom).
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        if not path:
            raise gr.Error("upload a video first", print_exception=False)
        progress(0.0, desc="loading the model")

        def tick(done: int, total: int | None) -> None:
            progress((done, total), desc="restoring frames", unit="frames")

        res = restore_video_file(
            path,
            cache,
            new_folder(),
            ckpt=ckpt_name,
            side_by_side=side,
            progress=tick,
            max_megapixels=max_megapixels,
        )
        return str(res.file), video_markdown(res)

    with gr.Blocks(title="mofme — deweathering", analytics_enabled=False) as demo:
        gr.HTML(HEADER)
        with gr.Tab("Image", id="image-tab"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=4, min_width=320):
                    inp = _guard_upload(
                        gr.Image(
                            type="filepath",
                            image_mode=None,  # the file as uploaded: 16-bit and alpha survive
                            sources=["upload", "clipboard"],
                            label="Weathered photo",
                            elem_id="input-image",
                            height=320,
                        )
                    )
                    gr.Examples(
                        examples=[[str(p)] for p in examples],
                        inputs=[inp],
                        label="Held-out examples (synthetic weather on photos the model never saw)",
                        examples_per_page=len(examples),
                    )
                    with gr.Group():
                        ckpt_box = gr.Dropdown(
                            choices=ckpt_choices,
                            value=ckpt,
                            allow_custom_value=True,
                            label="Checkpoint",
                            info="image, video (bundled) or a .safetensors path",
                            elem_id="ckpt",
                        )
                        kind = gr.Radio(
                            list(ROUTING_KINDS),
                            value=_kind_of(default.selection),
                            label="Routing",
                            info="top-k: a fixed number of experts per token; top-p: as many "
                            "as it takes to pass weight p",
                            elem_id="routing-kind",
                        )
                        with gr.Row():
                            k = gr.Slider(
                                1, num_experts, value=min(default.k, num_experts), step=1,
                                label="k", elem_id="routing-k",
                            )  # fmt: skip
                            p = gr.Slider(
                                0.05, 1.0, value=default.p, step=0.05,
                                label="p", elem_id="routing-p",
                            )  # fmt: skip
                    run_btn = gr.Button("Restore", variant="primary", elem_id="restore-btn")
                with gr.Column(scale=6, min_width=420):
                    slider = gr.ImageSlider(
                        label="Before / after (drag the handle)",
                        type="numpy",
                        elem_id="result-slider",
                        max_height=560,
                        interactive=False,
                    )
                    out_file = gr.File(
                        label="Download: full resolution PNG (16-bit and alpha kept)",
                        elem_id="result-file",
                        interactive=False,
                    )
                    stats = gr.Markdown(elem_id="mofme-stats")
            gr.Markdown(LOOK_INSIDE, elem_id="look-inside")
            with gr.Row():
                layer = gr.Radio(layer_choices, value=layer_choices[-1], label="FME layer")
                opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Overlay opacity")
            with gr.Row(equal_height=False):
                expert_img, expert_html = _map_panel("Top-1 expert per token", "expert")
                count_img, count_html = _map_panel("Active experts per token", "count")
            state = gr.State()

        with gr.Tab("Video", id="video-tab"):
            gr.Markdown(
                "Restore a short clip frame by frame with the **reference-frame** video model "
                "(each frame also sees the previous restored frame). Frame timing and sound "
                "are kept, as with `mofme video`."
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=4):
                    vin = gr.Video(
                        label="Weathered video", elem_id="input-video", sources=["upload"]
                    )
                    gr.Examples(
                        examples=[[str(video_example)]],
                        inputs=[vin],
                        label="Held-out example (synthetic snow over a camera move)",
                    )
                    vckpt = gr.Dropdown(
                        choices=list(dict.fromkeys([video_ckpt, *CKPT_CHOICES])),
                        value=video_ckpt,
                        allow_custom_value=True,
                        label="Checkpoint",
                        elem_id="video-ckpt",
                    )
                    side = gr.Checkbox(value=True, label="Side by side (input | restored)")
                    vbtn = gr.Button("Restore video", variant="primary", elem_id="video-btn")
                with gr.Column(scale=6):
                    vout = gr.Video(label="Result", elem_id="result-video", interactive=False)
                    vstats = gr.Markdown(elem_id="video-stats")

        image_inputs = [inp, ckpt_box, kind, k, p, layer, opacity]
        image_outputs = [
            slider, out_file, stats, expert_img, count_img, expert_html, count_html, state, kind,
        ]  # fmt: skip
        maps_out = [expert_img, count_img, expert_html, count_html]
        # All model work shares one queue slot: the models are shared and CPU cores are few.
        heavy = {"concurrency_id": "model", "concurrency_limit": 1}
        inp.change(restore, image_inputs, image_outputs, **heavy)
        run_btn.click(restore, image_inputs, image_outputs, **heavy)
        # .input (user actions only): the handlers set `kind` themselves without a re-run.
        kind.input(restore, image_inputs, image_outputs, **heavy)
        k.release(restore_topk, image_inputs, image_outputs, **heavy)
        p.release(restore_topp, image_inputs, image_outputs, **heavy)
        ckpt_box.input(checkpoint_changed, [ckpt_box], [kind, k, p], **heavy).success(
            restore, image_inputs, image_outputs, **heavy
        )
        layer.change(redraw, [state, layer, opacity], maps_out)
        opacity.release(redraw, [state, layer, opacity], maps_out)
        vbtn.click(restore_video, [vin, vckpt, side], [vout, vstats], **heavy)
    demo.mofme_workdir = workdir  # type: ignore[attr-defined]
    return demo


def theme() -> gr.themes.Base:
    """A calm theme whose fonts are all served locally (no font CDN)."""
    return gr.themes.Soft(
        primary_hue="sky",
        neutral_hue="slate",
        font=[gr.themes.Font("ui-sans-serif"), gr.themes.Font("system-ui"), "sans-serif"],
        font_mono=[gr.themes.Font("ui-monospace"), "monospace"],
    )


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch`` that keep the app local and quiet."""
    return {
        "share": False,
        "theme": theme(),
        "css": CSS,
        "footer_links": [],
        "show_error": True,
        "ssr_mode": False,
        "mcp_server": False,
        "pwa": False,
    }
