"""Training loss: SmoothL1 + λ · VGG16 perceptual (SPEC §8).

The perceptual term follows TransWeather / MoFME: mean squared error between VGG16 features of
the prediction and the target at ``relu1_2``, ``relu2_2`` and ``relu3_3``, averaged over the
three layers, weighted by ``λ = 0.04``.

VGG16 weights are never downloaded: the user passes a local file, e.g. torchvision's
``vgg16-397923af.pth``. The conv stack is built here (no torchvision dependency) with
torchvision's module indices, so that file loads as is. Without weights the perceptual term is
switched off with a warning.

Unlike TransWeather, which feeds raw ``[0, 1]`` images to VGG, inputs are normalised with the
ImageNet mean / std the weights were trained with (``normalize=False`` restores the raw
behaviour).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mofme.errors import MofmeError
from mofme.metrics import local_deviation
from mofme.training.config import WEATHER_MASKS

__all__ = [
    "VGG_LAYERS",
    "RestorationLoss",
    "VGG16Features",
    "load_vgg16",
    "speck_penalty",
    "weather_mask",
]

#: torchvision ``vgg16().features`` index of the ReLU after each named conv.
VGG_LAYERS: dict[str, int] = {
    "relu1_1": 1,
    "relu1_2": 3,
    "relu2_1": 6,
    "relu2_2": 8,
    "relu3_1": 11,
    "relu3_2": 13,
    "relu3_3": 15,
    "relu4_1": 18,
    "relu4_2": 20,
    "relu4_3": 22,
    "relu5_1": 25,
    "relu5_2": 27,
    "relu5_3": 29,
}

# torchvision VGG16 configuration "D": output channels per conv, "M" = 2x2 max pool.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """Frozen VGG16 conv stack returning intermediate ReLU activations.

    ``self.features`` is an ``nn.Sequential`` with exactly torchvision's indices, cut after the
    deepest requested layer, so its state dict keys are ``features.N.weight`` /
    ``features.N.bias`` as in torchvision's full model.

    Args:
        layers: names from :data:`VGG_LAYERS`, returned in this order.
        normalize: subtract the ImageNet mean and divide by its std inside ``forward``.

    ``forward(x)``: ``(B, 3, H, W)`` in ``[0, 1]`` -> list of ``(B, C_l, H_l, W_l)`` tensors.
    """

    def __init__(
        self,
        layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3"),
        normalize: bool = True,
    ) -> None:
        super().__init__()
        unknown = [name for name in layers if name not in VGG_LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG16 layers {unknown}; choose from {list(VGG_LAYERS)}")
        self.layers = tuple(layers)
        self._taps = [VGG_LAYERS[name] for name in layers]
        self.normalize = normalize
        modules: list[nn.Module] = []
        in_channels = 3
        for item in _VGG16_CFG:
            if item == "M":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                modules.append(nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1))
                modules.append(nn.ReLU(inplace=True))
                in_channels = int(item)
        self.features = nn.Sequential(*modules[: max(self._taps) + 1])
        # Not persistent: the state dict stays identical to torchvision's layout.
        self.register_buffer(
            "mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16Features:
        """Stay in eval mode: this is a fixed feature extractor."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.normalize:
            x = (x - self.mean) / self.std
        outputs: list[torch.Tensor] = []
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self._taps:
                outputs.append(x)
        # Reorder to the requested layer order.
        order = sorted(set(self._taps))
        return [outputs[order.index(tap)] for tap in self._taps]


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise MofmeError(f"VGG16 weights {path} hold a {type(state).__name__}, not a state dict")
    return state


