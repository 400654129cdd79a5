"""The model registry and the patch classifiers: shapes, gradients, determinism, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.config import load_model
from stages.models import MODELS, PatchClassifier, build_model, register
from stages.models.fusatnet import FusAtNet
from stages.models.layers import KerasConvUnit, l2_penalty
from stages.models.two_branch_cnn import TwoBranchCNN
from tests.conftest import assert_one_step_is_reproducible

# Tiny widths so every test runs in well under a second.
TINY = {
    "fusatnet": {"width": 4, "wide": 8, "mask_width": 2, "l2": 0.01},
    "two_branch_cnn": {
        "spectral_width": 4,
        "width": 6,
        "aux_width": 3,
        "depth": 2,
        "hidden": 8,
        "dropout": 0.2,
    },
}
IN_CH = (5, 2)
K = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(
    b: int = 3, p: int = 11, in_ch: tuple[int, int] = IN_CH, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, in_ch[0], p, p, generator=g),
        torch.randn(b, in_ch[1], p, p, generator=g),
        torch.randint(0, K, (b,), generator=g),
    )


def _tiny(name: str, p: int = 11) -> PatchClassifier:
    return build_model(name, in_channels=IN_CH, n_classes=K, patch_size=p, architecture=TINY[name])


def test_registry_lists_both_models() -> None:
    assert MODELS["fusatnet"] is FusAtNet
    assert MODELS["two_branch_cnn"] is TwoBranchCNN


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_backward_shapes_and_finite_grads(name: str) -> None:
    torch.manual_seed(0)
    model = _tiny(name)
    xp, xa, y = _batch()
    logits = model(xp, xa)
    assert logits.shape == (3, K)
    assert logits.dtype == torch.float32
    loss, parts = model.training_loss(xp, xa, y)
    assert set(parts) == {"ce", "reg"}
    assert loss.item() == pytest.approx(parts["ce"] + parts["reg"], rel=1e-5)
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
        lambda: _tiny(name), _batch(), lambda params: torch.optim.NAdam(params, lr=1e-3)
    )


def test_fusatnet_paper_preset_matches_official_parameter_count() -> None:
    spec = load_model("fusatnet", "paper")
    torch.manual_seed(0)
    model = build_model(
        "fusatnet", in_channels=(144, 1), n_classes=15, patch_size=11, architecture=spec.architecture
    )
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == 38_083_599
    # Keras L2: 0.01 * sum of squared conv kernels (4-D weights); not biases, not BN.
    kernels = [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() == 4]
    expected = 0.01 * sum(float(w.detach().double().pow(2).sum()) for w in kernels)
    assert len(kernels) == 36  # 35 conv units + the 1x1 classifier conv
    assert float(model.regularization().detach()) == pytest.approx(expected, rel=1e-5)


def test_fusatnet_other_patch_sizes_and_role_filling() -> None:
    torch.manual_seed(0)
    model = _tiny("fusatnet", p=13)
    xp, xa, _ = _batch(b=2, p=13)
    assert model(xp, xa).shape == (2, K)
    # one modality in both roles ("the same network fed HSI only")
    solo = build_model(
        "fusatnet", in_channels=(5, 5), n_classes=K, patch_size=11, architecture=TINY["fusatnet"]
    )
    x = torch.randn(2, 5, 11, 11)
    assert solo(x, x).shape == (2, K)
    with pytest.raises(ValueError, match="patch_size"):
        _tiny("fusatnet", p=9)


def test_fusatnet_head_pool_is_identity_at_11() -> None:
    """At P = 11 the classifier map is already 1x1: the global pool changes nothing (as in the original)."""
    torch.manual_seed(0)
    model = _tiny("fusatnet").eval()
    xp, xa, _ = _batch()
    seen: list[torch.Tensor] = []
    model.clf.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.inference_mode():
        logits = model(xp, xa)
        assert seen[0].shape == (3, TINY["fusatnet"]["wide"], 1, 1)
        assert torch.equal(logits, model.head(seen[0]).flatten(1))


def test_keras_conv_unit_and_l2_penalty() -> None:
    torch.manual_seed(0)
    unit = KerasConvUnit(3, 5, 3, "valid")
    assert [type(m) for m in unit.children()] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
    assert unit.bn.momentum == pytest.approx(0.01) and unit.bn.eps == pytest.approx(1e-3)
    assert torch.count_nonzero(unit.conv.bias) == 0
    assert unit(torch.randn(2, 3, 7, 7)).shape == (2, 5, 5, 5)
    expected = 0.5 * unit.conv.weight.pow(2).sum()
    assert torch.allclose(l2_penalty(unit, 0.5), expected)
    assert float(l2_penalty(nn.Linear(2, 2), 0.5)) == 0.0


def test_two_branch_has_no_penalty_and_any_patch_size() -> None:
    torch.manual_seed(0)
    model = _tiny("two_branch_cnn", p=7)
    assert float(model.regularization()) == 0.0
    xp, xa, _ = _batch(b=2, p=7)
    assert model(xp, xa).shape == (2, K)


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_params_files_build(name: str, preset: str) -> None:
    spec = load_model(name, preset)
    assert spec.kind == "patch_classifier"
    if preset == "paper":
        return  # built above for fusatnet; skipping keeps the file fast
    model = build_model(name, in_channels=IN_CH, n_classes=K, patch_size=11, architecture=spec.architecture)
    xp, xa, _ = _batch()
    assert model(xp, xa).shape == (3, K)


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*fusatnet.*two_branch_cnn"):
        build_model("nope", in_channels=IN_CH, n_classes=K, patch_size=11, architecture={})
    with pytest.raises(TypeError, match=r"fusatnet.*'widht'"):
        build_model("fusatnet", in_channels=IN_CH, n_classes=K, patch_size=11, architecture={"widht": 4})
    with pytest.raises(TypeError, match=r"two_branch_cnn.*'n_classes'"):
        build_model(
            "two_branch_cnn", in_channels=IN_CH, n_classes=K, patch_size=11, architecture={"n_classes": 3}
        )


def test_register_rejects_duplicates_and_non_models() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("fusatnet")(TwoBranchCNN)
    with pytest.raises(TypeError):
        register("plain_module")(nn.Module)  # type: ignore[arg-type]
    assert "plain_module" not in MODELS
