"""Resizing, grey and 8-bit conversion, and arrays to and from tensors (``torch`` is imported
only by the tensor helpers, so reading and writing images does not load it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

# ITU-R BT.601 luma weights, as Pillow's convert("L"): how an RGB result becomes grey again.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def resize_rgb(rgb: np.ndarray, size: tuple[int, int], bit_depth: int = 8) -> np.ndarray:
    """Bicubic resize of float RGB ``(H, W, 3)`` to ``size = (width, height)`` with Pillow.

    8-bit images are resized as 8-bit RGB, exactly as PIL-based evaluation scripts do
    (``Image.resize(size, Image.BICUBIC)``), so ``--resize 720x480`` reproduces their numbers.
    Higher bit depths are resized per channel in float (mode ``F``) and clipped to ``[0, 1]``.
    """
    width, height = size
    if bit_depth == 8:
        data = np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
        resized = Image.fromarray(data).resize((width, height), Image.Resampling.BICUBIC)
        return np.asarray(resized).astype(np.float32) / 255.0
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(rgb[:, :, c], np.float32), mode="F").resize(
                (width, height), Image.Resampling.BICUBIC
            )
        )
        for c in range(rgb.shape[2])
    ]
    return np.clip(np.stack(planes, axis=2), 0.0, 1.0).astype(np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Float RGB ``(H, W, 3)`` -> grayscale ``(H, W)`` (BT.601 weights, as Pillow's ``"L"``).

    A grayscale input goes through the network as three equal channels, and the restored
    channels differ slightly; writing them as RGB would tint a grey image.
    """
    return np.asarray(rgb, np.float32) @ _LUMA


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float RGB in ``[0, 1]`` -> uint8, rounding halves up (``uint8`` input is returned as is).

    This is the quantisation of the synthetic data and the pictures of the demo and the app;
    :func:`~mofme.data.io.save_image` rounds halves to even (``np.rint``) instead.
    """
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` array -> float32 tensor ``(3, H, W)``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1))).float()


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Tensor ``(3, H, W)`` or ``(1, 3, H, W)`` -> float32 array ``(H, W, 3)`` (CPU, no grad)."""
    import torch

    if tensor.dim() == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"expected a single image (1, 3, H, W), got {tuple(tensor.shape)}")
        tensor = tensor[0]
    if tensor.dim() != 3:
        raise ValueError(f"expected (3, H, W), got {tuple(tensor.shape)}")
    return tensor.detach().to("cpu", torch.float32).permute(1, 2, 0).contiguous().numpy()
