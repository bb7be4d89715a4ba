"""Evaluation on paired test sets and videos: PSNR / SSIM, speed, active experts (SPEC §6).

Protocol:

* Images are evaluated at full resolution unless ``resize=(W, H)`` is given; ``(720, 480)``
  reproduces the official MoFME protocol (Pillow bicubic on input *and* ground truth).
* Each image is restored with :func:`mofme.inference.tiling.restore_image` (one whole-image
  pass, or overlapping tiles with ``tile``), clamped to ``[0, 1]`` and scored on RGB and on the
  BT.601 Y channel (:mod:`mofme.metrics`, matched to scikit-image).
* PSNR of an exact match is infinite; per image it is capped at :data:`PSNR_CAP` (100 dB, an
  MSE of 1e-10, far below 8-bit quantisation) so that means and JSON stay finite.
* A test set's numbers are means over its images; the ``average`` row is the mean over test
  sets (every set counts once, as papers report); ``overall`` is the mean over all images.
* Videos (RVSD) are restored in a stream with :class:`mofme.inference.video.VideoRestorer`
  (the previous restored frame is the reference of a 6-channel model; a 3-channel model runs
  frame by frame). Per video: means over frames, also for the first frame (all-zero reference)
  and the other frames separately; the ``average`` row is the mean over videos.
* Time is the restoration alone (no file I/O, no metrics), with CUDA synchronised before and
  after; one untimed warm-up pass runs first.
* Active experts: the number of experts with nonzero weight per token, averaged over the FME
  layers and over every token the model computed (all tiles with ``tile``), read from each
  layer's routing weights after every forward pass (``FMELayer.last_weights``, the data of
  ``MoFMENet.routing_weights()``).
* GFLOPs are counted at a fixed reference size (240×240 by default, the training crop) on a
  random input, so they are comparable between models and routings but not tied to the data.

One loop restores and scores every image or frame (``restore_and_score``);
``evaluate_images`` / ``evaluate_videos`` summarise its records (:mod:`mofme.results`). Other
uses watch the same loop as *observers*, called with each restored :class:`Sample`: routing
statistics (:mod:`mofme.stats`, with ``score=False``: no ground truth read), sample images for
training logs (:class:`Collect`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from mofme.data.io import load_image, resize_rgb, save_image, to_numpy, to_tensor
from mofme.data.pairs import Pair, VideoPair
from mofme.errors import MofmeError
from mofme.inference import tiling
from mofme.inference.tiling import model_device
from mofme.inference.timing import synchronize
from mofme.inference.video import VideoRestorer, model_in_channels, still_input
from mofme.metrics import psnr, ssim
from mofme.model.analysis import active_experts
from mofme.results import (
    METRICS,
    EvalResult,
    Record,
    plot_sweep,
    routing_sweep,
    summarise,
    sweep_markdown,
)

__all__ = [  # the results' names too, for callers of the evaluation API
    "METRICS",
    "PSNR_CAP",
    "Collect",
    "EvalResult",
    "InputAsOutput",
    "Observer",
    "Record",
    "Sample",
    "evaluate_images",
    "evaluate_videos",
    "limit_per_group",
    "plot_sweep",
    "restore_and_score",
    "routing_sweep",
    "sweep_markdown",
]

#: Per-image PSNR ceiling in dB (an exact match would otherwise be ``inf``).
PSNR_CAP = 100.0


class InputAsOutput(nn.Module):
    """The "no restoration" baseline: returns the degraded input (its first 3 channels), so the
    same evaluation gives the input's own PSNR / SSIM (``mofme test --input-baseline``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :3]


# ---------------------------------------------------------------------------- observers


