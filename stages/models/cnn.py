"""Single-stream CNN baseline: one CNN over the channel-concatenation of the model's two inputs.

This is **our baseline design**, sized like ``two_branch_cnn`` so the comparison is fair. The data layer
does not fill an unselected role for this model (``fills_missing_role = False``), so the experiment's
modalities decide what it is:

* modalities ``[primary]`` (e.g. HSI) -> the HSI-only CNN (auxiliary input ``(B, 0, P, P)``);
* modalities ``[auxiliary]`` (e.g. LiDAR, SAR) -> the auxiliary-only CNN (the data layer puts the lone
  modality in the primary role; auxiliary ``(B, 0, P, P)``);
* both -> **early fusion**: the stacked bands ``(B, C1 + C2, P, P)`` go through one CNN.

With ``s = spectral_width``, ``w = width``, ``d = depth``, ``h = hidden``, ``C = C1 + C2``:

* ``cat(primary, auxiliary)`` ``(B, C, P, P)`` -> 1x1 conv ``C -> s`` (learned spectral reduction), then
  ``d`` 3x3 'same' convs to ``w``; every conv -> BN -> ReLU -> ``(B, w, P, P)``;
* summary: global average and centre-pixel features, concatenated -> ``(B, 2w)`` (the mean carries the
  neighbourhood, the centre the pixel being labelled);
* MLP: ``Linear(2w, h) -> BN -> ReLU -> Dropout -> Linear(h, K)`` -> logits ``(B, K)``.

Any patch size and band count work. No explicit regularisation term; use the optimiser's weight decay.

Implementation note: unlike the wider models, this one keeps PyTorch's default NCHW layout on CPU; at the
quick widths (16-32 channels) oneDNN's channels-last path was slower here (full-scene inference at 2
threads ~16 s vs ~20 s with 144 + 1 bands, training about the same; ``benchmarks/bench_models.py``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from stages.models.base import PatchClassifier
from stages.models.layers import conv_bn_relu, mean_and_centre
from stages.models.registry import register


@register("cnn")
class SingleStreamCNN(PatchClassifier):
    """Single-stream CNN over ``cat(primary, auxiliary)`` (see the module docstring).

    Args:
        in_channels: ``(C1, C2)`` band counts of the primary and auxiliary inputs; ``C2`` may be 0.
        n_classes: number of classes ``K``.
        patch_size: patch edge ``P`` (odd).
        spectral_width: output channels of the 1x1 spectral conv.
        width: channels of the 3x3 convs.
        depth: number of 3x3 convs.
        hidden: units of the MLP's hidden layer.
        dropout: dropout probability before the output layer.

    Forward: ``(B, C1, P, P)``, ``(B, C2, P, P)`` -> logits ``(B, K)``.
    """

    fills_missing_role: ClassVar[bool] = False

    def __init__(
        self,
        *,
        in_channels: tuple[int, int],
        n_classes: int,
        patch_size: int,
        spectral_width: int = 64,
        width: int = 128,
        depth: int = 3,
        hidden: int = 256,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(in_channels=in_channels, n_classes=n_classes, patch_size=patch_size)
        if min(spectral_width, width, depth, hidden) < 1:
            raise ValueError("cnn widths, depth and hidden must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers = [conv_bn_relu(sum(self.in_channels), spectral_width, 1)]
        ch = spectral_width
        for _ in range(depth):
            layers.append(conv_bn_relu(ch, width, 3))
            ch = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(2 * width, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """``(B, C1, P, P)``, ``(B, C2, P, P)`` -> logits ``(B, K)``."""
        x = primary if auxiliary.shape[1] == 0 else torch.cat([primary, auxiliary], 1)
        f = self.features(x)  # (B, width, P, P); NCHW on purpose, see the module docstring
        return self.classifier(mean_and_centre(f))
