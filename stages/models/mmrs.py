"""MMRS ("MMRS: Multimodal Remote Sensing Image Classification", Zhaolu-Hub/MMRS) as explicit design choices.

**What the upstream gives.** The repository has no code, no paper link and no numbers: only a README
and three figures (``../shared/reference/models.md`` §1). The README names three modules: (1) CNN
feature extraction per modality, (2) GAN-based "multimodal data generation and enhancement" (the *MDG*
module), (3) fusion by multi-head self-attention and a GCN, then classification. Figure 1 draws two
separate 5-layer CNNs (one per modality) -> concatenated feature vector -> the MDG module as a small
fully connected net (5 -> 6 -> 4 nodes) -> its output **added (⊕) to a skip from the concatenated
features** -> softmax. Figure 3 compares maps "with and without the MFF module" (multimodal feature
fusion: the attention + GCN block), i.e. MFF is ablatable. Everything else -- what the GAN generates,
its losses, the graph, widths, heads, training -- is unknown, so **every choice below is ours** ([ours])
and is made for the reason given next to it.

Architecture, with ``c1, c2`` the encoder widths, ``d = token_dim``, ``D = fused_dim``, ``g = grid``,
``K`` classes and ``P`` the patch edge:

1. **Per-modality CNN encoders** [FIG 1: one CNN per modality; layer count ``depth``, 5 in the figure].
   ``(B, C_m, P, P) -> (B, c_m, P, P)``: a 1x1 conv (a learned spectral reduction, cheap on 144+ bands)
   then ``depth - 1`` 3x3 'same' convs, each conv -> BN -> ReLU. [ours] 'same' padding, not the
   figure's shrinking maps, so the centre pixel (the one being labelled) stays addressable.
2. **Tokens** [ours]. Per modality: one *modality token* ``Linear(cat(global mean, centre pixel)) ->
   d`` (the centre carries the labelled pixel, the mean its context -- a patch often straddles a class
   boundary) and ``g*g`` *spatial tokens* (adaptive average pool to ``g x g``, ``Linear(c_m -> d)``),
   each plus a learned per-modality, per-position embedding. Sequence ``(B, 2 (1 + g^2), d)``.
3. **MFF = multi-head self-attention + GCN** [README, FIG 3]:

   * ``attn_layers`` pre-LayerNorm transformer blocks (``nn.MultiheadAttention(d, heads)`` + a GELU MLP
     of width ``2d``, residual) over *all* tokens of *both* modalities, so every token attends across
     modalities and positions [ours: the README says "multi-head self-attention", not over what];
     the two modality tokens out of the last block, concatenated, ``Linear(2d -> D)`` -> ``h0 (B, D)``.
   * **GCN over the mini-batch** [ours: the README only says "GCN"]: nodes = the batch's samples,
     edges = a directed k-NN graph on ``h0`` by **cosine** similarity (scale-free, so the graph does not
     follow feature norms), each node receiving from its ``k`` nearest other samples (PyG's
     ``knn_graph(loop=False)`` convention; pure torch, :func:`stages.models.graph.knn_edge_index`,
     because ``pyg-lib`` is unavailable). ``gcn_layers`` ``torch_geometric`` ``GCNConv`` layers with
     self-loops and symmetric normalisation ``D^-1/2 (A + I) D^-1/2``, pre-activation residual:
     ``h <- h + GCNConv(ReLU(LN(h)))``. Every node has in-degree ``k + 1``, so the normalisation is a
     plain mean over the node and its neighbours. The graph is built once (on ``h0``, no gradient: it is
     discrete) and shared by the layers. Batches of one sample get no edges (only the self-loop) and
     batches of ``B <= k`` samples connect every node to all ``B - 1`` others.
   * ``f = LayerNorm(h) (B, D)``: the fused feature vector.

   **Ablation ``mff=False``** removes the tokens, the attention and the GCN (none of their parameters are
   built) and fuses by plain concatenation + MLP: ``f = LN(Linear(ReLU(LN(Linear(cat(mean_1, centre_1,
   mean_2, centre_2) -> D))) -> D))``. Per-sample then: no batch dependence at inference.

4. **MDG = class-conditional feature-level GAN with the residual of Figure 1** [README: GANs generate
   and enhance data; FIG 1: FC net + ⊕ skip]. Figure 1 places MDG between the fused (concatenated)
   feature vector and the softmax; we keep that place, after MFF, so generated samples need no spatial
   tokens and never join the k-NN graph (which at inference holds only real samples) [ours].

   * *Enhancement* (train **and** inference): ``e = f + R(f)``, ``R = Linear(D -> H) -> ReLU -> Linear(H
     -> D)`` (the figure's FC net; ``H = mdg_hidden``; the figure's 5 -> 6 -> 4 cannot be added to its
     5-node input, so ours maps ``D -> D``). ``R``'s last layer starts at zero, so ``e = f`` at
     initialisation.
   * *Generation* (training only): ``G(z, y) = LN(Linear(ReLU(Linear(cat(z, emb(y))))))`` maps noise
     ``z ~ N(0, I_{z_dim})`` and a class to a feature in ``f``'s space. One generated feature per real
     one (``gen_ratio``), with the batch's own labels (so the class mix is the data's).
     **The generated features join training**: they pass through the same ``⊕`` enhancement and the
     same classifier head, with their class labels (weight ``gen_weight``).
   * *Discriminator* ``Dsc(v, y)``: a projection discriminator (Miyato & Koyama 2018): ``phi(v) =
     LeakyReLU MLP``, ``Dsc = w . phi + emb(y) . phi``. It sees real ``f`` and generated ``G(z, y)``.
   * **One optimiser, one backward** (the generic training loop): the adversarial game is split so
     that a single ``loss.backward()`` trains both players. ``L_D = BCE(Dsc(f.detach(), y), 1) +
     BCE(Dsc(G.detach(), y), 0)`` reaches only the discriminator; ``L_G = BCE(Dsc'(G, y), 1)`` is
     evaluated with a *detached copy of the discriminator's parameters* (``torch.func.functional_call``),
     so it reaches only the generator. This is the non-saturating GAN loss [ours]; a gradient-reversal
     layer would do the same job in one backward but gives the generator the saturating minimax
     gradient, which vanishes while the discriminator wins early -- and early is all a short run has.
     Real features reach the discriminator detached, so the GAN never pushes the encoders [ours].
   * At **inference** there is no generation: ``R`` applies to the real features, ``G`` and ``Dsc`` are
     unused (they only shape training).

   **Ablation ``mdg=False``** removes ``R``, ``G`` and ``Dsc`` (not built): ``e = f``, loss = CE only.

5. **Head**: ``Dropout -> Linear(D -> K)`` -> logits ``(B, K)``.

Loss (:meth:`MMRS.training_loss`): ``CE(head(e), y) + gen_weight * CE(head(e_gen), y_gen) + adv_weight *
(L_D + L_G)``; parts logged as ``ce``, ``ce_gen``, ``d``, ``g`` (MDG only) and ``reg`` (0: use the
optimiser's weight decay).

**Batch dependence at inference** (inherent to a GCN over the batch, documented, not hidden): with
``mff=True`` a sample's logits depend on which other samples share its batch. Inference is deterministic
for a given batch (the k-NN breaks ties by index; no sampling in eval mode), but the same pixel may be
labelled differently in another batch. The evaluate stage predicts the scene tile by tile in batches of
1024 spatially contiguous pixels (so neighbours are mostly nearby pixels), validation uses batches of 512
validation pixels, training shuffled batches of the preset's size: the k-NN neighbourhoods therefore
differ between training and inference. ``mff=False`` models are per-sample.

Implementation notes: inputs go channels-last on CPU (oneDNN convs ~1.8x faster); ``torch_geometric``
is imported only when a model with MFF is built (its import costs ~1.5 s).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.models.base import PatchClassifier
from stages.models.graph import METRICS, gcn_conv, knn_edge_index
from stages.models.layers import conv_bn_relu, mean_and_centre
from stages.models.registry import register


def _encoder(in_ch: int, width: int, depth: int, bn_momentum: float) -> nn.Sequential:
    """``(B, in_ch, P, P) -> (B, width, P, P)``: a 1x1 conv, then ``depth - 1`` 3x3 'same' convs."""
    layers = [conv_bn_relu(in_ch, width, 1, bn_momentum)]
    layers += [conv_bn_relu(width, width, 3, bn_momentum) for _ in range(depth - 1)]
    return nn.Sequential(*layers)


class Tokenizer(nn.Module):
    """One modality's encoder map -> ``(B, 1 + g*g, d)``: its modality token, then ``g*g`` spatial tokens."""

    def __init__(self, width: int, token_dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.modality = nn.Linear(2 * width, token_dim)
        self.spatial = nn.Linear(width, token_dim)
        self.position = nn.Parameter(torch.zeros(1, 1 + grid * grid, token_dim))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, fmap: Tensor) -> Tensor:
        mod = self.modality(mean_and_centre(fmap))[:, None]  # (B, 1, d)
        cells = F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2)  # (B, g*g, c)
        return torch.cat([mod, self.spatial(cells)], 1) + self.position


class AttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x + MHA(LN x)``, then ``x + MLP(LN x)``; ``(B, T, d) -> (B, T, d)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class BatchGCN(nn.Module):
    """Residual GCN over a k-NN graph of the batch's samples: ``(B, D) -> (B, D)`` (module docstring, 3)."""

    def __init__(self, dim: int, layers: int, k: int, metric: str) -> None:
        super().__init__()
        self.k, self.metric = k, metric
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.convs = nn.ModuleList(gcn_conv(dim, dim) for _ in range(layers))

    def forward(self, h: Tensor) -> Tensor:
        edge_index = knn_edge_index(h, self.k, self.metric)
        for norm, conv in zip(self.norms, self.convs, strict=True):
            h = h + conv(F.relu(norm(h)), edge_index)
        return h


class FeatureGenerator(nn.Module):
    """``G(z, y)``: noise ``(N, z_dim)`` and classes ``(N,)`` -> features ``(N, D)`` in the fused space."""

    def __init__(self, z_dim: int, n_classes: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.embed = nn.Embedding(n_classes, z_dim)
        self.net = nn.Sequential(
            nn.Linear(2 * z_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim), nn.LayerNorm(dim)
        )

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([z, self.embed(y)], 1))


class ProjectionDiscriminator(nn.Module):
    """``Dsc(v, y)``: features ``(N, D)`` and classes ``(N,)`` -> real/fake logits ``(N,)``."""

    def __init__(self, dim: int, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.phi = nn.Sequential(
            nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2)
        )
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(n_classes, hidden)

    def forward(self, v: Tensor, y: Tensor) -> Tensor:
        phi = self.phi(v)
        return self.out(phi).squeeze(1) + (self.embed(y) * phi).sum(1)


