"""Coupled self-looping CNN with cross-modal self-supervision (S. Pande, B. Banerjee, "Self-supervision
assisted multimodal remote sensing image classification with coupled self-looping convolution networks",
Neural Networks 164, 2023), transcribed from the official TF2/Keras code
(ShivamP1993/Self-supervision-assisted-multimodal-remote-sensing-image-fusion-with-coupled-CNNs-and-self-loops,
``model.py``).

With ``Ch``/``Cl`` the primary (HSI) and auxiliary (LiDAR) band counts, ``w = width`` (64), ``P`` the
patch edge (11) and ``K`` classes. One **sub-network per kernel size** ``k`` in ``kernel_sizes`` ((3, 5)),
each with its own weights:

* HSI stem ``(B, Ch, P, P)``: the bands are laid out on an ``s x s`` grid (``s = ceil(sqrt(Ch))``, band
  ``b`` at depth ``b // s``, channel ``b % s``), ``Conv3D(f, 3x3x3, same, ReLU)`` over (row, col, depth),
  reshaped back to ``f * s`` channels, ``Conv2D(w, k, same, ReLU)`` -> ``(B, w, P, P)``.
* Auxiliary stem ``(B, Cl, P, P)``: ``Conv2D(w, k, same, ReLU)`` -> ``(B, w, P, P)``.
* Coupling: four ``Conv2D(w, k, same, ReLU)`` layers ``l1..l4`` whose weights are **shared by the HSI and
  the auxiliary stream**; every application is followed by its own (unshared) ``BatchNormalization``.
* Self-loop, per stream, from the stem output ``x`` (``u_i`` = ``l_i`` -> ReLU -> its own BN)::

      Stage I:  c1 = u1(x);  c2 = u2(x + c1);  c3 = u3(x + c1 + c2);  c4 = u4(x + c1 + c2 + c3)
      Stage II: c1 = u1(c2 + c3 + c4);  c2 = u2(c1 + c3 + c4);  c3 = u3(c1 + c2 + c4);  c4 = u4(c1 + c2 + c3)

  stream feature ``GAP(cat(c1..c4 of Stage II))`` -> ``(B, 4w)``.
* Fusion per ``k``: ``d_k = Dense(32, ReLU)(cat(h_k, l_k))``; classifier ``Dense(K)(cat(d_3, d_5))``.
* Cross-modal self-supervision (training only): a decoder reconstructs the **auxiliary** patch from the
  HSI features ``cat(h_3, h_5)`` and another the **HSI** patch from the auxiliary features
  ``cat(l_3, l_5)``. Decoder: ``Dense(64, ReLU)`` -> ``1x1x64`` -> ``n`` x [``ConvT(64, 3, valid, ReLU)``
  -> ``ConvT(64, 3, same, ReLU)`` -> concat] -> ``ConvT(64, 3, valid, ReLU)`` -> ``ConvT(C, 3, valid)``,
  so the map grows ``1 -> 3 -> 5 -> ... -> P``.
* Loss: ``CE + rec_weight_aux * RMSE(X_aux, rec_HSI->aux) + rec_weight_primary * RMSE(X_HSI, rec_aux->HSI)``
  (RMSE over every element of the batch, as the code's ``my_rmse``), both weights 1 in the code.

Faithful to the code: the topology above, the shared-weight coupling with per-application BN, the exact
Stage-I/II sums, the ReLU-before-BN order, no BN after the stems, Keras BN defaults (momentum 0.99, i.e.
PyTorch 0.01; eps 1e-3), ``glorot_normal`` kernels (truncated normal) for every conv / transposed conv,
Keras' default ``glorot_uniform`` for the dense layers, zero biases. At ``(Ch, Cl) = (144, 1)``, 15
classes, ``P = 11`` and the paper widths it has **1,806,552** trainable parameters: 919,047 on the
classification path and 887,505 in the two decoders, the count of the Keras model.

**The code's LiDAR Stage-I quirk** is reproduced by default (``lidar_quirk=True``): the LiDAR stream
overwrites its stem variable with ``x + c1`` and then adds ``c1`` again, so its Stage-I inputs are
``x + 2 c1 + c2`` and ``x + 2 c1 + c2 + c3`` instead of the HSI stream's ``x + c1 + c2`` and
``x + c1 + c2 + c3``. ``lidar_quirk=False`` gives the symmetric loop the paper's equations describe. The
flag changes no parameter.

Generalisations (identical to the code at 144 bands and ``P = 11``):

* **Any band count.** The code reshapes 144 bands to ``12 x 12``. We zero-pad the band axis at its end to
  the next perfect square ``s * s`` (144 -> 144, no padding; 244 -> 256, ``s = 16``; 1 -> 1) and use
  ``f = s`` 3-D filters by default (the code's 12), so the reshape back gives ``s * s`` channels. The
  ``stem3d_filters`` argument sets ``f`` (``f * s`` channels after the reshape); the quick preset uses a
  smaller ``f`` because the 3-D conv is the most expensive layer on a CPU.
* **Any odd patch size >= 5.** The code's decoder has 3 (valid, same) pairs, which gives 11 x 11; we use
  ``n = (P - 5) / 2`` pairs (3 at ``P = 11``), so the reconstruction always matches the input patch.
* **Single-modality runs** (role filling, see :mod:`stages.models.base`): both streams then see the same
  modality, e.g. the HSI through the 3-D stem and through the plain 2-D auxiliary stem, and each decoder
  rebuilds that modality from the other stream's features.

Deviations, and why:

* The decoders end **linear** instead of ``sigmoid``: the code min-max scales its inputs to [0, 1]; ours
  are z-scored per band (unbounded), which a sigmoid cannot reach. The parameter count is unchanged.
* ``forward`` returns logits (the code's softmax + categorical cross-entropy is the same function); the
  decoders run only in :meth:`training_loss`, so inference costs the classification path alone.
* Checkpoint selection uses a validation split carved from the training pixels; the code's
  ``ModelCheckpoint`` monitors ``val_accuracy`` computed on the **test** set.
* Augmentation (a training-stage matter): the code materialises rot90 x4 copies; the pipeline draws a
  random rotation/flip per batch (``augment_rot90``).
* Optimiser details outside this module: the pipeline's NAdam uses PyTorch's ``eps=1e-8`` (Keras 1e-7),
  and the paper preset's ``exp_after`` schedule starts at epoch 19 so that it reproduces the Keras
  scheduler's rates exactly (tested).
* The quick preset narrows the widths, uses fewer 3-D filters and PyTorch's BN momentum 0.1 (see
  ``params/models/pande_banerjee.yaml``); the topology is unchanged.

Implementation notes: the 3-D stem conv is computed as an equivalent 2-D conv (see :class:`SpectralStem`),
once for all sub-networks. Unlike the wider models, this one stays in NCHW on CPU: with 8-16 channel
convs oneDNN's channels-last path was ~9% slower here, for training and inference
(``benchmarks/bench_models.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.models.base import PatchClassifier
from stages.models.layers import KERAS_BN_EPS, KERAS_BN_MOMENTUM
from stages.models.registry import register

# Keras' truncated-normal initialisers divide the std by this so the truncated draw keeps the variance.
_TRUNC_STD_CORRECTION = 0.87962566103423978
MIN_PATCH = 5


def glorot_normal_(weight: Tensor) -> None:
    """Keras ``glorot_normal``: truncated normal (at 2 std), std ``sqrt(2 / (fan_in + fan_out)) / 0.8796``.

    PyTorch's fan computation gives the same ``fan_in + fan_out`` as Keras for dense, conv and
    transposed-conv kernels (the sum is symmetric in the two).
    """
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    std = math.sqrt(2.0 / (fan_in + fan_out)) / _TRUNC_STD_CORRECTION
    nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def _glorot_normal_layer(layer: nn.Module) -> nn.Module:
    glorot_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _keras_dense(in_features: int, out_features: int) -> nn.Linear:
    """Keras ``Dense`` defaults: glorot-uniform kernel, zero bias."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def band_grid(bands: int) -> int:
    """Edge ``s`` of the smallest ``s x s`` grid holding ``bands`` bands (12 for 144)."""
    return math.isqrt(bands - 1) + 1