def load_vgg16(
    path: str | os.PathLike[str],
    layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3"),
    normalize: bool = True,
) -> VGG16Features:
    """Build :class:`VGG16Features` and load weights from a local file.

    Accepts torchvision's full-model state dict (``features.N.weight`` plus ``classifier.*``,
    e.g. ``vgg16-397923af.pth``), a features-only dict (``N.weight``), either with a
    ``module.`` prefix, as ``.pth`` / ``.pt`` (``torch.load``) or ``.safetensors``. Keys
    beyond the deepest requested layer are ignored.

    Raises:
        MofmeError: the file is missing or unreadable, or lacks / mis-shapes a needed weight.
    """
    path = Path(path)
    if not path.is_file():
        raise MofmeError(f"VGG16 weights file {path} does not exist")
    try:
        raw = _read_state_dict(path)
    except MofmeError:
        raise
    except Exception as exc:
        # torch.load / safetensors raise assorted types on a corrupt or foreign file.
        raise MofmeError(f"cannot read VGG16 weights {path}: {exc}") from exc

    features: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        key = key.removeprefix("module.")
        key = key.removeprefix("features.")
        if key.split(".")[0].isdigit() and isinstance(value, torch.Tensor):
            features[key] = value

    model = VGG16Features(layers=layers, normalize=normalize)
    expected = model.features.state_dict()
    for key, target in expected.items():
        if key not in features:
            raise MofmeError(
                f"VGG16 weights {path} lack 'features.{key}' (or '{key}'); "
                "expected a torchvision vgg16 state dict"
            )
        if tuple(features[key].shape) != tuple(target.shape):
            raise MofmeError(
                f"VGG16 weights {path}: 'features.{key}' has shape "
                f"{tuple(features[key].shape)}, expected {tuple(target.shape)}"
            )
    model.features.load_state_dict({key: features[key].float() for key in expected})
    return model


def speck_penalty(pred: torch.Tensor, target: torch.Tensor, window: int = 9) -> torch.Tensor:
    """Mean squared *local dark dip* of ``pred`` against ``target`` (both ``(B, 3, H, W)``).

    With ``e = target - pred`` averaged over the channels and clamped at 0 (only too dark counts),
    the dip is ``relu(e - mean of e over the window x window neighbourhood)``: large where one
    pixel or a small blob was made darker than its surroundings' error — the speck an
    over-subtracting snow / rain model leaves where a particle was — and zero for a smooth
    error such as a brightness or haze offset. Pixel losses weigh a speck by its energy only,
    which is small next to the particle it replaced; this term weighs it as the eye does. The
    measurement twin is :func:`mofme.metrics.dark_speck_share` (which takes the most darkened
    channel instead of the mean, to count coloured specks too; the mean keeps this smooth).
    """
    e = (target.float() - pred.float()).mean(dim=1, keepdim=True).clamp(min=0.0)
    return F.relu(local_deviation(e, window)).pow(2).mean()


WEATHER_THRESHOLD = 0.02
"""A pixel counts as weather when its input differs from the target by more than this (any
channel, [0, 1] scale): about 5 grey levels, above the PNG and resampling noise of clean pairs."""


LOCAL_WINDOW = 15
"""Box window (pixels) whose mean change :func:`weather_mask`'s ``local`` mode subtracts: wider
than flakes, streaks and most lens drops, narrower than the slow changes of haze and fog."""


def weather_mask(degraded: torch.Tensor, target: torch.Tensor, mode: str = "any") -> torch.Tensor:
    """``(B, 1, H, W)`` 1.0 where the input's weather changed the pixel, else 0.0.

    ``"any"``: the pixel differs from the target by more than :data:`WEATHER_THRESHOLD`.
    ``"local"``: its change differs by that much from the mean change around it
    (:data:`LOCAL_WINDOW`), so particles (flakes, streaks, drops) count and the smooth shift of
    haze does not (its loss of contrast on texture still does): weighting every hazy pixel
    teaches a model to darken any bright, low-contrast photo, clean ones included.
    """
    diff = degraded[:, :3].float() - target.float()  # (B, 3, H, W)
    if mode == "local":
        diff = local_deviation(diff, LOCAL_WINDOW)
    elif mode != "any":
        raise ValueError(f"weather mask mode must be one of {WEATHER_MASKS}, got {mode!r}")
    return (diff.abs().amax(1, keepdim=True) > WEATHER_THRESHOLD).float()


