"""AMM-FuseNet and the UNet baselines: shapes, gradients, determinism, parameter counts, tile checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.config import load_model
from stages.models import IGNORE_INDEX, MODELS, Segmenter, build_model
from stages.models.ammfusenet import ECA, AMMFuseNet
from stages.models.unet import UNet

IN_CH = (5, 2)
K = 4
TILE = 64
# Tiny widths so every test runs in well under a second.
TINY = {
    "ammfusenet": {
        "base_width": 4,
        "blocks": [1, 1, 1, 1],
        "reduce_width": 4,
        "aspp_width": 8,
        "fuse_width": 8,
        "encoder_bn_momentum": 0.1,
        "keep_unused_aspp_conv1": False,
    },
    "unet": {"base_width": 4, "depth": 4},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(
    b: int = 2, size: int = TILE, in_ch: tuple[int, int] = IN_CH, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, K, (b, size, size), generator=g)
    target[:, :4] = IGNORE_INDEX  # some unlabelled pixels
    return (
        torch.randn(b, in_ch[0], size, size, generator=g),
        torch.randn(b, in_ch[1], size, size, generator=g),
        target,
    )


def _tiny(name: str, in_ch: tuple[int, int] = IN_CH, **overrides) -> Segmenter:
    arch = {**TINY[name], **overrides}
    return build_model(name, in_channels=in_ch, n_classes=K, patch_size=TILE, architecture=arch)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_as_segmenters() -> None:
    assert MODELS["ammfusenet"] is AMMFuseNet
    assert MODELS["unet"] is UNet
    assert issubclass(AMMFuseNet, Segmenter) and issubclass(UNet, Segmenter)
    assert AMMFuseNet.fills_missing_role is True
    assert UNet.fills_missing_role is False
    assert AMMFuseNet.stride == 16


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_backward_shapes_and_finite_grads(name: str) -> None:
    torch.manual_seed(0)
    model = _tiny(name)
    xp, xa, y = _batch()
    logits = model(xp, xa)
    assert logits.shape == (2, K, TILE, TILE)
    assert logits.dtype == torch.float32
    loss, parts = model.training_loss(xp, xa, y)
    assert set(parts) == {"ce", "reg"}
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    model.eval()
    with torch.inference_mode():
        assert model(xp, xa).shape == (2, K, TILE, TILE)
        # fully convolutional: any multiple of the stride, not only the training tile
        assert model(xp[:1, :, :32, :48], xa[:1, :, :32, :48]).shape == (1, K, 32, 48)


def test_amm_unused_aspp_conv1_is_dead_weight() -> None:
    """The code's DenseASPP conv1 is built (for the count) but gets no gradient and changes nothing."""
    torch.manual_seed(0)
    with_conv1 = _tiny("ammfusenet", keep_unused_aspp_conv1=True)
    torch.manual_seed(0)
    without = _tiny("ammfusenet")
    extra = {n for n, _ in with_conv1.named_parameters()} - {n for n, _ in without.named_parameters()}
    assert extra and all(".aspp.unused_conv1." in n for n in extra)
    # 1x1 conv (in x width) + BN (2 x width) per modality
    width, in_ch = TINY["ammfusenet"]["aspp_width"], 4 * TINY["ammfusenet"]["base_width"]
    assert _n_params(with_conv1) - _n_params(without) == 2 * (in_ch * width + 2 * width)
    xp, xa, y = _batch()
    with_conv1.training_loss(xp, xa, y)[0].backward()
    for pname, p in with_conv1.named_parameters():
        assert (p.grad is None) == (pname in extra), pname


def test_amm_paper_preset_parameter_counts() -> None:
    """The official model's count (reference instantiation): Hunan S2 + S1, 7 classes; DFC 2020, 11."""
    arch = load_model("ammfusenet", "paper").architecture
    model = build_model("ammfusenet", in_channels=(13, 2), n_classes=7, patch_size=256, architecture=arch)
    assert _n_params(model) == 62_332_663
    assert [_n_params(e) for e in model.encoders] == [23_539_392, 23_504_896]
    head = _n_params(model.decoders) + _n_params(model.classifier)
    assert head == 15_288_375
    assert sum(_n_params(d.aspp) for d in model.decoders) == 2 * 6_426_124
    dead = sum(p.numel() for n, p in model.named_parameters() if "unused_conv1" in n)
    assert dead == 2 * (256 * 256 + 2 * 256)  # without the dead branch: 62,200,567
    # only the classifier's last conv depends on the class count: 4 x (256 + 1) more parameters
    dfc = build_model("ammfusenet", in_channels=(13, 2), n_classes=11, patch_size=256, architecture=arch)
    assert _n_params(dfc) == 62_333_691


def test_amm_feature_widths_follow_the_code() -> None:
    arch = load_model("ammfusenet", "paper").architecture
    model = build_model("ammfusenet", in_channels=(13, 2), n_classes=7, patch_size=256, architecture=arch)
    assert model.decoders[0].out_channels == 448  # 4 x 48 + 256 per modality
    assert model.classifier[0].in_channels == 896
    assert [m.momentum for m in model.encoders.modules() if isinstance(m, nn.BatchNorm2d)] == [0.01] * 106
    head_bn = [m.momentum for m in model.decoders.modules() if isinstance(m, nn.BatchNorm2d)]
    assert set(head_bn) == {0.1}
    assert model.encoders[0].layer4[0].conv2.dilation == (2, 2)  # output stride 16
    assert model.encoders[0].layer3[0].conv2.stride == (2, 2)


