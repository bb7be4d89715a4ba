"""VGG16 weight loading (torchvision layouts, safetensors) and the restoration loss."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

from mofme.errors import MofmeError
from mofme.losses import (
    RestorationLoss,
    VGG16Features,
    load_vgg16,
    speck_penalty,
    weather_mask,
)

# torchvision vgg16().features: convs at these indices, ReLU after each, pools at 4/9/16/23/30.
# The deeper convs 19..28 (512 -> 512) are left out to keep the test fast; conv 17 stands for
# the weights beyond relu3_3 that loading must ignore.
TORCHVISION_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128)}
TORCHVISION_CONVS |= {12: (256, 256), 14: (256, 256), 17: (512, 256)}


@pytest.fixture(scope="module")
def full_state_dict() -> dict[str, torch.Tensor]:
    """A random state dict in torchvision's full-model key layout (features + classifier)."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for index, (out_c, in_c) in TORCHVISION_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(out_c, in_c, 3, 3, generator=gen) * 0.05
        state[f"features.{index}.bias"] = torch.randn(out_c, generator=gen) * 0.01
    # The real classifier is 4096-wide; a small stand-in is enough to check it is ignored.
    state["classifier.0.weight"] = torch.zeros(8, 8)
    state["classifier.0.bias"] = torch.zeros(8)
    return state