@dataclass
class Sample:
    """One restored image or video frame, as the loop hands it to its observers.

    Tensors are on the evaluation device and shared: an observer that keeps one copies it
    (:meth:`cpu`).
    """

    group: str  # test set (images) or video name
    path: Path  # the degraded input file
    index: int  # position in its test set, or frame number in its video
    first_frame: bool  # video: restored with an all-zero reference
    input: Tensor  # (1, 3, H, W) the degraded image in [0, 1]
    output: Tensor  # (1, 3, H, W) float32, restored, clamped to [0, 1]
    target: Tensor | None  # (1, 3, H, W) ground truth (None: not scored)
    #: Per FME layer, its routing weights ``(B, N, E)`` of every forward pass of this
    #: restoration (several with tiles).
    routing: list[list[Tensor]]
    record: Record | None  # the scores (None: not scored)

    def cpu(self) -> Sample:
        """A copy with the images on the CPU and without the routing weights."""
        target = None if self.target is None else self.target.cpu()
        return replace(
            self, input=self.input.cpu(), output=self.output.cpu(), target=target, routing=[]
        )


#: Called with every restored :class:`Sample`, in order.
Observer = Callable[[Sample], None]


class Collect:
    """An observer that keeps the samples ``want`` accepts, on the CPU (``.samples``).

    >>> first = Collect(lambda s: s.index == 0)      # the first image of each test set
    >>> evaluate_images(model, pairs, observers=[first])
    >>> [s.path.name for s in first.samples]
    """

    def __init__(self, want: Callable[[Sample], bool]) -> None:
        self.want = want
        self.samples: list[Sample] = []

    def __call__(self, sample: Sample) -> None:
        if self.want(sample):
            self.samples.append(sample.cpu())


class _RoutingCapture:
    """The routing weights of every forward pass of the FME layers since the last ``reset``.

    A forward hook (rather than ``routing_weights()`` once at the end) sees every tile of a
    tiled restoration, not only the last one. Nothing is computed in the hook, so timing is
    not disturbed by synchronisation.
    """

    def __init__(self, model: nn.Module) -> None:
        layers = list(getattr(model, "fme_layers", []))
        self.passes: list[list[Tensor]] = [[] for _ in layers]
        self._handles = [
            layer.register_forward_hook(self._hook(passes))
            for layer, passes in zip(layers, self.passes)
        ]

    @staticmethod
    def _hook(passes: list[Tensor]) -> Callable[..., None]:
        def record(module: nn.Module, _inputs: object, _output: object) -> None:
            weights = getattr(module, "last_weights", None)  # (B, N, E)
            if weights is not None:
                passes.append(weights)

        return record

    def take(self) -> list[list[Tensor]]:
        """The captured passes (per layer), and start over."""
        taken = [list(p) for p in self.passes]
        self.reset()
        return taken

    def reset(self) -> None:
        for passes in self.passes:
            passes.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def mean_active(routing: list[list[Tensor]]) -> float | None:
    """Mean active experts per (layer, token) over the captured passes (``None``: none)."""
    weights = [w for passes in routing for w in passes]
    tokens = sum(w.shape[0] * w.shape[1] for w in weights)
    if not tokens:
        return None
    return float(torch.stack([active_experts(w).sum() for w in weights]).sum()) / tokens


# --------------------------------------------------------------------------------- the loop


@dataclass
class _Item:
    """One image or frame to restore: ``new_stream`` starts a video (the restorer starts over)."""

    group: str
    index: int
    input: Path
    target: Path | None
    new_stream: bool = True


class _Images:
    """Still images: each restored alone (a video model sees a zero reference)."""

    first = False

    def __init__(self, restore: Callable[[Tensor], Tensor], in_channels: int) -> None:
        self._restore, self._in_channels = restore, in_channels

    def step(self, x: Tensor) -> Tensor:
        return self._restore(still_input(x, self._in_channels))

    def warmup(self, x: Tensor) -> None:
        self.step(x)

    def reset(self) -> None:
        pass


class _Stream:
    """Video frames through a ``VideoRestorer`` (the previous restored frame as reference)."""

    def __init__(self, restorer: VideoRestorer) -> None:
        self.restorer = restorer

    @property
    def first(self) -> bool:
        return self.restorer.frames_done == 0

    def step(self, x: Tensor) -> Tensor:
        return self.restorer.step(x)

    def warmup(self, x: Tensor) -> None:
        self.restorer.step(x)
        self.restorer.reset()

    def reset(self) -> None:
        self.restorer.reset()


