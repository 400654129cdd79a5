"""Two-branch CNN baseline, in the spirit of Xu et al., "Multisource remote sensing data classification
based on convolutional neural network", IEEE TGRS 56(2), 2018.

This is **our baseline design, not a transcription** of that paper's network: like Xu et al. it has one
convolutional branch per modality whose features are concatenated and classified by fully connected
layers, but the layer counts, widths and pooling are our choices, set in
``params/models/two_branch_cnn.yaml``.

With ``s = spectral_width``, ``w = width``, ``a = aux_width``, ``d = depth``, ``h = hidden``:

* primary branch ``(B, C1, P, P)``: 1x1 conv C1 -> s (a learned spectral reduction, cheap on 100+ bands),
  then ``d`` 3x3 'same' convs to ``w``, each conv -> BN -> ReLU -> ``(B, w, P, P)``;
* auxiliary branch ``(B, C2, P, P)``: ``d`` 3x3 'same' convs to ``a``, conv -> BN -> ReLU -> ``(B, a, P, P)``;
* each branch's map is summarised by its global average **and** its centre pixel, concatenated: the mean
  carries the neighbourhood context, the centre the pixel being labelled (a patch often straddles a class
  boundary, so pooling alone would blur the label pixel away) -> ``(B, 2w)`` and ``(B, 2a)``;
* fusion MLP: ``cat -> Linear(2w + 2a, h) -> BN -> ReLU -> Dropout -> Linear(h, K)`` -> logits ``(B, K)``.

Any patch size works. No explicit regularisation term; use the optimiser's weight decay instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stages.models.base import PatchClassifier
from stages.models.layers import conv_bn_relu, mean_and_centre
from stages.models.registry import register


@register("two_branch_cnn")
class TwoBranchCNN(PatchClassifier):
    """Two-branch CNN baseline (see the module docstring).

    Args:
        in_channels: ``(C1, C2)`` band counts of the primary and auxiliary inputs.
        n_classes: number of classes ``K``.
        patch_size: patch edge ``P`` (odd).
        spectral_width: output channels of the primary branch's 1x1 spectral conv.
        width: channels of the primary branch's 3x3 convs.
        aux_width: channels of the auxiliary branch's 3x3 convs.
        depth: number of 3x3 convs in each branch.
        hidden: units of the fusion MLP's hidden layer.
        dropout: dropout probability before the output layer.

    Forward: ``(B, C1, P, P)``, ``(B, C2, P, P)`` -> logits ``(B, K)``.
    """

    def __init__(
        self,
        *,
        in_channels: tuple[int, int],
        n_classes: int,
        patch_size: int,
        spectral_width: int = 64,
        width: int = 128,
        aux_width: int = 64,
        depth: int = 3,
        hidden: int = 256,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(in_channels=in_channels, n_classes=n_classes, patch_size=patch_size)
        if min(spectral_width, width, aux_width, depth, hidden) < 1:
            raise ValueError("TwoBranchCNN widths, depth and hidden must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        c1, c2 = self.in_channels

        primary = [conv_bn_relu(c1, spectral_width, 1)]
        ch = spectral_width
        for _ in range(depth):
            primary.append(conv_bn_relu(ch, width, 3))
            ch = width
        self.primary = nn.Sequential(*primary)

        auxiliary = []
        ch = c2
        for _ in range(depth):
            auxiliary.append(conv_bn_relu(ch, aux_width, 3))
            ch = aux_width
        self.auxiliary = nn.Sequential(*auxiliary)

        self.fusion = nn.Sequential(
            nn.Linear(2 * width + 2 * aux_width, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """``(B, C1, P, P)``, ``(B, C2, P, P)`` -> logits ``(B, K)``."""
        primary, auxiliary = self.cpu_channels_last(primary), self.cpu_channels_last(auxiliary)
        fp = mean_and_centre(self.primary(primary))  # (B, 2 * width)
        fa = mean_and_centre(self.auxiliary(auxiliary))  # (B, 2 * aux_width)
        return self.fusion(torch.cat([fp, fa], 1))
