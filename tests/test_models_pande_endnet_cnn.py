"""Pande & Banerjee, EndNet and the single-stream CNN: shapes, gradients, determinism, faithfulness checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stages.config import load_model
from stages.data.store import ModalityBinding
from stages.models import MODELS, PatchClassifier, build_model
from stages.models.cnn import SingleStreamCNN
from stages.models.endnet import EndNet, local_profile, profile_length
from stages.models.pande import CoupledLoop, PandeBanerjee, SpectralStem, band_grid
from stages.train import make_schedule
from tests.conftest import assert_one_step_is_reproducible

# Tiny widths so every test runs in well under a second.
TINY = {
    "pande_banerjee": {
        "width": 4,
        "kernel_sizes": [3, 5],
        "fusion_width": 4,
        "decoder_width": 4,
        "stem3d_filters": 2,
        "bn_momentum": 0.1,
    },
    "endnet": {"encoder_widths": [4, 8], "joint_widths": [8, 4], "decoder_widths": [4]},
    "cnn": {"spectral_width": 4, "width": 6, "depth": 2, "hidden": 8, "dropout": 0.2},
}
# HSI + LiDAR (Houston2013) and HSI + SAR (Berlin) band counts.
GEOMETRIES = [(144, 1), (244, 4)]
K = 5
REC_PARTS = {"ce", "rec_aux", "rec_primary", "reg"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(in_ch: tuple[int, int], b: int = 3, p: int = 11, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, in_ch[0], p, p, generator=g),
        torch.randn(b, in_ch[1], p, p, generator=g),
        torch.randint(0, K, (b,), generator=g),
    )


def _tiny(name: str, in_ch: tuple[int, int], p: int = 11, **over: object) -> PatchClassifier:
    return build_model(
        name, in_channels=in_ch, n_classes=K, patch_size=p, architecture={**TINY[name], **over}
    )


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_registered() -> None:
    assert MODELS["pande_banerjee"] is PandeBanerjee
    assert MODELS["endnet"] is EndNet
    assert MODELS["cnn"] is SingleStreamCNN
    assert PandeBanerjee.fills_missing_role and EndNet.fills_missing_role
    assert not SingleStreamCNN.fills_missing_role


@pytest.mark.parametrize("in_ch", GEOMETRIES, ids=["hsi+lidar", "hsi+sar"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_backward_finite_grads(name: str, in_ch: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = _tiny(name, in_ch)
    xp, xa, y = _batch(in_ch)
    logits = model(xp, xa)
    assert logits.shape == (3, K) and logits.dtype == torch.float32
    loss, parts = model.training_loss(xp, xa, y)
    assert set(parts) == (REC_PARTS if name != "cnn" else {"ce", "reg"})
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    model.eval()
    with torch.inference_mode():
        assert model(xp, xa).shape == (3, K)


@pytest.mark.parametrize("name", sorted(TINY))
def test_same_seed_same_weights_after_one_step(name: str) -> None:
    assert_one_step_is_reproducible(
        lambda: _tiny(name, (144, 1)), _batch((144, 1)), lambda params: torch.optim.NAdam(params, lr=1e-3)
    )


# --- Pande & Banerjee -------------------------------------------------------------------------------


def test_pande_paper_preset_matches_official_parameter_count() -> None:
    spec = load_model("pande_banerjee", "paper")
    torch.manual_seed(0)
    model = build_model(
        "pande_banerjee", in_channels=(144, 1), n_classes=15, patch_size=11, architecture=spec.architecture
    )
    decoders = _n_params(model.rec_aux) + _n_params(model.rec_primary)
    assert _n_params(model) == 1_806_552
    assert decoders == 887_505
    assert _n_params(model) - decoders == 919_047
    # The 3-D stems hold the code's Conv3D(12, 3x3x3) on a 12 x 12 band grid.
    assert [tuple(b.stem_primary.conv3d.weight.shape) for b in model.branches] == [(12, 12, 3, 3, 3)] * 2
    xp, xa, _ = _batch((144, 1), b=2)
    with torch.inference_mode():
        logits, rec_aux, rec_primary = model.reconstruct(xp, xa)
    assert logits.shape == (2, 15)
    assert rec_aux.shape == (2, 1, 11, 11) and rec_primary.shape == (2, 144, 11, 11)


def test_pande_training_loss_is_ce_plus_weighted_rmse() -> None:
    torch.manual_seed(0)
    arch = {**TINY["pande_banerjee"], "rec_weight_aux": 0.5, "rec_weight_primary": 2.0}
    model = build_model("pande_banerjee", in_channels=(6, 2), n_classes=K, patch_size=11, architecture=arch)
    model.eval()  # BN on running statistics: two passes give the same numbers
    xp, xa, y = _batch((6, 2))
    loss, parts = model.training_loss(xp, xa, y)
    with torch.no_grad():
        logits, rec_aux, rec_primary = model.reconstruct(xp, xa)
    assert parts["ce"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert parts["rec_aux"] == pytest.approx(float((xa - rec_aux).pow(2).mean().sqrt()), rel=1e-5)
    assert parts["rec_primary"] == pytest.approx(float((xp - rec_primary).pow(2).mean().sqrt()), rel=1e-5)
    assert parts["reg"] == 0.0
    expected = parts["ce"] + 0.5 * parts["rec_aux"] + 2.0 * parts["rec_primary"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("bands", "filters"), [(144, None), (144, 2), (244, 3), (1, None)])
def test_pande_spectral_stem_is_the_keras_conv3d(bands: int, filters: int | None) -> None:
    """The depth-folded 2-D computation equals Conv3D on the Keras band grid (zero-padded to s * s)."""
    torch.manual_seed(0)
    stem = SpectralStem(bands, 4, 3, filters)
    s = band_grid(bands)
    assert s == math.ceil(math.sqrt(bands)) and stem.filters == (filters or s)
    x = torch.randn(2, bands, 7, 7)
    padded = F.pad(x, (0, 0, 0, 0, 0, s * s - bands))
    # Keras Reshape([P, P, s, s]) of a band-last patch: band = depth * s + channel; Conv3D; reshape back.
    grid = padded.reshape(2, s, s, 7, 7).transpose(1, 2)  # (B, channel, depth, P, P)
    ref = F.relu(stem.conv3d(grid)).transpose(1, 2).reshape(2, s * stem.filters, 7, 7)
    torch.testing.assert_close(stem.spectral_conv(x), ref, rtol=1e-5, atol=1e-5)


def _keras_loop(loop: CoupledLoop, ch1: torch.Tensor, cl1: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The official code's Stage I / II, line by line (variable names as in ``my_cnn``)."""

    def my_conv(x: torch.Tensor, i: int, bn: torch.nn.Module) -> torch.Tensor:
        return bn(F.relu(loop.convs[i](x)))

    bp, ba = loop.bn_primary, loop.bn_auxiliary
    cv1 = my_conv(ch1, 0, bp[0])
    c1 = ch1 + cv1
    cv2 = my_conv(c1, 1, bp[1])
    c2 = ch1 + cv1 + cv2
    cv3 = my_conv(c2, 2, bp[2])
    c3 = ch1 + cv1 + cv2 + cv3
    cv4 = my_conv(c3, 3, bp[3])
    cvl1 = my_conv(cl1, 0, ba[0])
    cl1 = cl1 + cvl1  # the reused variable
    cvl2 = my_conv(cl1, 1, ba[1])
    cl2 = cl1 + cvl1 + cvl2
    cvl3 = my_conv(cl2, 2, ba[2])
    cl3 = cl1 + cvl1 + cvl2 + cvl3
    cvl4 = my_conv(cl3, 3, ba[3])
    cv1 = my_conv(cv2 + cv3 + cv4, 0, bp[4])
    cv2 = my_conv(cv1 + cv3 + cv4, 1, bp[5])
    cv3 = my_conv(cv1 + cv2 + cv4, 2, bp[6])
    cv4 = my_conv(cv1 + cv2 + cv3, 3, bp[7])
    cvl1 = my_conv(cvl2 + cvl3 + cvl4, 0, ba[4])
    cvl2 = my_conv(cvl1 + cvl3 + cvl4, 1, ba[5])
    cvl3 = my_conv(cvl1 + cvl2 + cvl4, 2, ba[6])
    cvl4 = my_conv(cvl1 + cvl2 + cvl3, 3, ba[7])
    gap = torch.cat([cv1, cv2, cv3, cv4], 1).mean(dim=(2, 3))
    gapl = torch.cat([cvl1, cvl2, cvl3, cvl4], 1).mean(dim=(2, 3))
    return gap, gapl