def _load_pair(
    input_path: Path, gt_path: Path | None, resize: tuple[int, int] | None
) -> tuple[Tensor, Tensor | None]:
    """Input and ground truth (``None`` without ``gt_path``) as ``(3, H, W)`` tensors,
    optionally resized to ``(W, H)``."""
    source = load_image(input_path)
    target = load_image(gt_path) if gt_path is not None else None
    if target is not None and source.rgb.shape != target.rgb.shape:
        (h1, w1), (h2, w2) = source.rgb.shape[:2], target.rgb.shape[:2]
        raise MofmeError(
            f"size mismatch: {input_path} is {w1}x{h1} but its ground truth {gt_path} is {w2}x{h2}"
        )
    x = source.rgb if resize is None else resize_rgb(source.rgb, resize, source.bit_depth)
    if target is None:
        return to_tensor(x), None
    y = target.rgb if resize is None else resize_rgb(target.rgb, resize, target.bit_depth)
    return to_tensor(x), to_tensor(y)


def _scores(out: Tensor, gt: Tensor) -> dict[str, float]:
    """PSNR / SSIM on RGB and Y of one image pair ``(1, 3, H, W)``; PSNR capped."""
    values = {
        "psnr": float(psnr(out, gt)[0]),
        "ssim": float(ssim(out, gt)[0]),
        "psnr_y": float(psnr(out, gt, y_channel=True)[0]),
        "ssim_y": float(ssim(out, gt, y_channel=True)[0]),
    }
    for key in ("psnr", "psnr_y"):
        values[key] = min(values[key], PSNR_CAP)
    return values


def _skip(failed: list[dict[str, str]], path: Path, exc: Exception, strict: bool) -> None:
    if strict:
        raise exc
    failed.append({"path": str(path), "error": str(exc)})
    warnings.warn(f"skipped {path}: {exc}", stacklevel=3)


def _check_amp(amp: str) -> None:
    if amp not in tiling.AMP_MODES:
        raise MofmeError(f"unknown --amp {amp!r}; use one of {', '.join(tiling.AMP_MODES)}")


@contextmanager
def _on_device(model: nn.Module, device: str | torch.device | None) -> Iterator[torch.device]:
    """The model on ``device`` (default: where it is), in eval mode for the loop."""
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    with tiling.eval_mode(model):
        yield device


def _loop(
    model: nn.Module,
    items: Sequence[_Item],
    runner: _Images | _Stream,
    *,
    device: torch.device,
    resize: tuple[int, int] | None,
    score: bool,
    strict: bool,
    warmup: bool,
    save_dir: str | Path | None,
    observers: Sequence[Observer],
    progress: bool,
    unit: str,
) -> tuple[list[Record], list[dict[str, str]]]:
    """Restore (and with ``score``, score) every item; the one loop behind this module.

    Per item: load (skipped with a warning and listed in ``failed`` when unreadable, unless
    ``strict``), restore timed (CUDA synchronised around it), clamp, score, save, observe.
    """
    records: list[Record] = []
    failed: list[dict[str, str]] = []
    size: tuple[int, ...] | None = None  # of the current video's frames
    routing = _RoutingCapture(model)
    bar = tqdm(total=len(items), desc="test", unit=unit, disable=not progress, leave=False)
    try:
        for item in items:
            bar.update(1)
            if item.new_stream:
                runner.reset()
                size = None
            try:
                x, gt = _load_pair(item.input, item.target if score else None, resize)
                if size is not None and tuple(x.shape) != size:
                    raise MofmeError(
                        f"video {item.group}: frame {item.input.name} is "
                        f"{x.shape[2]}x{x.shape[1]}, other frames are {size[2]}x{size[1]}"
                    )
            except MofmeError as exc:
                _skip(failed, item.input, exc, strict)
                continue
            size = tuple(x.shape)
            frame = x.unsqueeze(0).to(device)
            if warmup:
                runner.warmup(frame)
                warmup = False
            first = runner.first
            routing.reset()
            synchronize(device)
            start = time.perf_counter()
            out = runner.step(frame)
            synchronize(device)
            ms = 1000.0 * (time.perf_counter() - start)
            out = out.float().clamp(0.0, 1.0)
            passes = routing.take()
            target = gt.unsqueeze(0).to(device) if gt is not None else None
            record = None
            if target is not None:
                try:
                    scores = _scores(out, target)
                except MofmeError as exc:  # e.g. smaller than the SSIM window
                    _skip(failed, item.input, MofmeError(f"{item.input}: {exc}"), strict)
                    continue
                record = Record(
                    item.group, item.input.name, item.index, **scores, ms=ms,
                    active_experts=mean_active(passes), height=x.shape[1], width=x.shape[2],
                    first_frame=first,
                )  # fmt: skip
                records.append(record)
            if save_dir is not None:
                save_image(Path(save_dir) / item.group / f"{item.input.stem}.png", to_numpy(out))
            sample = Sample(
                item.group, item.input, item.index, first, frame, out, target, passes, record
            )
            for observe in observers:
                observe(sample)
    finally:
        bar.close()
        routing.close()
    return records, failed


