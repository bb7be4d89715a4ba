"""Streaming video restoration with the reference-frame model (SPEC §4).

A video model (``in_channels == 6``) sees ``[degraded_t, restored_{t-1}]``; the reference of
the first frame (and of the first frame after ``reset()``) is all zeros, exactly as in training.
An image model (``in_channels == 3``) restores frame by frame. Only the previous restored frame
is kept, so memory does not grow with the length of the video.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mofme.inference.tiling import model_device, restore_image


def model_in_channels(model: nn.Module) -> int:
    """3 (image model) or 6 (video model with a reference frame)."""
    cfg = getattr(model, "cfg", None)
    return int(cfg.in_channels) if cfg is not None else 3


class VideoRestorer:
    """Restore a video one frame at a time.

    >>> restorer = VideoRestorer(model)
    >>> for frame in frames:            # (1, 3, H, W) in [0, 1]
    ...     out = restorer.step(frame)  # (1, 3, H, W) float32 on the model's device

    Args:
        model: a ``MoFMENet`` with 3 or 6 input channels.
        tile, overlap, amp, channels_last, batch_tiles: passed to ``restore_image`` for every
            frame.
    """

    def __init__(
        self,
        model: nn.Module,
        tile: int | None = None,
        overlap: int = 32,
        amp: str = "none",
        channels_last: bool = False,
        batch_tiles: int = 8,
    ) -> None:
        self.model = model
        self.tile = tile
        self.overlap = overlap
        self.batch_tiles = batch_tiles
        self.amp = amp
        self.channels_last = channels_last
        self.in_channels = model_in_channels(model)
        if self.in_channels not in (3, 6):
            raise ValueError(f"VideoRestorer needs a 3- or 6-channel model, got {self.in_channels}")
        self.device = model_device(model)
        self._previous: Tensor | None = None  # (1, 3, H, W) restored frame t-1
        self.frames_done = 0

    @property
    def uses_reference(self) -> bool:
        """Whether the model takes the previous restored frame as a second input."""
        return self.in_channels == 6

    def reset(self) -> None:
        """Start a new sequence: the next frame gets an all-zero reference."""
        self._previous = None
        self.frames_done = 0

    def reference_for(self, frame: Tensor) -> Tensor:
        """The reference frame ``(1, 3, H, W)`` the next ``step`` will use (zeros at the start)."""
        if self._previous is None:
            return torch.zeros_like(frame)
        if self._previous.shape != frame.shape:
            raise ValueError(
                f"frame size changed from {tuple(self._previous.shape[-2:])} to "
                f"{tuple(frame.shape[-2:])} within one sequence; call reset() between videos"
            )
        return self._previous

    def step(self, frame: Tensor) -> Tensor:
        """Restore the next frame ``(1, 3, H, W)`` in [0, 1] -> ``(1, 3, H, W)`` float32."""
        if frame.ndim != 4 or frame.shape[:2] != (1, 3):
            raise ValueError(f"expected a frame (1, 3, H, W), got {tuple(frame.shape)}")
        frame = frame.to(device=self.device, dtype=torch.float32)
        inp = torch.cat([frame, self.reference_for(frame)], 1) if self.uses_reference else frame
        out = restore_image(
            self.model,
            inp,
            tile=self.tile,
            overlap=self.overlap,
            batch_tiles=self.batch_tiles,
            amp=self.amp,
            channels_last=self.channels_last,
        )
        if self.uses_reference:
            self._previous = out
        self.frames_done += 1
        return out


def restore_clip(
    model: nn.Module,
    frames: Tensor,
    tile: int | None = None,
    overlap: int = 32,
    amp: str = "none",
) -> Tensor:
    """Restore a whole clip ``(T, 3, H, W)`` -> ``(T, 3, H, W)`` (same values as streaming)."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames (T, 3, H, W), got {tuple(frames.shape)}")
    restorer = VideoRestorer(model, tile=tile, overlap=overlap, amp=amp)
    return torch.cat([restorer.step(frames[t : t + 1]) for t in range(frames.shape[0])])