class SpectralStem(nn.Module):
    """HSI stem: ``(B, C, P, P)`` -> band grid -> ``Conv3D(f, 3x3x3)`` -> ``Conv2D(width, k)`` ->
    ``(B, width, P, P)``.

    The 3-D conv keeps its ``(f, s, 3, 3, 3)`` kernel (``self.conv3d``) but is computed as a 2-D conv over
    the depth slices folded into the batch, ``(B * s, s, P, P) -> (B * s, 3f, P, P)`` (one ``f``-block per
    depth tap, :meth:`taps`), followed by the shifted sum over the three taps (:meth:`finish`): the same
    operation as ``F.conv3d`` with ``padding=1`` (tested), several times faster on CPU, where oneDNN's
    3-D path is slow for these shapes. :class:`PandeBanerjee` runs the taps of all its sub-networks'
    stems in one call, so the many-band input is read once.
    """

    def __init__(self, bands: int, width: int, k: int, filters: int | None) -> None:
        super().__init__()
        self.bands = bands
        self.grid = band_grid(bands)
        self.filters = filters or self.grid
        self.conv3d = _glorot_normal_layer(nn.Conv3d(self.grid, self.filters, 3, padding=1))
        self.conv2d = _glorot_normal_layer(nn.Conv2d(self.filters * self.grid, width, k, padding=k // 2))

    def pad(self, x: Tensor) -> Tensor:
        """``(B, C, P, P)`` -> ``(B, s * s, P, P)``, zeros after the last band (identity at 144 bands)."""
        missing = self.grid**2 - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, 0, missing)) if missing else x

    def taps(self) -> Tensor:
        """The 3-D kernel as 2-D taps ``(3f, s, 3, 3)``, row ``kd * f + filter`` (kd = depth offset + 1)."""
        return self.conv3d.weight.permute(2, 0, 1, 3, 4).reshape(3 * self.filters, self.grid, 3, 3)

    def finish(self, y: Tensor) -> Tensor:
        """Per-tap maps ``(B, s, 3f, P, P)`` -> ``ReLU(Conv3D)`` reshaped back to ``(B, s * f, P, P)``.

        ``F.conv3d`` is a cross-correlation along depth too: depth ``d`` sums tap 0 of depth ``d - 1``,
        tap 1 of ``d`` and tap 2 of ``d + 1`` (zero padding). Keras' ``Reshape([P, P, s, s])`` of a
        band-last patch puts band ``depth * s + channel``; the reshape back puts ``depth * f + filter``.
        """
        b, s, _, h, w = y.shape
        y = y.reshape(b, s, 3, self.filters, h, w)
        out = y[:, :, 1].clone()
        if s > 1:
            out[:, 1:] += y[:, :-1, 0]
            out[:, :-1] += y[:, 1:, 2]
        out = F.relu(out + self.conv3d.bias[:, None, None])
        return out.reshape(b, s * self.filters, h, w)

    def spectral_conv(self, x: Tensor) -> Tensor:
        """``(B, C, P, P)`` -> ``ReLU(Conv3D)`` on the band grid, ``(B, s * f, P, P)``."""
        return self.finish(depth_taps(self.pad(x), self.grid, self.taps()))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2d(self.spectral_conv(x)))


