"""REF-Net and its VMamba blocks: shapes, gradients, the auxiliary loss, determinism, parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages.config import load_model
from stages.models import IGNORE_INDEX, MODELS, Segmenter, build_model
from stages.models import vmamba as vm
from stages.models.refnet import RefNet
from stages.models.selective_scan import selective_scan_reference
from tests.conftest import assert_one_step_is_reproducible

IN_CH = (5, 2)
K = 4
TILE = 64
# Quick-like but narrower, so every test stays around a second.
TINY = {"base_width": 4, "blocks": [1, 1, 1, 1], "decoder_channels": 16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(
    b: int = 2, size: int = TILE, in_ch: tuple[int, int] = IN_CH, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, K, (b, size, size), generator=g)
    target[:, :5] = IGNORE_INDEX  # some unlabelled pixels
    return (
        torch.randn(b, in_ch[0], size, size, generator=g),
        torch.randn(b, in_ch[1], size, size, generator=g),
        target,
    )


def _tiny(in_ch: tuple[int, int] = IN_CH, **overrides) -> RefNet:
    model = build_model(
        "refnet", in_channels=in_ch, n_classes=K, patch_size=TILE, architecture={**TINY, **overrides}
    )
    assert isinstance(model, RefNet)
    return model


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_registered_as_a_segmenter() -> None:
    assert MODELS["refnet"] is RefNet
    assert issubclass(RefNet, Segmenter) and RefNet.stride == 32 and RefNet.fills_missing_role


def test_forward_backward_shapes_and_finite_grads() -> None:
    torch.manual_seed(0)
    model = _tiny()
    xp, xa, y = _batch()
    logits = model(xp, xa)
    assert logits.shape == (2, K, TILE, TILE) and logits.dtype == torch.float32
    loss, parts = model.training_loss(xp, xa, y)
    assert set(parts) == {"ce", "aux_opt", "aux_sar", "reg"}
    loss.backward()
    for name, p in model.named_parameters():  # the training loss uses every parameter
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(float(p.grad.abs().sum()) > 0 for p in model.aux_modules()[-1].parameters())
    model.eval()
    with torch.inference_mode():
        assert model(xp, xa).shape == (2, K, TILE, TILE)


def test_loss_is_main_ce_plus_weighted_aux_terms() -> None:
    torch.manual_seed(0)
    model = _tiny().eval()  # eval: BN running stats and no drop-path, so repeated passes agree exactly
    xp, xa, y = _batch()
    with torch.no_grad():
        loss, parts = model.training_loss(xp, xa, y)
        main, opt_logits, sar_logits = model._decode(xp, xa, with_aux=True)
        ce = F.cross_entropy(model(xp, xa), y, ignore_index=IGNORE_INDEX)
        aux_opt = F.cross_entropy(opt_logits, y, ignore_index=IGNORE_INDEX)
        aux_sar = F.cross_entropy(sar_logits, y, ignore_index=IGNORE_INDEX)
    assert torch.equal(main, model(xp, xa))  # the MSIE branch does not change the main path
    assert parts["ce"] == pytest.approx(float(ce), rel=1e-6)
    assert parts["aux_opt"] == pytest.approx(float(aux_opt), rel=1e-6)
    assert parts["aux_sar"] == pytest.approx(float(aux_sar), rel=1e-6)
    assert parts["reg"] == 0.0
    assert float(loss) == pytest.approx(float(ce + 0.005 * (aux_opt + aux_sar)), rel=1e-6)
    assert not torch.allclose(opt_logits, main) and not torch.allclose(sar_logits, main)
    # the weight is a knob: 0 leaves the main term alone
    model.aux_weight = 0.0
    with torch.no_grad():
        assert float(model.training_loss(xp, xa, y)[0]) == pytest.approx(float(ce), rel=1e-6)


def test_forward_runs_no_auxiliary_module() -> None:
    torch.manual_seed(0)
    model = _tiny()
    calls: list[str] = []
    for module in model.aux_modules():
        for sub in module.modules():
            sub.register_forward_hook(lambda m, _i, _o: calls.append(type(m).__name__))
    xp, xa, y = _batch()
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            model(xp, xa)
    assert calls == []
    model.train()
    model.training_loss(xp, xa, y)
    assert "SegHead" in calls and "ResBlock" in calls


def test_same_seed_same_weights_after_one_step() -> None:
    # drop-path draws from the seeded generator too
    assert_one_step_is_reproducible(
        lambda: _tiny(), _batch(), lambda params: torch.optim.AdamW(params, lr=5e-4, weight_decay=5e-4)
    )


def test_paper_preset_matches_the_official_parameter_count() -> None:
    """60,799,323 = the official LinkMamba (DFC20 config: optical 3 bands, SAR 2, 9 classes) in training."""
    spec = load_model("refnet", "paper")
    assert spec.kind == "segmenter" and spec.training["tile_size"] == 256
    torch.manual_seed(0)
    model = build_model(
        "refnet", in_channels=(3, 2), n_classes=9, patch_size=256, architecture=spec.architecture
    )
    assert _n_params(model) == 60_799_323
    aux_heads = _n_params(model.opt_head) + _n_params(model.sar_head)
    assert _n_params(model) - aux_heads == 60_797_001  # the official count without the two aux heads
    assert _n_params(model.opt_encoder) == 23_508_032 and _n_params(model.sar_encoder) == 23_504_896
    assert [_n_params(m) for m in (model.mdf[0], model.vss[0], model.opt_proj, model.head)] == [
        1_034_752,
        222_080,
        499_712,
        1_161,
    ]
    decoder = _n_params(model) - _n_params(model.opt_encoder) - _n_params(model.sar_encoder) - 3 * 1_161
    assert decoder == 13_782_912


def test_vss_block_initialisation_follows_vmamba() -> None:
    torch.manual_seed(0)
    block = vm.VSSBlock(128, drop_path=0.1)
    assert _n_params(block) == 222_080
    op = block.op
    assert (op.d_inner, op.d_state, op.dt_rank) == (256, 1, 8)
    assert torch.equal(-torch.exp(op.A_logs), -torch.ones(4 * 256, 1))
    assert torch.equal(op.Ds, torch.ones(4 * 256))
    dt = F.softplus(op.dt_projs_bias)
    assert float(dt.min().detach()) >= 1e-3 - 1e-7 and float(dt.max().detach()) <= 0.1 + 1e-7
    assert op.in_proj.bias is None and op.out_proj.bias is None and op.conv2d.bias is None
    assert op.conv2d.groups == 256 and op.conv2d.kernel_size == (3, 3)


def test_cross_scan_orders_and_merge_is_its_adjoint() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    xs = vm.cross_scan(x)
    assert xs.shape == (2, 4, 3, 20)
    torch.testing.assert_close(xs[:, 0], x.flatten(2))
    torch.testing.assert_close(xs[:, 1], x.transpose(2, 3).flatten(2))  # column-major
    torch.testing.assert_close(xs[:, 2], x.flatten(2).flip(-1))
    torch.testing.assert_close(xs[:, 3], x.transpose(2, 3).flatten(2).flip(-1))
    ys = torch.randn(2, 4, 3, 20, generator=g, dtype=torch.float64)
    # <cross_scan(x), ys> == <x, cross_merge(ys)>: VMamba's CrossMerge is CrossScan's backward
    lhs = (xs * ys).sum()
    rhs = (x.flatten(2) * vm.cross_merge(ys, 4, 5)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_ss2d_with_the_fast_scan_equals_the_reference_recurrence(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    op = vm.SS2D(8, d_state=2).double()
    x = torch.randn(2, 4, 6, 8, dtype=torch.float64)
    fast = op(x)
    monkeypatch.setattr(vm, "selective_scan", selective_scan_reference)
    torch.testing.assert_close(fast, op(x), rtol=1e-10, atol=1e-10)


def test_inputs_not_multiple_of_32_fail_clearly() -> None:
    torch.manual_seed(0)
    model = _tiny()
    xp, xa, _ = _batch(size=48)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(xp, xa)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model("refnet", in_channels=IN_CH, n_classes=K, patch_size=48, architecture=TINY)
    with pytest.raises(ValueError, match="one size"):
        model(torch.randn(1, 5, 64, 64), torch.randn(1, 2, 32, 32))


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_params_file_validates(preset: str) -> None:
    spec = load_model("refnet", preset)
    assert spec.kind == "segmenter"
    assert spec.training["select_on"] == "miou"
    assert spec.training["tile_size"] % RefNet.stride == 0


def test_quick_preset_on_houston_and_dfc_band_counts() -> None:
    spec = load_model("refnet", "quick")
    for in_ch, k in (((13, 2), 8), ((144, 1), 15)):
        torch.manual_seed(0)
        model = build_model(
            "refnet", in_channels=in_ch, n_classes=k, patch_size=64, architecture=spec.architecture
        )
        model.eval()
        with torch.inference_mode():
            out = model(torch.randn(1, in_ch[0], 64, 64), torch.randn(1, in_ch[1], 64, 64))
        assert out.shape == (1, k, 64, 64)


def test_fewer_levels() -> None:
    torch.manual_seed(0)
    model = _tiny(levels=3)
    assert len(model.mdf) == 3 and model.head.upsampling == 8
    xp, xa, y = _batch()
    assert model(xp, xa).shape == (2, K, TILE, TILE)
    loss, _ = model.training_loss(xp, xa, y)
    loss.backward()
    with pytest.raises(ValueError, match="levels"):
        _tiny(levels=6)
