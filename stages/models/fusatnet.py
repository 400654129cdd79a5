"""FusAtNet: dual attention-based spectral-spatial multimodal fusion (Mohla, Pande, Banerjee, Chaudhuri,
CVPR Workshops 2020), transcribed from the official Keras code (ShivamP1993/FusAtNet, ``model.py``).

Every conv unit is ``Conv2D(f, 3x3, same, relu, bias, L2) -> BatchNormalization`` (:class:`KerasConvUnit`).
With ``w = width`` (256), ``W = wide`` (1024), ``m = mask_width`` (128), ``Ch``/``Cl`` the primary
(HSI) and auxiliary (LiDAR) band counts and ``P`` the patch edge (11 in the paper):

* ``hs(xh)``: units w, w, w, w, w, W -> ``F_hs`` ``(B, W, P, P)``.
* ``mask_spec(xh)`` (spectral self-attention): c1=u_w, c2=u_w, cat(c1, c2) -> MaxPool2 ->
  c3=u_w, c4=u_w, cat(c3, c4) -> MaxPool2 -> u_w -> u_W -> MaxPool2 -> global average pool ->
  ``(B, W)``; at P=11 the maps go 11 -> 5 -> 2 -> 1.
* ``mask_spat(xl)`` (spatial cross-attention): c1=u_m, c2=u_m, cat(c1, c2) -> c3=u_m, c4=u_w,
  cat(c3, c4) -> u_w -> u_W -> ``(B, W, P, P)``.
* ``spec = F_hs * mask_spec`` (channel-wise), ``spat = F_hs * mask_spat`` (element-wise),
  ``conc = cat(xh, xl, spec, spat)`` ``(B, Ch + Cl + 2W, P, P)``.
* Modality attention: ``main2`` (as ``hs``) and ``att2`` (as ``mask_spat``) on ``conc``, multiplied
  element-wise -> ``(B, W, P, P)``.
* Classifier: units w, w, w, w, W with ``padding='valid'`` (P -> P - 10), global average pool,
  1x1 conv to ``n_classes`` (bias, L2, no BN) -> logits ``(B, n_classes)``.

Faithful to the official code: the topology, concatenations, widths of the ``paper`` preset, the
conv -> ReLU -> BN order, Keras BN defaults (momentum 0.99, eps 1e-3), glorot-uniform kernels and zero
biases, **no sigmoid on the masks** (they are ReLU+BN outputs, as in the code), and the coupled L2
penalty ``l2 * sum(w ** 2)`` over every conv kernel (not biases, not BN), added to the loss by
:meth:`FusAtNet.regularization`. At ``(Ch, Cl) = (144, 1)``, 15 classes and the paper widths it has
38,083,599 trainable parameters (conv weights and biases, BN gamma and beta), the count of a faithful
transcription of the Keras model.

Deviations, and why:

* ``forward`` returns logits: Keras applies softmax in the last layer and categorical cross-entropy on
  the probabilities, which is the same function as PyTorch's cross-entropy on logits (and numerically
  safer).
* The global average pool before the 1x1 classifier conv lets any ``P >= 11`` work; at ``P = 11`` the
  map is already 1x1, so the model is then identical to the original (pooling commutes with the
  linear 1x1 conv, so pooling first only saves work).
* Checkpoint selection uses a validation split carved from the training pixels; the official code picks
  the epoch with the best *test* accuracy, which leaks the test set into model selection.
* The ``quick`` preset narrows the widths so the model trains on a 2-core CPU; the topology is unchanged.
  It also sets ``bn_momentum`` to PyTorch's 0.1 instead of Keras' 0.01 (``momentum=0.99``): at 0.01 the
  running statistics need a few hundred steps to settle, more than a short run on a small training set
  has, and the eval-mode network stayed near chance (20% vs 99% validation OA on the small twin).
* Training length: the code loops 20 epochs under a comment saying 1000; the ``paper`` preset uses 1000.
* Augmentation (a training-stage matter, noted here for completeness): the code materialises rot90 x4
  copies of the training patches; the pipeline draws a random rotation/flip per batch instead.

Implementation note: on CPU the inputs are switched to channels-last memory layout (same values), which
makes oneDNN's convolutions about 1.8x faster here (``benchmarks/bench_models.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stages.models.base import PatchClassifier
from stages.models.layers import KERAS_BN_MOMENTUM, KerasConvUnit, keras_init_, l2_penalty
from stages.models.registry import register

# The classifier's five valid 3x3 convs remove 2 pixels each: P -> P - 10.
_CLF_DEPTH = 5
MIN_PATCH = 2 * _CLF_DEPTH + 1


def _stack(in_ch: int, widths: list[int], padding: str = "same") -> nn.Sequential:
    """A chain of :class:`KerasConvUnit` with the given output widths."""
    layers = []
    for out in widths:
        layers.append(KerasConvUnit(in_ch, out, 3, padding))
        in_ch = out
    return nn.Sequential(*layers)


class SpectralMask(nn.Module):
    """``mask_spec``: ``(B, C, P, P) -> (B, wide)``, a per-channel weight for ``F_hs``. Needs ``P >= 8``."""

    def __init__(self, in_ch: int, width: int, wide: int) -> None:
        super().__init__()
        self.c1 = KerasConvUnit(in_ch, width)
        self.c2 = KerasConvUnit(width, width)
        self.c3 = KerasConvUnit(2 * width, width)
        self.c4 = KerasConvUnit(width, width)
        self.c5 = KerasConvUnit(2 * width, width)
        self.c6 = KerasConvUnit(width, wide)
        self.pool = nn.MaxPool2d(2)  # Keras MaxPooling2D(2): stride 2, 'valid' (floor)

    def forward(self, x: Tensor) -> Tensor:
        c1 = self.c1(x)
        c2 = self.c2(c1)
        x = self.pool(torch.cat([c1, c2], 1))
        c3 = self.c3(x)
        c4 = self.c4(c3)
        x = self.pool(torch.cat([c3, c4], 1))
        x = self.pool(self.c6(self.c5(x)))
        return x.mean(dim=(2, 3))


class SpatialMask(nn.Module):
    """``mask_spat`` / ``att2``: ``(B, C, P, P) -> (B, wide, P, P)``, an element-wise weight."""

    def __init__(self, in_ch: int, mask_width: int, width: int, wide: int) -> None:
        super().__init__()
        self.c1 = KerasConvUnit(in_ch, mask_width)
        self.c2 = KerasConvUnit(mask_width, mask_width)
        self.c3 = KerasConvUnit(2 * mask_width, mask_width)
        self.c4 = KerasConvUnit(mask_width, width)
        self.c5 = KerasConvUnit(mask_width + width, width)
        self.c6 = KerasConvUnit(width, wide)

    def forward(self, x: Tensor) -> Tensor:
        c1 = self.c1(x)
        c2 = self.c2(c1)
        c3 = self.c3(torch.cat([c1, c2], 1))
        c4 = self.c4(c3)
        return self.c6(self.c5(torch.cat([c3, c4], 1)))


@register("fusatnet")
class FusAtNet(PatchClassifier):
    """FusAtNet (see the module docstring for the exact topology and deviations).

    Args:
        in_channels: ``(Ch, Cl)``: primary (HSI) and auxiliary (LiDAR) band counts.
        n_classes: number of classes ``K``.
        patch_size: patch edge ``P``, odd and ``>= 11``.
        width: width of the 256-channel units of the paper.
        wide: width of the 1024-channel units (feature maps that the masks multiply).
        mask_width: width of the 128-channel units of the spatial masks.
        l2: Keras ``kernel_regularizer=l2(l2)`` coefficient on every conv kernel.

    Forward: ``(B, Ch, P, P)``, ``(B, Cl, P, P)`` -> logits ``(B, K)``.
    """

    def __init__(
        self,
        *,
        in_channels: tuple[int, int],
        n_classes: int,
        patch_size: int,
        width: int = 256,
        wide: int = 1024,
        mask_width: int = 128,
        l2: float = 0.01,
        bn_momentum: float = KERAS_BN_MOMENTUM,
    ) -> None:
        super().__init__(in_channels=in_channels, n_classes=n_classes, patch_size=patch_size)
        if patch_size < MIN_PATCH:
            raise ValueError(
                f"FusAtNet needs patch_size >= {MIN_PATCH} (five valid 3x3 convs), got {patch_size}"
            )
        if min(width, wide, mask_width) < 1 or l2 < 0:
            raise ValueError("FusAtNet widths must be positive and l2 non-negative")
        ch, cl = self.in_channels
        self.width, self.wide, self.mask_width, self.l2 = width, wide, mask_width, float(l2)
        fused = ch + cl + 2 * wide

        self.hs = _stack(ch, [width] * 5 + [wide])
        self.mask_spec = SpectralMask(ch, width, wide)
        self.mask_spat = SpatialMask(cl, mask_width, width, wide)
        self.main2 = _stack(fused, [width] * 5 + [wide])
        self.att2 = SpatialMask(fused, mask_width, width, wide)
        self.clf = _stack(wide, [width] * (_CLF_DEPTH - 1) + [wide], padding="valid")
        self.head = nn.Conv2d(wide, n_classes, 1, bias=True)  # Keras: softmax here, no BN
        keras_init_(self.head)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = bn_momentum

    def forward(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """``(B, Ch, P, P)``, ``(B, Cl, P, P)`` -> logits ``(B, K)``."""
        primary, auxiliary = self.cpu_channels_last(primary), self.cpu_channels_last(auxiliary)
        f = self.hs(primary)  # (B, W, P, P)
        spec = f * self.mask_spec(primary)[:, :, None, None]  # channel-wise
        spat = f * self.mask_spat(auxiliary)  # element-wise
        conc = torch.cat([primary, auxiliary, spec, spat], 1)  # (B, Ch + Cl + 2W, P, P)
        fused = self.main2(conc) * self.att2(conc)  # (B, W, P, P)
        z = self.clf(fused)  # (B, W, P - 10, P - 10); 1x1 at P = 11
        z = z.mean(dim=(2, 3), keepdim=True)  # identity at P = 11
        return self.head(z).flatten(1)

    def regularization(self) -> Tensor:
        """Keras L2: ``l2 * sum(w ** 2)`` over every conv kernel (biases and BN excluded)."""
        return l2_penalty(self, self.l2)