def depth_taps(x: Tensor, grid: int, taps: Tensor) -> Tensor:
    """``(B, s * s, P, P)`` -> ``(B, s, T, P, P)``: the ``T`` 2-D taps applied to every depth slice."""
    b, _, h, w = x.shape
    y = F.conv2d(x.contiguous().reshape(b * grid, grid, h, w), taps, padding=1)
    return y.reshape(b, grid, taps.shape[0], h, w)


class CoupledLoop(nn.Module):
    """The shared layers ``l1..l4`` and their self-loop, run on the HSI and auxiliary stem outputs.

    ``(B, w, P, P)``, ``(B, w, P, P)`` -> HSI and auxiliary features ``(B, 4w)``, ``(B, 4w)``.
    """

    def __init__(self, width: int, k: int, bn_momentum: float, lidar_quirk: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            _glorot_normal_layer(nn.Conv2d(width, width, k, padding=k // 2)) for _ in range(4)
        )

        def bns() -> nn.ModuleList:  # one BN per application: 2 stages x 4 layers
            return nn.ModuleList(
                nn.BatchNorm2d(width, eps=KERAS_BN_EPS, momentum=bn_momentum) for _ in range(8)
            )

        self.bn_primary = bns()
        self.bn_auxiliary = bns()
        self.lidar_quirk = lidar_quirk

    def _stream(self, x: Tensor, bns: nn.ModuleList, quirk: bool) -> Tensor:
        """One stream's two-stage loop: ``(B, w, P, P)`` -> ``GAP(cat(c1..c4))`` ``(B, 4w)``."""

        def unit(i: int, stage: int, inp: Tensor) -> Tensor:  # shared conv l_{i+1} -> ReLU -> own BN
            return bns[4 * stage + i](F.relu(self.convs[i](inp)))

        # Stage I
        c1 = unit(0, 0, x)
        s = x + c1
        c2 = unit(1, 0, s)
        if quirk:
            s = s + c1  # the code's reused variable: x + c1, plus c1 again
        s = s + c2
        c3 = unit(2, 0, s)
        c4 = unit(3, 0, s + c3)
        # Stage II (loop back through the same layers); shared partial sums, same values
        t34 = c3 + c4
        c1 = unit(0, 1, c2 + t34)
        c2 = unit(1, 1, c1 + t34)
        t12 = c1 + c2
        c3 = unit(2, 1, t12 + c4)
        c4 = unit(3, 1, t12 + c3)
        # GAP(cat(c1..c4)) == cat(GAP(c1), ..., GAP(c4))
        return torch.cat([t.mean(dim=(2, 3)) for t in (c1, c2, c3, c4)], 1)

    def forward(self, xp: Tensor, xa: Tensor) -> tuple[Tensor, Tensor]:
        return self._stream(xp, self.bn_primary, False), self._stream(xa, self.bn_auxiliary, self.lidar_quirk)


class SubNetwork(nn.Module):
    """``my_cnn`` of the code for one kernel size: stems, coupled loop, per-k fusion dense layer.

    Returns ``(d_k (B, fusion), h_k (B, 4w), l_k (B, 4w))``.
    """

    def __init__(
        self,
        in_channels: tuple[int, int],
        width: int,
        k: int,
        fusion_width: int,
        stem3d_filters: int | None,
        bn_momentum: float,
        lidar_quirk: bool,
    ) -> None:
        super().__init__()
        self.stem_primary = SpectralStem(in_channels[0], width, k, stem3d_filters)
        self.stem_auxiliary = _glorot_normal_layer(nn.Conv2d(in_channels[1], width, k, padding=k // 2))
        self.loop = CoupledLoop(width, k, bn_momentum, lidar_quirk)
        self.fuse = _keras_dense(8 * width, fusion_width)

    def forward(self, spectral: Tensor, auxiliary: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """This sub-network's 3-D stem output ``(B, s * f, P, P)`` and the auxiliary ``(B, Cl, P, P)``."""
        xp = F.relu(self.stem_primary.conv2d(spectral))
        xa = F.relu(self.stem_auxiliary(auxiliary))
        h, l = self.loop(xp, xa)  # noqa: E741 -- the paper's l_k
        return F.relu(self.fuse(torch.cat([h, l], 1))), h, l


class CrossDecoder(nn.Module):
    """``(B, F)`` features -> ``(B, out_channels, P, P)`` reconstruction (``rec_hs`` / ``rec_lid``)."""

    def __init__(self, in_features: int, out_channels: int, width: int, patch_size: int) -> None:
        super().__init__()
        self.fc = _keras_dense(in_features, width)
        self.valid = nn.ModuleList()
        self.same = nn.ModuleList()
        ch = width
        for _ in range((patch_size - MIN_PATCH) // 2):  # 3 pairs at P = 11: 1 -> 3 -> 5 -> 7
            self.valid.append(_glorot_normal_layer(nn.ConvTranspose2d(ch, width, 3)))
            self.same.append(_glorot_normal_layer(nn.ConvTranspose2d(width, width, 3, padding=1)))
            ch = 2 * width
        self.grow = _glorot_normal_layer(nn.ConvTranspose2d(ch, width, 3))  # -> P - 2
        self.out = _glorot_normal_layer(nn.ConvTranspose2d(width, out_channels, 3))  # -> P, linear

    def forward(self, z: Tensor) -> Tensor:
        x = F.relu(self.fc(z))[:, :, None, None]  # (B, width, 1, 1)
        for valid, same in zip(self.valid, self.same, strict=True):
            a = F.relu(valid(x))
            x = torch.cat([a, F.relu(same(a))], 1)
        return self.out(F.relu(self.grow(x)))


def rmse(target: Tensor, estimate: Tensor) -> Tensor:
    """The code's ``my_rmse``: square root of the mean squared error over every element of the batch."""
    return (target - estimate).pow(2).mean().sqrt()


@register("pande_banerjee")
class PandeBanerjee(PatchClassifier):
    """Coupled self-looping CNN with cross-modal reconstruction (see the module docstring).

    Args:
        in_channels: ``(Ch, Cl)``: primary (HSI) and auxiliary (LiDAR / SAR) band counts.
        n_classes: number of classes ``K``.
        patch_size: patch edge ``P``, odd and ``>= 5`` (11 in the paper).
        width: channels of the stems and the shared layers (64).
        kernel_sizes: one sub-network per kernel size ((3, 5)).
        fusion_width: units of each sub-network's fusion dense layer (32).
        decoder_width: units / channels of the decoders (64).
        stem3d_filters: filters of the 3-D stem conv; ``None`` = the band-grid edge ``s`` (12 at 144 bands,
            as in the code).
        rec_weight_aux: weight of ``RMSE(X_aux, rec_HSI->aux)`` (lambda_1 = 1).
        rec_weight_primary: weight of ``RMSE(X_HSI, rec_aux->HSI)`` (lambda_2 = 1).
        lidar_quirk: reproduce the code's LiDAR Stage-I sums (``c1`` counted twice).
        bn_momentum: PyTorch BN momentum (Keras' 0.99 is PyTorch's 0.01).

    Forward: ``(B, Ch, P, P)``, ``(B, Cl, P, P)`` -> logits ``(B, K)``.
    """

    def __init__(
        self,
        *,
        in_channels: tuple[int, int],
        n_classes: int,
        patch_size: int,
        width: int = 64,
        kernel_sizes: Sequence[int] = (3, 5),
        fusion_width: int = 32,
        decoder_width: int = 64,
        stem3d_filters: int | None = None,
        rec_weight_aux: float = 1.0,
        rec_weight_primary: float = 1.0,
        lidar_quirk: bool = True,
        bn_momentum: float = KERAS_BN_MOMENTUM,
    ) -> None:
        super().__init__(in_channels=in_channels, n_classes=n_classes, patch_size=patch_size)
        if patch_size < MIN_PATCH:
            raise ValueError(
                f"pande_banerjee needs an odd patch_size >= {MIN_PATCH} (the decoder grows "
                f"1 -> 3 -> ... -> P), got {patch_size}"
            )
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd and positive, got {kernel_sizes}")
        if min(width, fusion_width, decoder_width) < 1 or (stem3d_filters is not None and stem3d_filters < 1):
            raise ValueError("pande_banerjee widths must be positive")
        if rec_weight_aux < 0 or rec_weight_primary < 0:
            raise ValueError("reconstruction weights must be non-negative")
        ch, cl = self.in_channels
        self.kernel_sizes = kernel_sizes
        self.rec_weight_aux, self.rec_weight_primary = float(rec_weight_aux), float(rec_weight_primary)
        self.branches = nn.ModuleList(
            SubNetwork(self.in_channels, width, k, fusion_width, stem3d_filters, bn_momentum, lidar_quirk)
            for k in kernel_sizes
        )
        self.head = _keras_dense(len(kernel_sizes) * fusion_width, n_classes)
        feat = 4 * width * len(kernel_sizes)
        self.rec_aux = CrossDecoder(feat, cl, decoder_width, patch_size)  # HSI features -> auxiliary
        self.rec_primary = CrossDecoder(feat, ch, decoder_width, patch_size)  # auxiliary features -> HSI

    def _encode(self, primary: Tensor, auxiliary: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``(B, K)`` and the HSI / auxiliary features ``cat(h_k)``, ``cat(l_k)`` ``(B, 4w * n_k)``."""
        stems = [branch.stem_primary for branch in self.branches]
        # Every sub-network's 3-D stem in one conv call (the band-padded input is read once).
        y = depth_taps(stems[0].pad(primary), stems[0].grid, torch.cat([st.taps() for st in stems], 0))
        per_stem = y.split([3 * st.filters for st in stems], 2)
        spectral = [st.finish(t) for st, t in zip(stems, per_stem, strict=True)]
        outs = [branch(x, auxiliary) for branch, x in zip(self.branches, spectral, strict=True)]
        logits = self.head(torch.cat([d for d, _, _ in outs], 1))
        return logits, torch.cat([h for _, h, _ in outs], 1), torch.cat([l for _, _, l in outs], 1)  # noqa: E741

    def forward(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """``(B, Ch, P, P)``, ``(B, Cl, P, P)`` -> logits ``(B, K)`` (the decoders are not run)."""
        return self._encode(primary, auxiliary)[0]

    def reconstruct(self, primary: Tensor, auxiliary: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, the auxiliary patch rebuilt from HSI features and the HSI patch from auxiliary ones."""
        logits, h, l = self._encode(primary, auxiliary)  # noqa: E741
        return logits, self.rec_aux(h), self.rec_primary(l)

    def training_loss(
        self, primary: Tensor, auxiliary: Tensor, target: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """``CE + rec_weight_aux * RMSE(aux) + rec_weight_primary * RMSE(primary)``; parts for logging."""
        logits, rec_aux, rec_primary = self.reconstruct(primary, auxiliary)
        ce = F.cross_entropy(logits, target)
        r_aux = rmse(auxiliary, rec_aux)
        r_primary = rmse(primary, rec_primary)
        reg = self.regularization()
        loss = ce + self.rec_weight_aux * r_aux + self.rec_weight_primary * r_primary + reg
        parts = {
            "ce": float(ce.detach()),
            "rec_aux": float(r_aux.detach()),
            "rec_primary": float(r_primary.detach()),
            "reg": float(reg.detach()),
        }
        return loss, parts