def test_module_indices_match_torchvision():
    model = VGG16Features()
    keys = list(model.state_dict())
    expected = [f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14) for p in ("weight", "bias")]
    assert keys == expected
    outputs = model(torch.rand(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outputs] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training


def test_pth_full_features_only_and_safetensors_load_the_same(tmp_path, full_state_dict):
    torch.save(full_state_dict, tmp_path / "vgg16-full.pth")
    features_only = {
        k.removeprefix("features."): v for k, v in full_state_dict.items() if "features" in k
    }
    torch.save(features_only, tmp_path / "vgg16-features.pth")
    save_file(full_state_dict, str(tmp_path / "vgg16.safetensors"))

    x = torch.rand(1, 3, 24, 24)
    reference = load_vgg16(tmp_path / "vgg16-full.pth")
    torch.testing.assert_close(
        reference.features[0].weight, full_state_dict["features.0.weight"], rtol=0, atol=0
    )
    expected = reference(x)
    for name in ("vgg16-features.pth", "vgg16.safetensors"):
        outputs = load_vgg16(tmp_path / name)(x)
        for got, want in zip(outputs, expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bad_weight_files_name_the_file(tmp_path, full_state_dict):
    with pytest.raises(MofmeError, match=r"missing\.pth does not exist"):
        load_vgg16(tmp_path / "missing.pth")

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MofmeError, match=r"junk\.pth"):
        load_vgg16(tmp_path / "junk.pth")

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(MofmeError, match=r"other\.pth lack 'features\.0\.weight'"):
        load_vgg16(tmp_path / "other.pth")

    wrong = dict(full_state_dict)
    wrong["features.5.weight"] = torch.zeros(128, 64, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(MofmeError, match=r"wrong\.pth.*features\.5\.weight.*shape"):
        load_vgg16(tmp_path / "wrong.pth")


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory, full_state_dict):
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(full_state_dict, path)
    return path


def test_loss_is_zero_for_identical_images(vgg_file):
    loss = RestorationLoss(perceptual_weight=0.04, vgg_weights=vgg_file)
    x = torch.rand(2, 3, 24, 24)
    total, parts = loss(x, x.clone())
    assert total.item() == 0.0
    assert parts == {"smooth_l1": 0.0, "perceptual": 0.0, "total": 0.0}


def test_loss_parts_and_gradient(vgg_file):
    loss = RestorationLoss(perceptual_weight=0.04, vgg_weights=vgg_file, smooth_l1_beta=0.5)
    target = torch.rand(2, 3, 24, 24)
    pred = (target + 0.2 * torch.randn_like(target)).requires_grad_()
    total, parts = loss(pred, target)
    expected_l1 = torch.nn.functional.smooth_l1_loss(pred, target, beta=0.5).item()
    assert parts["smooth_l1"] == pytest.approx(expected_l1, rel=1e-6)
    assert parts["perceptual"] > 0
    assert parts["total"] == pytest.approx(parts["smooth_l1"] + 0.04 * parts["perceptual"])
    total.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0

    # Gradient descent on the prediction drives the loss towards 0.
    pred = pred[:1, :, :16, :16].detach().requires_grad_()
    target = target[:1, :, :16, :16]
    optimizer = torch.optim.Adam([pred], lr=0.03)
    first = None
    for _ in range(12):
        optimizer.zero_grad()
        value, _ = loss(pred, target)
        value.backward()
        optimizer.step()
        first = first if first is not None else value.item()
    assert value.item() < 0.5 * first


def test_vgg_runs_in_float32_under_autocast(vgg_file):
    loss = RestorationLoss(vgg_weights=vgg_file)
    target = torch.rand(1, 3, 16, 16)
    pred = target.flip(-1).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = loss(pred.bfloat16(), target.bfloat16())
        features = loss.vgg(target)
    assert total.dtype == torch.float32
    assert features[0].dtype == torch.bfloat16  # autocast applies outside the loss ...
    with torch.autocast("cpu", dtype=torch.bfloat16):
        part = loss.perceptual(pred, target)
    assert part.dtype == torch.float32  # ... but not inside it


def test_without_weights_warns_and_turns_perceptual_off():
    with pytest.warns(UserWarning, match="perceptual loss off: no --vgg-weights given"):
        loss = RestorationLoss(perceptual_weight=0.04, vgg_weights=None)
    x = torch.rand(1, 3, 16, 16)
    total, parts = loss(x, x * 0.5)
    assert parts["perceptual"] == 0.0 and loss.vgg is None
    assert total.item() == pytest.approx(parts["smooth_l1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RestorationLoss(perceptual_weight=0.0)  # deliberately off: no warning


def test_speck_penalty() -> None:
    """Zero for a perfect or a smoothly offset prediction, positive for a local dark dip, and
    its gradient brightens the dip."""
    target = torch.full((1, 3, 16, 16), 0.5)
    assert float(speck_penalty(target, target)) == 0.0
    assert float(speck_penalty(target - 0.1, target)) < 1e-12  # uniformly dark: no speck
    assert float(speck_penalty(target + 0.3, target)) == 0.0  # too bright: another error
    pred = target.clone()
    pred[..., 8, 8] = 0.2
    pred.requires_grad_(True)
    value = speck_penalty(pred, target)
    assert float(value) > 0
    value.backward()
    assert float(pred.grad[..., 8, 8].sum()) < 0  # descent raises the speck's pixel


def test_restoration_loss_speck_term() -> None:
    target = torch.full((2, 3, 16, 16), 0.5)
    pred = target.clone()
    pred[..., 4, 4] = 0.1
    plain = RestorationLoss(perceptual_weight=0.0)
    total0, parts0 = plain(pred, target)
    assert "speck" not in parts0
    total, parts = RestorationLoss(perceptual_weight=0.0, speck_weight=4.0)(pred, target)
    assert parts["speck"] > 0
    assert float(total) == pytest.approx(float(total0) + 4.0 * parts["speck"], rel=1e-6)
    with pytest.raises(ValueError, match="speck_weight"):
        RestorationLoss(perceptual_weight=0.0, speck_weight=-1.0)


@pytest.mark.parametrize("beta", [1.0, 0.01])
def test_restoration_loss_beta(beta: float) -> None:
    target = torch.full((1, 3, 8, 8), 0.5)
    pred = target.clone()
    pred[..., 2, 2] = 0.9  # one flake left: error 0.4
    total, parts = RestorationLoss(perceptual_weight=0.0, smooth_l1_beta=beta)(pred, target)
    per_pixel = 0.5 * 0.4**2 / beta if beta > 0.4 else 0.4 - 0.5 * beta
    assert float(total) == pytest.approx(per_pixel / 64, rel=1e-5) == parts["smooth_l1"]


def test_weather_mask_marks_changed_pixels_only() -> None:
    target = torch.full((1, 3, 6, 6), 0.5)
    degraded = target.clone()
    degraded[0, 1, 2, 3] = 0.9  # a flake, one channel is enough
    degraded[0, :, 4, 4] += 0.01  # below the threshold: noise, not weather
    mask = weather_mask(torch.cat([degraded, torch.zeros_like(degraded)], 1), target)
    assert mask.shape == (1, 1, 6, 6) and float(mask.sum()) == 1.0 and mask[0, 0, 2, 3] == 1.0


def test_local_weather_mask_counts_a_flake_not_a_smooth_veil() -> None:
    yy = torch.linspace(0, 1, 48).view(1, 1, 48, 1)
    xx = torch.linspace(0, 1, 48).view(1, 1, 1, 48)
    target = (0.2 + 0.3 * xx * yy).expand(1, 3, 48, 48).clone()  # smooth content (a sky)
    hazy = target * (0.7 - 0.2 * yy) + 0.3 + 0.2 * yy  # a smooth veil, strongest at the bottom
    hazy[0, :, 20, 30] = 1.0  # and one flake
    both = torch.cat([hazy, torch.zeros_like(hazy)], 1)
    assert float(weather_mask(both, target).mean()) > 0.9  # "any": the veil counts everywhere
    local = weather_mask(both, target, "local")
    assert local[0, 0, 20, 30] == 1.0
    assert float(local.sum()) < 0.05 * local.numel()  # the veil hardly counts, the flake does
    with pytest.raises(ValueError, match="mode"):
        weather_mask(both, target, "global")
    with pytest.raises(ValueError, match="weather_mask"):
        RestorationLoss(perceptual_weight=0.0, weather_mask="global")


@pytest.mark.parametrize("mode", ["any", "local"])
def test_restoration_loss_weather_weight_modes_agree_on_a_flake(mode: str) -> None:
    """On flat content a single flake is weather in both modes: same weighted loss."""
    target = torch.full((1, 3, 8, 8), 0.5)
    degraded = target.clone()
    degraded[..., 2, 2] = 0.9
    loss = RestorationLoss(
        perceptual_weight=0.0, smooth_l1_beta=0.01, weather_weight=3.0, weather_mask=mode
    )
    weighted, _ = loss(degraded, target, degraded)
    assert float(weighted) == pytest.approx(3 * 4 * (0.4 - 0.005) / 192, rel=1e-5)


def test_restoration_loss_weather_weight() -> None:
    target = torch.full((1, 3, 8, 8), 0.5)
    degraded = target.clone()
    degraded[..., 2, 2] = 0.9
    pred = degraded.clone()  # weather left in place, and an error on a clean pixel
    pred[..., 5, 5] = 0.6
    plain, _ = RestorationLoss(perceptual_weight=0.0, smooth_l1_beta=0.01)(pred, target)
    loss = RestorationLoss(perceptual_weight=0.0, smooth_l1_beta=0.01, weather_weight=3.0)
    weighted, parts = loss(pred, target, degraded)
    # error 0.4 on the weather pixel counts 4 times, 0.1 on the clean pixel once (3 channels)
    expected = 3 * (4 * (0.4 - 0.005) + (0.1 - 0.005)) / 192
    assert float(weighted) == pytest.approx(expected, rel=1e-5) == parts["total"]
    assert float(weighted) > float(plain)
    with pytest.raises(ValueError, match="degraded"):
        loss(pred, target)
    with pytest.raises(ValueError, match="weather_weight"):
        RestorationLoss(perceptual_weight=0.0, weather_weight=-1.0)