def restore_and_score(
    model: nn.Module,
    data: Sequence[Pair] | Sequence[VideoPair],
    *,
    resize: tuple[int, int] | None = None,
    tile: int | None = None,
    overlap: int = 32,
    amp: str = "none",
    official: bool = False,
    max_frames: int | None = None,
    device: str | torch.device | None = None,
    score: bool = True,
    save_dir: str | Path | None = None,
    progress: bool = True,
    strict: bool = False,
    warmup: bool = True,
    observers: Sequence[Observer] = (),
) -> tuple[list[Record], list[dict[str, str]]]:
    """Restore every image pair, or every video as a stream, and with ``score`` score each
    image or frame against its ground truth: ``(records, failed)``.

    ``data``: image pairs (restored one by one; a video model sees a zero reference) or videos
    (``VideoPair``, restored by a ``VideoRestorer``, ``max_frames`` each). Without ``score`` the
    ground truth is not read and no records are made; observers see every image or frame either
    way. Other arguments as in :func:`evaluate_images`.
    """
    _check_amp(amp)
    items: list[_Item] = []
    position: dict[str, int] = {}
    for entry in data:
        if isinstance(entry, VideoPair):
            snow = list(entry.snow_frames)[:max_frames]
            clean = list(entry.clean_frames)[: len(snow)] if score else [None] * len(snow)
            items += [
                _Item(entry.name, t, Path(s), Path(c) if c else None, new_stream=t == 0)
                for t, (s, c) in enumerate(zip(snow, clean))
            ]
        else:
            index = position[entry.group] = position.get(entry.group, -1) + 1
            items.append(_Item(entry.group, index, Path(entry.input), Path(entry.gt)))
    video = bool(data) and isinstance(data[0], VideoPair)

    def restore(inp: Tensor) -> Tensor:
        if official:
            return tiling.official_crops(model, inp)
        return tiling.restore_image(model, inp, tile=tile, overlap=overlap, amp=amp)

    with _on_device(model, device) as dev:
        runner = (
            _Stream(VideoRestorer(model, tile=tile, overlap=overlap, amp=amp))
            if video
            else _Images(restore, model_in_channels(model))
        )
        return _loop(
            model, items, runner, device=dev, resize=resize, score=score, strict=strict,
            warmup=warmup, save_dir=save_dir, observers=observers, progress=progress,
            unit="frame" if video else "img",
        )  # fmt: skip


# ------------------------------------------------------------------------------ evaluation


