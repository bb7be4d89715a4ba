"""The reference frame a 6-channel video model sees during training (SPEC §4)."""

from __future__ import annotations

import torch
from torch import Tensor

from mofme.inference.video import with_reference


def model_input(
    frame: Tensor,
    t: int,
    previous_pred: Tensor | None,
    previous_gt: Tensor | None,
    reference: str,
    zero_ref_prob: float,
) -> Tensor:
    """Input ``(B, 6, H, W)`` of a reference-frame model for frame ``t`` of a clip.

    ``frame``: degraded frame t ``(B, 3, H, W)``. The reference is zeros for ``t == 0`` and for
    ``reference == "none"``; otherwise the detached prediction (``"prediction"``) or the ground
    truth (``"teacher"``) of frame t-1, replaced by zeros per sample with probability
    ``zero_ref_prob`` (drawn from the global RNG of the frame's device).
    """
    if t == 0 or reference == "none":
        return with_reference(frame)
    source = previous_pred if reference == "prediction" else previous_gt
    if source is None:
        raise ValueError(f"reference {reference!r} for frame {t} needs frame {t - 1}")
    ref = source.detach().to(frame.dtype)
    if zero_ref_prob > 0:
        keep = torch.rand(frame.shape[0], device=frame.device) >= zero_ref_prob
        ref = ref * keep.to(frame.dtype).view(-1, 1, 1, 1)
    return with_reference(frame, ref)
