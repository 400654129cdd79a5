"""MMRS (stages/models/mmrs.py) and its pure-torch k-NN graph (stages/models/graph.py).

The upstream has no code and no parameter count, so the counts tested here are those of *our* design
(they pin the architecture against accidental change; they are not checked against any upstream number).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages.config import load_model
from stages.models import MODELS, build_model
from stages.models.graph import gcn_conv, knn_edge_index
from stages.models.mmrs import MMRS
from tests.conftest import assert_one_step_is_reproducible

TINY = {
    "width": 6,
    "aux_width": 4,
    "depth": 2,
    "token_dim": 8,
    "heads": 2,
    "attn_layers": 1,
    "grid": 3,
    "fused_dim": 12,
    "gcn_layers": 2,
    "k": 3,
    "mdg_hidden": 10,
    "z_dim": 4,
    "dropout": 0.2,
}
K = 4
SWITCHES = list(itertools.product([True, False], [True, False]))  # (mdg, mff)
GEOMETRIES = {"hsi+lidar": (144, 1), "hsi+sar": (244, 4)}
MDG_PARTS = ("enhance", "generator", "discriminator")
MFF_PARTS = ("tok_primary", "tok_auxiliary", "attention", "attn_norm", "to_fused", "gcn")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(mdg: bool = True, mff: bool = True, in_ch: tuple[int, int] = (5, 2), p: int = 7, **over) -> MMRS:
    model = build_model(
        "mmrs",
        in_channels=in_ch,
        n_classes=K,
        patch_size=p,
        architecture={**TINY, "mdg": mdg, "mff": mff, **over},
    )
    assert isinstance(model, MMRS)
    return model


def _batch(
    b: int = 6, in_ch: tuple[int, int] = (5, 2), p: int = 7, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, in_ch[0], p, p, generator=g),
        torch.randn(b, in_ch[1], p, p, generator=g),
        torch.randint(0, K, (b,), generator=g),
    )


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert MODELS["mmrs"] is MMRS


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize(("mdg", "mff"), SWITCHES)
def test_forward_backward_every_switch_and_geometry(mdg: bool, mff: bool, geometry: str) -> None:
    in_ch = GEOMETRIES[geometry]
    torch.manual_seed(0)
    model = _tiny(mdg, mff, in_ch)
    xp, xa, y = _batch(in_ch=in_ch)
    loss, parts = model.training_loss(xp, xa, y)
    expected_parts = {"ce", "reg", "ce_gen", "d", "g"} if mdg else {"ce", "reg"}
    assert set(parts) == expected_parts
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name  # every built parameter takes part in training
        assert torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.inference_mode():
        logits = model(xp, xa)
    assert logits.shape == (6, K) and logits.dtype == torch.float32


def test_ablations_remove_their_modules() -> None:
    torch.manual_seed(0)
    models = {s: _tiny(*s) for s in SWITCHES}
    full = models[(True, True)]
    names = {s: {n.split(".")[0] for n, _ in m.named_parameters()} for s, m in models.items()}
    for (mdg, mff), got in names.items():
        assert all((part in got) == mdg for part in MDG_PARTS), (mdg, mff, got)
        assert all((part in got) == mff for part in MFF_PARTS), (mdg, mff, got)
        assert ("concat_mlp" in got) == (not mff)
    kinds = {s: {type(m) for m in model.modules()} for s, model in models.items()}
    assert nn.MultiheadAttention not in kinds[(True, False)]
    assert type(gcn_conv(2, 2)) not in kinds[(False, False)]
    mdg_size = sum(_n_params(getattr(full, part)) for part in MDG_PARTS)
    mff_size = sum(_n_params(getattr(full, part)) for part in MFF_PARTS)
    concat_size = _n_params(models[(True, False)].concat_mlp)
    n = {s: _n_params(m) for s, m in models.items()}
    assert n[(False, True)] == n[(True, True)] - mdg_size
    assert n[(True, False)] == n[(True, True)] - mff_size + concat_size
    assert n[(False, False)] == n[(True, True)] - mdg_size - mff_size + concat_size


@pytest.mark.parametrize(("mdg", "mff"), [(True, True), (False, False)])
def test_same_seed_same_weights_after_one_step(mdg: bool, mff: bool) -> None:
    # dropout and the generator's noise use the seeded RNG
    assert_one_step_is_reproducible(
        lambda: _tiny(mdg, mff), _batch(), lambda params: torch.optim.AdamW(params, lr=1e-3)
    )


def test_eval_is_deterministic_per_batch_and_permutation_equivariant() -> None:
    torch.manual_seed(0)
    model = _tiny().eval()
    xp, xa, _ = _batch(b=9)
    with torch.inference_mode():
        first = model(xp, xa)
        assert torch.equal(first, model(xp, xa))
        perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(model(xp[perm], xa[perm]), first[perm], atol=1e-5)


def test_batch_dependence_only_with_mff() -> None:
    """The GCN makes a sample's logits depend on its batch-mates (documented); without MFF they do not."""
    xp, xa, _ = _batch(b=8)
    for mff in (True, False):
        torch.manual_seed(0)
        model = _tiny(mff=mff).eval()
        with torch.inference_mode():
            whole = model(xp, xa)[:4]
            half = model(xp[:4], xa[:4])
        assert torch.allclose(whole, half, atol=1e-5) == (not mff)


