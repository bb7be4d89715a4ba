"""``mofme app``: the web app's restore paths, its error messages, and the page in a real browser.

The browser test starts ``mofme app`` as a user would (a subprocess on a free localhost port)
and drives it with headless Chromium through Playwright: it uploads a weathered photo, waits
for the before/after slider, the download and both routing maps, switches the routing to top-p,
uploads a text file (a readable message must appear), restores a short video with sound, and
saves screenshots (to ``docs/app/`` with ``MOFME_SCREENSHOTS=1``, else to a temp folder). It
uses the system's Chromium (Debian: ``apt-get install chromium``; or set ``MOFME_CHROMIUM`` to a Chromium/Chrome binary) — Playwright never downloads
a browser here. Without Gradio, Playwright or a Chromium binary the tests are skipped, and the
skip reason names what is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install 'mofme[app]')")

from mofme.errors import MofmeError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "app"
# Generous waits: on a machine shared with training jobs one restore can take 100x its usual
# second; a healthy run never comes near them.
WAIT_MS = 240_000
START_S = 300
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/snap/bin/chromium")


def find_chromium() -> str | None:
    """A Chromium/Chrome binary: ``$MOFME_CHROMIUM``, then the usual names on ``PATH``."""
    env = os.environ.get("MOFME_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return next((p for p in CHROMIUM_PATHS if Path(p).is_file()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------ media for the tests


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A weathered held-out photo, a 16-bit PNG, a text file named .png, a short snowy video
    with a 440 Hz tone, and a broken video."""
    import av

    from mofme.app import make_examples
    from mofme.data.clips import camera_clip
    from mofme.data.content import clean_sources
    from mofme.data.io import save_image
    from mofme.data.weather import snow_video

    folder = tmp_path_factory.mktemp("app_media")
    photo = make_examples(folder / "examples")[0]  # chelsea with snow, 448x320
    rng = np.random.default_rng(7)
    deep = folder / "deep16.png"
    save_image(deep, rng.random((40, 56, 3), dtype=np.float32), bit_depth=16)
    text = folder / "notes.png"
    text.write_text("this is a shopping list, not a picture\n")
    broken = folder / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 16)

    clip = folder / "snowy_tone.mp4"
    frames = snow_video(camera_clip(clean_sources()[2], 8, (144, 192), rng), rng, "medium")
    with av.open(str(clip), "w") as out:
        video = out.add_stream("libx264", rate=8)
        video.width, video.height, video.pix_fmt = 192, 144, "yuv420p"
        audio = out.add_stream("aac", rate=44100)
        audio.layout = "mono"
        for f in frames:
            image = av.VideoFrame.from_ndarray(
                (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8), format="rgb24"
            )
            out.mux(video.encode(image))
        out.mux(video.encode())
        t = np.arange(44100) / 44100
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        for i in range(0, tone.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(tone[:, i : i + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 44100, i
            out.mux(audio.encode(chunk))
        out.mux(audio.encode())
    return {"photo": photo, "deep": deep, "text": text, "clip": clip, "broken": broken}


# ------------------------------------------------------------------ restore paths, no browser


@pytest.fixture(scope="module")
def cache():
    from mofme.app import ModelCache

    return ModelCache("cpu")


def test_restore_file_keeps_bit_depth_and_maps_routing(media, cache, tmp_path):
    from mofme.app import render_maps, restore_file
    from mofme.data.io import load_image

    res = restore_file(media["deep"], cache, tmp_path, routing="topk:3")
    out = load_image(res.file)
    assert out.bit_depth == 16 and out.rgb.shape == (40, 56, 3)
    assert res.routing == "topk:3" and res.tiles == 1 and res.map_note == ""
    assert res.maps.mean_active == pytest.approx([3.0] * len(res.maps.mean_active))
    for top1, active in zip(res.maps.top1, res.maps.active):
        assert top1.shape == active.shape == res.before.shape[:2] == (40, 56)
        assert (active == 3).all() and top1.min() >= 0 and top1.max() < res.maps.num_experts
    for share in res.maps.top1_share:
        assert share.sum() == pytest.approx(1.0)
    # The routing of the shared model is back to the checkpoint's after the request.
    assert cache.get("image").restorer.routing == "topk:2"
    experts, counts, legend, count_legend = render_maps(res.before, res.maps, 0, 0.6)
    assert experts.shape == counts.shape == (40, 56, 3) and experts.dtype == np.uint8
    assert legend.count("expert ") == res.maps.num_experts and "active experts" in count_legend


def test_large_images_are_tiled_with_a_note(media, cache, tmp_path, monkeypatch):
    from mofme.app import restore_file
    from mofme.inference import policy

    # Make "large" small so that the tiled path runs in a fraction of a second.
    monkeypatch.setattr(policy, "AUTO_MAX_PIXELS", 64 * 64)
    monkeypatch.setattr(policy, "AUTO_TILE", 64)
    res = restore_file(media["photo"], cache, tmp_path, routing="topp:0.6")
    assert res.tiles > 1 and "tiles" in res.map_note
    assert res.after.shape == res.before.shape == (320, 448, 3)
    assert res.maps.top1[0].shape == (320, 448)
    assert 1.0 <= min(res.maps.mean_active) <= max(res.maps.mean_active) <= 8.0


def test_bad_inputs_give_readable_messages(media, cache, tmp_path):
    from mofme.app import restore_file, restore_video_file
    from mofme.app.page import _guard

    with pytest.raises(MofmeError, match=r"restores up to 0\.001 MP"):
        restore_file(media["photo"], cache, tmp_path, max_megapixels=0.001)
    with pytest.raises(MofmeError, match=r"notes\.png"):
        restore_file(media["text"], cache, tmp_path)
    with pytest.raises(MofmeError, match="cannot read video"):
        restore_video_file(media["broken"], cache, tmp_path)
    with pytest.raises(MofmeError, match="checkpoint not found"):
        cache.get("no_such_weights.safetensors")

    # In the page every failure is a gr.Error with one readable line and no traceback.
    guarded = _guard(lambda path: restore_file(path, cache, tmp_path))
    with pytest.raises(gr.Error) as info:
        guarded(str(media["text"]))
    message = str(info.value.message)
    assert "notes.png" in message and str(media["text"].parent) not in message
    assert "Traceback" not in message and "\n" not in message

    def crash() -> None:
        raise RuntimeError("something internal\nwith more lines")

    with pytest.raises(gr.Error, match=r"unexpected error \(RuntimeError: something internal\)"):
        _guard(crash)()


def test_video_keeps_sound(media, cache, tmp_path):
    from mofme.app import restore_video_file, video_markdown

    calls: list[tuple[int, int | None]] = []
    res = restore_video_file(
        media["clip"],
        cache,
        tmp_path,
        side_by_side=True,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert res.frames == 8 and res.audio_in == res.audio_out == 1
    assert calls[-1][0] == 8 and len(calls) == 8
    assert "kept (1 audio stream)" in video_markdown(res)


def test_cli_help_and_port_in_use():
    from mofme.cli import main

    with pytest.raises(SystemExit) as info:
        main(["app", "--help"])
    assert info.value.code == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["app", "--port", str(port)]) == 2  # "port N ... is in use", no traceback


# ------------------------------------------------------------------------------ the browser


def browser_missing() -> str | None:
    """Why the browser test cannot run here (``None`` when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if find_chromium() is None:
        return (
            "no Chromium browser found: install the system package (Debian/Ubuntu: "
            "apt-get install chromium) or set MOFME_CHROMIUM to a Chromium/Chrome binary"
        )
    return None


@pytest.fixture(scope="module", autouse=True)
def app_process(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path] | None]:
    """``mofme app`` in a subprocess on a free port, started when the module starts (so that
    its start-up overlaps the tests without a browser) if the browser test will run."""
    wanted = any(item.name == "test_app_in_a_browser" for item in request.session.items)
    if not wanted or browser_missing():
        yield None
        return
    port = free_port()
    log = tmp_path_factory.mktemp("app_server") / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mofme.cli", "app", "--port", str(port), "--device", "cpu"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    try:
        yield proc, f"http://127.0.0.1:{port}/", log
    finally:
        proc.terminate()  # SIGTERM: mofme's clean shutdown
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(app_process) -> str:
    """The app's URL, once it answers."""
    if app_process is None:
        pytest.skip(browser_missing() or "the browser test was not selected")
    proc, url, log = app_process
    deadline = time.monotonic() + START_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mofme app exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return url
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"mofme app did not answer on {url} in {START_S} s:\n{log.read_text()}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def browser():
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # The system browser: Playwright's own browser download is never used.
        b = pw.chromium.launch(executable_path=find_chromium(), headless=True)
        yield b
        b.close()


def test_app_in_a_browser(browser, server, media, tmp_path):
    # The README's screenshots (docs/app/) are retaken only on request (MOFME_SCREENSHOTS=1):
    # a test run must not change tracked files.
    shots = DOCS if os.environ.get("MOFME_SCREENSHOTS") == "1" else tmp_path
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.set_default_timeout(WAIT_MS)
    outside: list[str] = []
    page.on(
        "request",
        lambda r: None if r.url.startswith((server, "data:", "blob:")) else outside.append(r.url),
    )
    page.goto(server)
    page.wait_for_selector("#input-image input[type=file]", state="attached")

    # Upload a weathered photo: before/after slider, download, stats, both routing maps.
    page.set_input_files("#input-image input[type=file]", str(media["photo"]))
    page.wait_for_selector("#count-map img", timeout=WAIT_MS)
    page.wait_for_selector("#expert-map img")
    assert page.locator("#result-slider img").count() == 2
    assert "chelsea_snow_restored" in page.inner_text("#result-file")
    href = page.locator("#result-file a").first.get_attribute("href") or ""
    assert href.endswith("chelsea_snow_restored.png")
    assert "mean active experts" in page.inner_text("#mofme-stats")
    assert page.locator("#expert-legend .mofme-leg-row").count() == 1 + 8  # header + experts

    # Routing controls re-run the model: top-p shows an adaptive number of experts.
    page.get_by_label("top-p").check()
    page.wait_for_function(
        "document.querySelector('#mofme-stats').innerText.includes('topp:0.6')", timeout=WAIT_MS
    )
    stats = page.inner_text("#mofme-stats")
    assert "time per image" in stats
    page.wait_for_timeout(300)  # let the new maps paint
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "app.png"), full_page=True)

    # A text file gets a readable message in the page.
    page.set_input_files("#input-image input[type=file]", str(media["text"]))
    toast = page.locator(".toast-body").first
    toast.wait_for(timeout=WAIT_MS)
    assert "notes.png is not an image this app can read" in toast.inner_text()
    assert "Traceback" not in page.content()

    # Video tab: a short clip with sound comes back side by side, with its sound.
    page.get_by_role("tab", name="Video").click()
    page.set_input_files("#input-video input[type=file]", str(media["clip"]))
    page.wait_for_selector("#input-video video", timeout=WAIT_MS)
    page.click("#video-btn")
    page.wait_for_selector("#result-video video", timeout=WAIT_MS)
    page.wait_for_function(
        "document.querySelector('#video-stats').innerText.includes('sound')", timeout=WAIT_MS
    )
    assert "kept (1 audio stream)" in page.inner_text("#video-stats")
    page.screenshot(path=str(shots / "video.png"), full_page=False)

    assert outside == [], f"the page fetched from outside the app: {outside}"
    page.close()