@register("mmrs")
class MMRS(PatchClassifier):
    """MMRS as documented design choices (see the module docstring for every choice and its reason).

    Args:
        in_channels: ``(C1, C2)`` band counts of the primary and auxiliary inputs (any counts).
        n_classes: number of classes ``K``.
        patch_size: patch edge ``P`` (odd, ``>= grid``).
        mdg: build and train the MDG module (feature GAN + residual enhancement); False = ablation.
        mff: fuse by attention + GCN; False = ablation (concatenation + MLP).
        width: channels of the primary (HSI) encoder.
        aux_width: channels of the auxiliary encoder.
        depth: conv layers per encoder (a 1x1, then ``depth - 1`` 3x3).
        token_dim: attention width ``d``.
        heads: attention heads (must divide ``token_dim``).
        attn_layers: transformer blocks.
        grid: spatial tokens per modality are a ``grid x grid`` pooling of the encoder map.
        fused_dim: width ``D`` of the fused feature vector (GCN, MDG and head width).
        gcn_layers: residual GCNConv layers (0 = attention only).
        k: neighbours per node in the batch graph.
        knn_metric: ``"cosine"`` or ``"euclidean"``.
        mdg_hidden: hidden units of the MDG enhancement net, the generator and the discriminator.
        z_dim: generator noise dimension.
        gen_ratio: generated features per real feature in a training batch.
        gen_weight: weight of the cross-entropy on generated features.
        adv_weight: weight of the GAN losses ``L_D + L_G``.
        dropout: dropout before the classifier layer.
        bn_momentum: BatchNorm momentum of the encoders (PyTorch convention).

    Forward: ``(B, C1, P, P)``, ``(B, C2, P, P)`` -> logits ``(B, K)``.
    """

    def __init__(
        self,
        *,
        in_channels: tuple[int, int],
        n_classes: int,
        patch_size: int,
        mdg: bool = True,
        mff: bool = True,
        width: int = 64,
        aux_width: int = 32,
        depth: int = 3,
        token_dim: int = 64,
        heads: int = 4,
        attn_layers: int = 1,
        grid: int = 3,
        fused_dim: int = 128,
        gcn_layers: int = 2,
        k: int = 8,
        knn_metric: str = "cosine",
        mdg_hidden: int = 128,
        z_dim: int = 32,
        gen_ratio: float = 1.0,
        gen_weight: float = 0.5,
        adv_weight: float = 0.1,
        dropout: float = 0.3,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__(in_channels=in_channels, n_classes=n_classes, patch_size=patch_size)
        if min(width, aux_width, depth, token_dim, heads, fused_dim, mdg_hidden, z_dim, k, grid) < 1:
            raise ValueError("MMRS widths, depth, heads, grid, k and z_dim must be positive")
        if attn_layers < 1 or gcn_layers < 0:
            raise ValueError("MMRS needs attn_layers >= 1 and gcn_layers >= 0")
        if token_dim % heads:
            raise ValueError(f"heads ({heads}) must divide token_dim ({token_dim})")
        if grid > patch_size:
            raise ValueError(f"grid ({grid}) cannot exceed patch_size ({patch_size})")
        if knn_metric not in METRICS:
            raise ValueError(f"knn_metric must be one of {METRICS}, got {knn_metric!r}")
        if not 0.0 <= dropout < 1.0 or gen_ratio <= 0 or min(gen_weight, adv_weight) < 0:
            raise ValueError("MMRS needs dropout in [0, 1), gen_ratio > 0 and non-negative loss weights")
        c1, c2 = self.in_channels
        self.mdg, self.mff = bool(mdg), bool(mff)
        self.gen_ratio, self.gen_weight, self.adv_weight = (
            float(gen_ratio),
            float(gen_weight),
            float(adv_weight),
        )

        # 1. per-modality CNN encoders
        self.enc_primary = _encoder(c1, width, depth, bn_momentum)
        self.enc_auxiliary = _encoder(c2, aux_width, depth, bn_momentum)

        # 3. fusion: MFF (tokens + attention + GCN) or, ablated, concatenation + MLP
        if self.mff:
            self.tok_primary = Tokenizer(width, token_dim, grid)
            self.tok_auxiliary = Tokenizer(aux_width, token_dim, grid)
            self.attention = nn.Sequential(*(AttentionBlock(token_dim, heads) for _ in range(attn_layers)))
            self.attn_norm = nn.LayerNorm(token_dim)
            self.to_fused = nn.Linear(2 * token_dim, fused_dim)
            self.gcn = BatchGCN(fused_dim, gcn_layers, k, knn_metric)
        else:
            self.concat_mlp = nn.Sequential(
                nn.Linear(2 * width + 2 * aux_width, fused_dim),
                nn.LayerNorm(fused_dim),
                nn.ReLU(inplace=True),
                nn.Linear(fused_dim, fused_dim),
            )
        self.fused_norm = nn.LayerNorm(fused_dim)

        # 4. MDG: residual enhancement R, generator G, discriminator Dsc
        if self.mdg:
            self.enhance = nn.Sequential(
                nn.Linear(fused_dim, mdg_hidden), nn.ReLU(inplace=True), nn.Linear(mdg_hidden, fused_dim)
            )
            nn.init.zeros_(self.enhance[-1].weight)
            nn.init.zeros_(self.enhance[-1].bias)
            self.generator = FeatureGenerator(z_dim, n_classes, mdg_hidden, fused_dim)
            self.discriminator = ProjectionDiscriminator(fused_dim, n_classes, mdg_hidden)

        # 5. head
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused_dim, n_classes))

    # ---------------------------------------------------------------------------------------------
    def fuse(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """Encoders + fusion: ``(B, C1, P, P)``, ``(B, C2, P, P)`` -> fused features ``f (B, D)``."""
        primary, auxiliary = self.cpu_channels_last(primary), self.cpu_channels_last(auxiliary)
        fp, fa = self.enc_primary(primary), self.enc_auxiliary(auxiliary)  # (B, c1|c2, P, P)
        if not self.mff:
            return self.fused_norm(self.concat_mlp(torch.cat([mean_and_centre(fp), mean_and_centre(fa)], 1)))
        tp, ta = self.tok_primary(fp), self.tok_auxiliary(fa)  # (B, 1 + g*g, d) each
        tokens = self.attn_norm(self.attention(torch.cat([tp, ta], 1)))  # (B, 2 (1 + g*g), d)
        h0 = self.to_fused(torch.cat([tokens[:, 0], tokens[:, tp.shape[1]]], 1))  # the two modality tokens
        return self.fused_norm(self.gcn(h0))

    def enhanced(self, f: Tensor) -> Tensor:
        """Figure 1's MDG ⊕ skip: ``f + R(f)`` (identity when MDG is ablated)."""
        return f + self.enhance(f) if self.mdg else f

    def forward(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """``(B, C1, P, P)``, ``(B, C2, P, P)`` -> logits ``(B, K)``; no generation."""
        return self.head(self.enhanced(self.fuse(primary, auxiliary)))

    def generate(self, y: Tensor) -> Tensor:
        """Generated features ``(N, D)`` for classes ``y (N,)`` (noise from the global torch RNG)."""
        z = torch.randn(y.shape[0], self.generator.z_dim, device=y.device)
        return self.generator(z, y)

    def training_loss(
        self, primary: Tensor, auxiliary: Tensor, target: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """``CE + gen_weight * CE_gen + adv_weight * (L_D + L_G)`` (module docstring, 4); one backward."""
        f = self.fuse(primary, auxiliary)
        ce = F.cross_entropy(self.head(self.enhanced(f)), target)
        reg = self.regularization()
        if not self.mdg:
            return ce + reg, {"ce": float(ce.detach()), "reg": float(reg.detach())}

        n_gen = max(1, round(self.gen_ratio * target.shape[0]))
        y_gen = target.repeat((n_gen + target.shape[0] - 1) // target.shape[0])[:n_gen]
        f_gen = self.generate(y_gen)
        ce_gen = F.cross_entropy(self.head(self.enhanced(f_gen)), y_gen)
        # discriminator step: real vs generated, neither side's producer gets gradients
        d_real = self.discriminator(f.detach(), target)
        d_fake = self.discriminator(f_gen.detach(), y_gen)
        loss_d = F.binary_cross_entropy_with_logits(
            d_real, torch.ones_like(d_real)
        ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        # generator step (non-saturating), through a parameter-detached discriminator
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        g_logit = torch.func.functional_call(self.discriminator, frozen, (f_gen, y_gen))
        loss_g = F.binary_cross_entropy_with_logits(g_logit, torch.ones_like(g_logit))
        loss = ce + reg + self.gen_weight * ce_gen + self.adv_weight * (loss_d + loss_g)
        parts = {"ce": ce, "ce_gen": ce_gen, "d": loss_d, "g": loss_g, "reg": reg}
        return loss, {k: float(v.detach()) for k, v in parts.items()}