def evaluate_images(
    model: nn.Module,
    pairs: Sequence[Pair],
    resize: tuple[int, int] | None = None,
    tile: int | None = None,
    device: str | torch.device | None = None,
    amp: str = "none",
    save_dir: str | Path | None = None,
    progress: bool = True,
    strict: bool = False,
    overlap: int = 32,
    flops_size: tuple[int, int] | None = (240, 240),
    warmup: bool = True,
    official: bool = False,
    observers: Sequence[Observer] = (),
) -> EvalResult:
    """Restore and score every pair; group the results by ``pair.group``.

    Args:
        model: ``MoFMENet`` (or any ``(B, C, H, W) -> (B, 3, H, W)`` module). A 6-channel video
            model gets an all-zero reference, i.e. every image is a first frame.
        pairs: from :func:`mofme.data.pairs.find_pairs`.
        resize: ``(width, height)`` applied to input and ground truth (bicubic), e.g.
            ``(720, 480)`` for the official protocol; ``None`` = full resolution.
        tile: tile side for tiled restoration (``None``: whole image), ``overlap`` pixels shared.
        device: where to run (default: the model's device; the model is moved there). The
            model runs in eval mode; its previous train/eval mode is restored afterwards.
        amp: ``"none"`` or ``"bf16"``.
        save_dir: write restored images to ``save_dir/<group>/<input stem>.png``.
        progress: show a progress bar.
        strict: raise on an unreadable image or size mismatch instead of skipping it (a
            skipped image is warned about and listed in ``EvalResult.failed``).
        flops_size: ``(H, W)`` at which GFLOPs are counted; ``None`` skips the count.
        warmup: run one untimed pass first so the first timing excludes start-up costs.
        official: restore like the official MoFME code instead (overlapping 240×240 crops,
            dense experts, fp32, overlaps averaged), to compare against our default path.
        observers: called with every restored :class:`Sample` (e.g. :class:`Collect`).
    """
    records, failed = restore_and_score(
        model, pairs, resize=resize, tile=tile, overlap=overlap, amp=amp, official=official,
        device=device, save_dir=save_dir, progress=progress, strict=strict, warmup=warmup,
        observers=observers,
    )  # fmt: skip
    meta = {"resize": list(resize) if resize else None, "tile": tile, "amp": amp}
    meta["official_crops"] = official
    meta["device"] = str(torch.device(device) if device is not None else model_device(model))
    return summarise("images", records, failed, model, flops_size, meta)


def evaluate_videos(
    model: nn.Module,
    videos: Sequence[VideoPair],
    tile: int | None = None,
    device: str | torch.device | None = None,
    amp: str = "none",
    save_dir: str | Path | None = None,
    progress: bool = True,
    strict: bool = False,
    resize: tuple[int, int] | None = None,
    overlap: int = 32,
    max_frames: int | None = None,
    flops_size: tuple[int, int] | None = (240, 240),
    warmup: bool = True,
    observers: Sequence[Observer] = (),
) -> EvalResult:
    """Restore every video as a stream and score it frame by frame.

    Each video starts from an all-zero reference (``VideoRestorer.reset``); that first
    restored frame is counted under ``*_first``, the rest under ``*_other``. An unreadable
    frame is skipped (warned, listed in ``failed``) and the stream goes on with the last
    restored frame as reference; ``strict`` raises instead.

    Args:
        videos: from :func:`mofme.data.pairs.find_videos`.
        max_frames: evaluate only the first N frames of each video.
        Other arguments as in :func:`evaluate_images`.
    """
    records, failed = restore_and_score(
        model, videos, resize=resize, tile=tile, overlap=overlap, amp=amp,
        max_frames=max_frames, device=device, save_dir=save_dir, progress=progress,
        strict=strict, warmup=warmup, observers=observers,
    )  # fmt: skip
    meta = {"resize": list(resize) if resize else None, "tile": tile, "amp": amp}
    meta["device"] = str(torch.device(device) if device is not None else model_device(model))
    meta["reference_frame"] = model_in_channels(model) == 6
    return summarise("video", records, failed, model, flops_size, meta)


def limit_per_group(pairs: Sequence[Pair], n: int | None) -> list[Pair]:
    """The first ``n`` pairs of every group (all of them when ``n`` is ``None``)."""
    if n is None:
        return list(pairs)
    seen: dict[str, int] = {}
    kept = []
    for pair in pairs:
        if seen.get(pair.group, 0) < n:
            kept.append(pair)
            seen[pair.group] = seen.get(pair.group, 0) + 1
    return kept
