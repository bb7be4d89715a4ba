"""``train.amp: auto``: the training precision from what this machine measured.

Resolved once, at the start of a fresh run (a resumed run takes its state's choice):

* **CUDA**: ``bf16`` where the GPU supports it, else ``none`` (fp32). fp16 is never chosen
  automatically (it needs a GradScaler and can overflow); ask for it explicitly.
* **CPU**: the inference precision probe (``mofme.inference.precision.probe``, cached per
  machine, torch version, thread count and model) times this model in fp32 and bf16 autocast;
  ``bf16`` when it is at least ``MIN_GAIN`` (1.05x) faster than fp32, else ``none``. The probe
  times the forward pass at its small probe size, a proxy for a training step (forward plus a
  backward of about twice its cost, mostly in the same layers); the printed line says so. Its
  output tolerance (made for inference) does not decide here: bf16 training is judged by its
  loss curve (``scripts/train_precision.py``).

The probe runs the model in eval mode without gradients and restores every RNG afterwards, so
choosing a precision changes neither the weights nor the random numbers the run draws.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

#: The names ``train.amp`` values are shown with.
SHOWN = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}


def shown(amp: str) -> str:
    """``none`` -> ``fp32``: what the user reads."""
    return SHOWN.get(amp, amp)


def resolve_auto(
    model: nn.Module, device: torch.device, log: Callable[[str], None] | None = None
) -> tuple[str, str]:
    """``(amp, why)`` for ``train.amp: auto`` on ``device``: amp is ``bf16`` or ``none``."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} supports bf16"
        return "none", f"auto: {torch.cuda.get_device_name(device)} has no bf16"
    if device.type != "cpu":
        return "none", f"auto: no probe on {device.type}"
    from mofme.inference import precision
    from mofme.training.state import rng_state, set_rng_state

    rng = rng_state()
    try:
        # An eval-mode copy: the probe's int8 / bf16 copies then time what inference runs,
        # and the cached entry stays valid for inference with the same weights.
        result = precision.probe(copy.deepcopy(model).eval(), device, log=log)
    finally:
        set_rng_state(rng)  # the run draws the same random numbers as without the probe
    how = "cached probe" if result.cached else "probe"
    h, w = result.size
    proxy = f"forward pass at {h}x{w} as a proxy for a training step"
    if "bf16" not in result.speedup:
        why = result.skipped.get("bf16", "not measured")
        return "none", f"auto: {how} did not time bf16: {why}"
    gain = result.speedup["bf16"]
    if gain >= precision.MIN_GAIN:
        return "bf16", f"auto: {how} bf16 {gain:.2f}x faster than fp32 on this CPU, {proxy}"
    return "none", (
        f"auto: {how} bf16 {gain:.2f}x the speed of fp32 on this CPU, needs "
        f">= {precision.MIN_GAIN:g}x; {proxy}"
    )