def test_amm_output_stride_8() -> None:
    model = _tiny("ammfusenet", output_stride=8).eval()
    xp, xa, _ = _batch()
    with torch.inference_mode():
        assert model(xp, xa).shape == (2, K, TILE, TILE)
    assert model.encoders[0].layer3[0].conv2.dilation == (2, 2)
    with pytest.raises(ValueError, match="output_stride"):
        _tiny("ammfusenet", output_stride=32)


def test_eca_is_a_shared_three_tap_channel_gate() -> None:
    torch.manual_seed(0)
    eca = ECA()
    assert _n_params(eca) == 3
    x = torch.randn(2, 6, 5, 5)
    w = eca.conv.weight.detach().flatten()
    m = x.mean(dim=(2, 3))
    padded = torch.nn.functional.pad(m, (1, 1))
    gate = torch.sigmoid(w[0] * padded[:, :-2] + w[1] * padded[:, 1:-1] + w[2] * padded[:, 2:])
    torch.testing.assert_close(eca(x), x * gate[:, :, None, None])


@pytest.mark.parametrize(
    ("name", "in_ch", "n_classes"),
    [("ammfusenet", (13, 2), 7), ("ammfusenet", (144, 1), 15), ("unet", (13, 2), 7), ("unet", (144, 0), 15)],
)
def test_quick_presets_build_and_run(name: str, in_ch: tuple[int, int], n_classes: int) -> None:
    spec = load_model(name, "quick")
    tile = spec.training["tile_size"]
    model = build_model(
        name, in_channels=in_ch, n_classes=n_classes, patch_size=tile, architecture=spec.architecture
    )
    assert tile % model.stride == 0
    assert _n_params(model) < 2_500_000
    model.eval()
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        out = model(
            torch.randn(1, in_ch[0], tile, tile, generator=g),
            torch.randn(1, in_ch[1], tile, tile, generator=g),
        )
    assert out.shape == (1, n_classes, tile, tile)


def test_unet_paper_preset_parameter_count() -> None:
    arch = load_model("unet", "paper").architecture
    model = build_model("unet", in_channels=(13, 2), n_classes=7, patch_size=256, architecture=arch)
    assert _n_params(model) == 31_044_935
    assert model.stride == 16


def test_unet_single_modality_and_stacked() -> None:
    """One modality: an empty auxiliary; both: the same UNet over the stacked bands."""
    torch.manual_seed(0)
    single = _tiny("unet", in_ch=(5, 0))
    xp, xa, y = _batch()
    empty = xp.new_zeros(2, 0, TILE, TILE)
    loss, _ = single.training_loss(xp, empty, y)
    loss.backward()
    assert single(xp, empty).shape == (2, K, TILE, TILE)
    assert single.inc[0].in_channels == 5

    torch.manual_seed(0)
    stacked = _tiny("unet", in_ch=(5, 2)).eval()
    assert stacked.inc[0].in_channels == 7
    flat = _tiny("unet", in_ch=(7, 0)).eval()
    flat.load_state_dict(stacked.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(stacked(xp, xa), flat(torch.cat([xp, xa], 1), empty))


def test_unet_bilinear_and_depth() -> None:
    model = _tiny("unet", upsample="bilinear", depth=3)
    assert model.stride == 8
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    xp, xa, _ = _batch(size=24)
    assert model(xp, xa).shape == (2, K, 24, 24)
    with pytest.raises(ValueError, match="upsample"):
        _tiny("unet", upsample="nearest")


@pytest.mark.parametrize("name", sorted(TINY))
def test_same_seed_same_weights_after_one_step(name: str) -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        model = _tiny(name)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        loss, _ = model.training_loss(*_batch(seed=7))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


@pytest.mark.parametrize(("name", "bad"), [("ammfusenet", 56), ("unet", 40)])
def test_tiles_not_a_multiple_of_the_stride_fail_clearly(name: str, bad: int) -> None:
    model = _tiny(name)
    xp, xa, _ = _batch(size=bad)
    with pytest.raises(ValueError, match=rf"multiples of {model.stride}, got {bad}x{bad}"):
        model(xp, xa)
    with pytest.raises(ValueError, match=f"multiple of {model.stride}"):
        build_model(name, in_channels=IN_CH, n_classes=K, patch_size=bad, architecture=TINY[name])


@pytest.mark.parametrize("name", sorted(TINY))
def test_mismatched_inputs_fail_clearly(name: str) -> None:
    model = _tiny(name)
    xp, xa, _ = _batch()
    with pytest.raises(ValueError, match="share batch and grid"):
        model(xp, xa[:, :, :32])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(xp[0], xa[0])


def test_invalid_architecture_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        _tiny("ammfusenet", aspp_width=0)
    with pytest.raises(ValueError, match="depth"):
        _tiny("unet", depth=0)
    with pytest.raises(ValueError, match="in_channels"):
        _tiny("ammfusenet", in_ch=(5, 0))  # a fusion model needs both roles filled