class RestorationLoss(nn.Module):
    """``SmoothL1(pred, target) + perceptual_weight · perceptual(pred, target)
    + speck_weight · speck_penalty(pred, target)``; with ``weather_weight`` w, the SmoothL1
    term of a pixel that the weather changed (:func:`weather_mask`) counts 1 + w times.

    Args:
        perceptual_weight: λ (0.04 in the paper); 0 switches the perceptual term off.
        vgg_weights: local VGG16 weights file (see :func:`load_vgg16`). ``None`` with a
            positive weight switches the term off with a one-line warning.
        smooth_l1_beta: SmoothL1 transition point (PyTorch's ``beta``).
        vgg_normalize: ImageNet mean/std normalisation before VGG (see module docstring).
        speck_weight: weight of :func:`speck_penalty` (0, the paper's loss: off).
        weather_weight: extra weight of weather pixels in the SmoothL1 term (0: off, the
            paper's loss). Needs the degraded input: ``forward(pred, target, degraded)``.
        weather_mask: which pixels count as weather (:func:`weather_mask`'s ``mode``).

    ``forward(pred, target)`` with ``(B, 3, H, W)`` tensors returns ``(total, parts)``: the
    scalar loss to back-propagate and floats ``{"smooth_l1", "perceptual", "total"}`` (plus
    ``"speck"`` when that term is on) for logging. Every term is computed in float32, even
    under autocast.
    """

    def __init__(
        self,
        perceptual_weight: float = 0.04,
        vgg_weights: str | os.PathLike[str] | None = None,
        smooth_l1_beta: float = 1.0,
        vgg_normalize: bool = True,
        speck_weight: float = 0.0,
        weather_weight: float = 0.0,
        weather_mask: str = "any",
    ) -> None:
        super().__init__()
        if weather_mask not in WEATHER_MASKS:
            raise ValueError(f"weather_mask must be one of {WEATHER_MASKS}, got {weather_mask!r}")
        self.weather_mask = weather_mask
        if not speck_weight >= 0:
            raise ValueError(f"speck_weight must be >= 0, got {speck_weight}")
        if not weather_weight >= 0:
            raise ValueError(f"weather_weight must be >= 0, got {weather_weight}")
        self.speck_weight = speck_weight
        self.weather_weight = weather_weight
        self.smooth_l1_beta = smooth_l1_beta
        self.vgg: VGG16Features | None = None
        if perceptual_weight > 0 and vgg_weights is None:
            warnings.warn("perceptual loss off: no --vgg-weights given", stacklevel=2)
        elif perceptual_weight > 0:
            self.vgg = load_vgg16(vgg_weights, normalize=vgg_normalize)
        self.perceptual_weight = perceptual_weight if self.vgg is not None else 0.0

    def perceptual(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over layers of the feature MSE; gradients flow to ``pred`` only."""
        if self.vgg is None:
            return pred.new_zeros((), dtype=torch.float32)
        with _no_autocast(pred.device):
            pred_features = self.vgg(pred.float())
            with torch.no_grad():
                target_features = self.vgg(target.float())
            terms = [F.mse_loss(p, t) for p, t in zip(pred_features, target_features)]
        return torch.stack(terms).mean()

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, degraded: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        with _no_autocast(pred.device):
            if self.weather_weight > 0:
                if degraded is None:
                    raise ValueError("weather_weight needs the degraded input")
                per_pixel = F.smooth_l1_loss(
                    pred.float(), target.float(), beta=self.smooth_l1_beta, reduction="none"
                )
                mask = weather_mask(degraded, target, self.weather_mask)
                weight = 1.0 + self.weather_weight * mask
                pixel = (per_pixel * weight).mean()
            else:
                pixel = F.smooth_l1_loss(pred.float(), target.float(), beta=self.smooth_l1_beta)
        total = pixel
        perceptual = pred.new_zeros((), dtype=torch.float32)
        if self.vgg is not None:
            perceptual = self.perceptual(pred, target)
            total = pixel + self.perceptual_weight * perceptual
        parts = {"smooth_l1": float(pixel.detach()), "perceptual": float(perceptual.detach())}
        if self.speck_weight > 0:
            with _no_autocast(pred.device):
                speck = speck_penalty(pred, target)
            total = total + self.speck_weight * speck
            parts["speck"] = float(speck.detach())
        parts["total"] = float(total.detach())
        return total, parts


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast on ``device`` so the loss runs in float32."""
    if device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