@pytest.mark.parametrize(("mdg", "mff"), SWITCHES)
def test_batch_of_one_and_batches_smaller_than_k(mdg: bool, mff: bool) -> None:
    torch.manual_seed(0)
    model = _tiny(mdg, mff, k=8)
    for b in (1, 3):
        xp, xa, y = _batch(b=b)
        model.train()
        loss, _ = model.training_loss(xp, xa, y)
        loss.backward()
        assert torch.isfinite(loss)
        model.eval()
        with torch.inference_mode():
            assert model(xp, xa).shape == (b, K)


def test_gan_losses_reach_only_their_player() -> None:
    """One backward trains both GAN players: L_D reaches only the discriminator, L_G only the generator,
    and neither reaches the encoders (real features enter the discriminator detached)."""
    torch.manual_seed(0)
    model = _tiny(dropout=0.0, gen_weight=0.0, adv_weight=1.0)
    xp, xa, y = _batch()
    d_params = list(model.discriminator.parameters())
    g_params = list(model.generator.parameters())
    enc_params = list(model.enc_primary.parameters())

    torch.manual_seed(7)
    loss, _ = model.training_loss(xp, xa, y)
    d_total = torch.autograd.grad(loss, d_params, retain_graph=True)
    g_total = torch.autograd.grad(loss, g_params, retain_graph=True)
    enc_total = torch.autograd.grad(loss, enc_params)

    torch.manual_seed(7)  # same generator noise: dropout is 0, so the noise is the only RNG draw
    f = model.fuse(xp, xa)
    ce = F.cross_entropy(model.head(model.enhanced(f)), y)
    f_gen = model.generate(y)
    disc = model.discriminator
    bce = F.binary_cross_entropy_with_logits
    loss_d = bce(disc(f.detach(), y), torch.ones(6)) + bce(disc(f_gen.detach(), y), torch.zeros(6))
    loss_g = bce(disc(f_gen, y), torch.ones(6))
    for got, want in zip(d_total, torch.autograd.grad(loss_d, d_params, retain_graph=True), strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    for got, want in zip(g_total, torch.autograd.grad(loss_g, g_params), strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    for got, want in zip(enc_total, torch.autograd.grad(ce, enc_params), strict=True):
        assert torch.allclose(got, want, atol=1e-6)


def test_mdg_at_inference_is_the_residual_on_real_features() -> None:
    torch.manual_seed(0)
    model = _tiny().eval()
    nn.init.normal_(model.enhance[-1].weight)  # move R away from its zero start
    xp, xa, _ = _batch()
    with torch.inference_mode():
        f = model.fuse(xp, xa)
        assert torch.equal(model(xp, xa), model.head(f + model.enhance(f)))
    fresh = _tiny()
    with torch.inference_mode():
        f = torch.randn(3, TINY["fused_dim"])
        assert torch.equal(fresh.enhanced(f), f)  # R starts at zero: the skip alone


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="heads"):
        _tiny(heads=3)
    with pytest.raises(ValueError, match="grid"):
        _tiny(grid=9)
    with pytest.raises(ValueError, match="knn_metric"):
        _tiny(knn_metric="manhattan")


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_presets_build_and_paper_count(preset: str) -> None:
    """The counts are ours (there is no upstream number): 144 + 1 bands, 15 classes, P = 11."""
    spec = load_model("mmrs", preset)
    assert spec.kind == "patch_classifier"
    arch = spec.architecture
    assert arch["mdg"] is True and arch["mff"] is True
    torch.manual_seed(0)
    model = build_model("mmrs", in_channels=(144, 1), n_classes=15, patch_size=11, architecture=arch)
    expected = {"paper": PAPER_PARAMS, "quick": QUICK_PARAMS}[preset]
    assert _n_params(model) == expected
    if preset == "quick":
        model.eval()
        with torch.inference_mode():
            assert model(torch.randn(2, 144, 11, 11), torch.randn(2, 1, 11, 11)).shape == (2, 15)


PAPER_PARAMS = 2_170_768
QUICK_PARAMS = 64_176


# ------------------------------------------------------------------------------------------------
# the k-NN graph and the GCN glue
# ------------------------------------------------------------------------------------------------


def _brute_force_knn(x: torch.Tensor, k: int, metric: str) -> list[list[int]]:
    """For each node, its k nearest other nodes, nearest first, ties to the lower index (pure Python)."""
    n = x.shape[0]
    out = []
    for i in range(n):
        scored = []
        for j in range(n):
            if j == i:
                continue
            if metric == "cosine":
                s = -float(F.cosine_similarity(x[i], x[j], dim=0))
            else:
                s = float(((x[i] - x[j]) ** 2).sum())
            scored.append((s, j))
        out.append([j for _, j in sorted(scored)[:k]])
    return out


POINTS = torch.tensor(
    [[0.0, 0.0], [1.0, 0.1], [2.2, 0.0], [0.0, 3.0], [0.3, 2.5], [5.0, 5.0], [-1.0, -0.2], [4.0, 4.6]]
)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_knn_matches_brute_force(metric: str, k: int) -> None:
    x = POINTS + 0.5 if metric == "cosine" else POINTS  # no zero vector for cosine
    ei = knn_edge_index(x, k, metric)
    assert ei.shape == (2, 8 * k) and ei.dtype == torch.long
    assert torch.equal(ei[1], torch.arange(8).repeat_interleave(k))
    assert ei[0].reshape(8, k).tolist() == _brute_force_knn(x, k, metric)
    assert not (ei[0] == ei[1]).any()


def test_knn_hand_made_neighbours() -> None:
    """Euclidean 1-NN read off the coordinates above."""
    ei = knn_edge_index(POINTS, 1, "euclidean")
    assert ei[0].tolist() == [1, 0, 1, 4, 3, 7, 0, 5]


def test_knn_small_graphs_ties_and_chunks() -> None:
    assert knn_edge_index(torch.randn(1, 4), 5).shape == (2, 0)
    ei = knn_edge_index(torch.randn(3, 4), 5)  # fewer nodes than k: everyone else
    assert ei.shape == (2, 6)
    assert {tuple(e) for e in ei.T.tolist()} == {(j, i) for i in range(3) for j in range(3) if j != i}
    dup = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    want = [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1]]  # equal similarities resolve to the lower index
    assert knn_edge_index(dup, 2, "cosine")[0].reshape(5, 2).tolist() == want
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(knn_edge_index(x, 4, chunk=7), knn_edge_index(x, 4))
    assert torch.equal(knn_edge_index(x, 4, "euclidean", chunk=16), knn_edge_index(x, 4, "euclidean"))


def test_gcn_on_knn_graph_is_a_mean_over_node_and_neighbours() -> None:
    """Self-loops + symmetric normalisation on a k-in-regular graph weigh every message by 1 / (k + 1)."""
    torch.manual_seed(0)
    conv = gcn_conv(6, 5)
    x = torch.randn(10, 6)
    k = 3
    ei = knn_edge_index(x, k)
    nbrs = ei[0].reshape(10, k)
    mean = (x + x[nbrs].sum(1)) / (k + 1)
    want = mean @ conv.lin.weight.T + conv.bias
    assert torch.allclose(conv(x, ei), want, atol=1e-5)