def test_pande_self_loop_matches_the_official_code_and_quirk_switch() -> None:
    torch.manual_seed(0)
    loop = CoupledLoop(4, 3, 0.1, lidar_quirk=True)  # train mode: BN on batch statistics
    xh, xl = torch.randn(3, 4, 7, 7), torch.randn(3, 4, 7, 7)
    for got, ref in zip(loop(xh, xl), _keras_loop(loop, xh, xl), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # With the same input in both streams the symmetric loop gives equal features; the quirk does not.
    fp, fa = loop(xh, xh)
    assert not torch.allclose(fp, fa)
    loop.lidar_quirk = False
    fp, fa = loop(xh, xh)
    torch.testing.assert_close(fp, fa)
    # Coupling: the four shared convs are the only convs; 16 unshared BNs (2 streams x 2 stages x 4).
    assert len(loop.convs) == 4 and len(loop.bn_primary) + len(loop.bn_auxiliary) == 16


@pytest.mark.parametrize("p", [5, 7, 13])
def test_pande_decoders_follow_the_patch_size(p: int) -> None:
    torch.manual_seed(0)
    model = _tiny("pande_banerjee", (6, 2), p=p)
    xp, xa, y = _batch((6, 2), p=p)
    _, rec_aux, rec_primary = model.reconstruct(xp, xa)
    assert rec_aux.shape == (3, 2, p, p) and rec_primary.shape == (3, 6, p, p)
    assert model.training_loss(xp, xa, y)[0].isfinite()


def test_pande_rejects_small_patches_and_bad_kernels() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        _tiny("pande_banerjee", (6, 2), p=3)
    with pytest.raises(ValueError, match="kernel_sizes"):
        build_model(
            "pande_banerjee",
            in_channels=(6, 2),
            n_classes=K,
            patch_size=11,
            architecture={**TINY["pande_banerjee"], "kernel_sizes": [4]},
        )


def test_pande_paper_schedule_reproduces_the_keras_scheduler() -> None:
    """Keras: lr kept while epoch < 20, then lr * exp(-0.005) at the start of every later epoch."""
    training = load_model("pande_banerjee", "paper").training
    base = training["optimizer"]["lr"]
    opt = torch.optim.NAdam([torch.nn.Parameter(torch.zeros(1))], lr=base)
    schedule = make_schedule(opt, training["schedule"], training["epochs"])
    keras, lr = [], base
    for epoch in range(60):
        lr = lr if epoch < 20 else lr * math.exp(-0.005)
        keras.append(lr)
    ours = []
    for _ in range(60):
        ours.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert ours == pytest.approx(keras, rel=1e-9)


# --- EndNet -----------------------------------------------------------------------------------------


def test_endnet_paper_preset_matches_the_official_parameter_count() -> None:
    """92,628: the code's Houston2013 model (144 HSI bands, 21 LiDAR features). Our 21 LiDAR features
    are the DSM's local profile at P = 11 (1 + 4 x 5 window sizes); fed the raw centre pixel, 91,968."""
    arch = load_model("endnet", "paper").architecture
    assert arch["aux_features"] == "profile"

    def count(ch: tuple[int, int], **over: str) -> int:
        model = build_model(
            "endnet", in_channels=ch, n_classes=15, patch_size=11, architecture={**arch, **over}
        )
        return _n_params(model)

    assert count((144, 1)) == 92_628
    assert (
        count((144, 21), aux_features="centre") == 92_628 and count((144, 1), aux_features="centre") == 91_968
    )


def test_endnet_local_profile_by_hand() -> None:
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 3.0  # a 3 m "roof" pixel in a flat 5 x 5 patch, one 1 m neighbour
    x[0, 0, 1, 2] = 1.0
    prof = local_profile(x)[0].tolist()
    mean3, mean5 = 4.0 / 9, 4.0 / 25
    std3 = (sum(v * v for v in (3.0, 1.0)) / 9 - mean3**2) ** 0.5
    std5 = (sum(v * v for v in (3.0, 1.0)) / 25 - mean5**2) ** 0.5
    # centre, then per window (3, 5): centre - min, max - centre, mean - centre, std
    expected = [3.0, 3.0, 0.0, mean3 - 3.0, std3, 3.0, 0.0, mean5 - 3.0, std5]
    assert prof == pytest.approx(expected, rel=1e-6) and profile_length(5) == len(expected)
    assert local_profile(torch.randn(2, 3, 11, 11)).shape == (2, 3 * 21)


def test_endnet_reads_the_centre_pixel_and_the_auxiliary_profile_and_its_losses() -> None:
    torch.manual_seed(0)
    model = _tiny("endnet", (6, 2)).eval()
    centre_only = _tiny("endnet", (6, 2), aux_features="centre").eval()
    xp, xa, y = _batch((6, 2))
    noisy_p, noisy_a = xp + torch.randn_like(xp), xa + torch.randn_like(xa)
    noisy_p[:, :, 5, 5], noisy_a[:, :, 5, 5] = xp[:, :, 5, 5], xa[:, :, 5, 5]
    with torch.inference_mode():
        assert torch.equal(model(xp, xa), model(noisy_p, xa))  # the HSI: its centre pixel only
        assert not torch.allclose(model(xp, xa), model(xp, noisy_a))  # the auxiliary: its neighbourhood
        assert torch.equal(centre_only(xp, xa), centre_only(noisy_p, noisy_a))
    loss, parts = model.training_loss(xp, xa, y)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 2 + 2 + 2 * 2 + 1  # encoders, joint + head, decoders (TINY widths)
    expected_reg = 0.001 * 0.5 * sum(float(m.weight.detach().pow(2).sum()) for m in linears)
    assert parts["reg"] == pytest.approx(expected_reg, rel=1e-5)
    total = parts["ce"] + parts["reg"] + parts["rec_primary"] + parts["rec_aux"]
    assert loss.item() == pytest.approx(total, rel=1e-5)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert all(bn.momentum == pytest.approx(0.1) and bn.eps == pytest.approx(1e-3) for bn in bns)


# --- single-stream CNN ------------------------------------------------------------------------------


MODALITIES = {"hsi": {"role": "primary", "bands": 144}, "lidar": {"role": "auxiliary", "bands": 1}}


@pytest.mark.parametrize(
    ("selected", "channels"),
    [(["hsi"], (144, 0)), (["lidar"], (1, 0)), (["hsi", "lidar"], (144, 1))],
    ids=["hsi-only", "lidar-only", "early-fusion"],
)
def test_cnn_with_the_data_layer_binding(selected: list[str], channels: tuple[int, int]) -> None:
    """The data layer leaves the auxiliary role empty for this model: ``(B, 0, P, P)``."""
    binding = ModalityBinding.build(MODALITIES, selected, fill_missing=SingleStreamCNN.fills_missing_role)
    assert binding.channels(MODALITIES) == channels
    torch.manual_seed(0)
    model = _tiny("cnn", channels)
    xp, xa, y = _batch(channels)
    assert xa.shape[1] == channels[1]
    loss, _ = model.training_loss(xp, xa, y)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model(xp, xa).shape == (3, K)


def test_cnn_early_fusion_is_the_stacked_bands() -> None:
    torch.manual_seed(0)
    fused = _tiny("cnn", (6, 2)).eval()
    stacked = _tiny("cnn", (8, 0)).eval()
    stacked.load_state_dict(fused.state_dict())
    xp, xa, _ = _batch((6, 2))
    with torch.inference_mode():
        torch.testing.assert_close(fused(xp, xa), stacked(torch.cat([xp, xa], 1), xa[:, :0]))


def test_cnn_rejects_an_empty_primary() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        _tiny("cnn", (0, 4))


# --- params files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_params_files_build(name: str, preset: str) -> None:
    spec = load_model(name, preset)
    assert spec.kind == "patch_classifier"
    if preset == "paper" and name != "cnn":
        return  # built in the parameter-count tests above
    channels = (144, 0) if name == "cnn" else (144, 1)
    model = build_model(
        name, in_channels=channels, n_classes=15, patch_size=11, architecture=spec.architecture
    )
    xp, xa, _ = _batch(channels, b=2)
    assert model(xp, xa).shape == (2, 15)
    if preset == "quick" and name != "cnn":  # the FusAtNet lesson: PyTorch's BN momentum in quick presets
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d)]
        assert bns and all(m.momentum == pytest.approx(0.1) for m in bns)
