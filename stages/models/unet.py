"""UNet baselines (Ronneberger, Fischer, Brox, MICCAI 2015): one UNet over the stacked modalities.

The model is single-stream (``fills_missing_role = False``): ``forward`` concatenates ``primary`` and
``auxiliary`` along the channels and runs one UNet on the ``C1 + C2`` bands. Fed every modality it is the
**early-fusion UNet** (stacked modalities, as the AMM-FuseNet comparison's baselines in the authors'
sibling code CGSSL, ``network/_unet.py``, take one ``in_number``-band input); fed one modality the
auxiliary input is ``(B, 0, H, W)`` and it is the **single-modality UNet**, the same network on fewer
bands.

With ``w = base_width`` (64) and ``d = depth`` (4), every ``DoubleConv`` is
``(Conv3x3 'same' (no bias) -> BN -> ReLU) x 2``:

* encoder: ``DoubleConv(C1 + C2 -> w)``, then ``d`` times ``MaxPool2 -> DoubleConv(c -> 2c)``: widths
  w, 2w, ..., ``2**d w`` (64 .. 1024) at strides 1 .. ``2**d``;
* decoder: ``d`` times ``ConvTranspose2x2/2(c -> c/2)`` (the paper's "up-convolution"), concatenated with
  the encoder's skip at that scale (``c/2 + c/2``), ``DoubleConv(c -> c/2)``;
* ``Conv1x1(w -> K)`` with bias -> logits ``(B, K, H, W)``.

``upsample="bilinear"`` replaces each transposed conv with bilinear x2 upsampling (no parameters; the
following ``DoubleConv`` then sees ``c + c/2`` channels). ``H`` and ``W`` must be multiples of
``stride = 2**depth`` (an instance attribute here; the class attribute is the default depth's 16).

Faithful to the 2015 architecture in its layout (4 levels, doubling widths 64..1024, max-pool down,
2x2 up-convolution, skip concatenation, 1x1 output conv), with the usual modern changes, as in the
widely used PyTorch re-implementation the AMM-FuseNet authors' CGSSL code uses: 'same' padding (so the
output grid equals the input grid and no skip cropping is needed) and BatchNorm after every 3x3 conv.
No dropout, no pretrained weights; PyTorch's default initialisation. At the ``paper`` preset with 15
input bands (S2 + S1) and 7 classes it has 31,044,935 parameters.

Implementation note: on CPU the input is switched to channels-last memory layout (same values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.models.base import Segmenter
from stages.models.registry import register

UPSAMPLE_MODES = ("transpose", "bilinear")


class DoubleConv(nn.Sequential):
    """``(Conv3x3 'same', no bias -> BN -> ReLU) x 2``: ``(B, in, h, w) -> (B, out, h, w)``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample ``(B, c, h, w)`` x2, concatenate the skip ``(B, c/2, 2h, 2w)``, ``DoubleConv`` -> ``c/2``."""

    def __init__(self, in_ch: int, upsample: str) -> None:
        super().__init__()
        out_ch = in_ch // 2
        if upsample == "transpose":
            self.up: nn.Module | None = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
            self.conv = DoubleConv(2 * out_ch, out_ch)
        else:
            self.up = None  # bilinear, parameter-free
            self.conv = DoubleConv(in_ch + out_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if self.up is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        else:
            x = self.up(x)
        return self.conv(torch.cat([skip, x], 1))


@register("unet")
class UNet(Segmenter):
    """UNet over ``cat(primary, auxiliary)`` (see the module docstring).

    Args:
        in_channels: ``(C1, C2)`` band counts; ``C2`` may be 0 (one modality selected).
        n_classes: number of classes ``K``.
        patch_size: training tile edge, a multiple of ``2**depth``.
        base_width: channels of the first level (64 in the paper); level i has ``base_width * 2**i``.
        depth: number of down-sampling steps (4 in the paper).
        upsample: ``"transpose"`` (2x2 transposed conv, the paper's up-convolution) or ``"bilinear"``.

    Forward: ``(B, C1, H, W)``, ``(B, C2, H, W)`` -> logits ``(B, K, H, W)``.
    """

    fills_missing_role = False
    stride = 2**4

    def __init__(
        self,
        *,
        in_channels: tuple[int, int],
        n_classes: int,
        patch_size: int,
        base_width: int = 64,
        depth: int = 4,
        upsample: str = "transpose",
    ) -> None:
        if base_width < 1 or depth < 1:
            raise ValueError(f"UNet needs base_width >= 1 and depth >= 1, got {base_width}, {depth}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        self.stride = 2**depth  # per instance, set before the base class checks patch_size against it
        super().__init__(in_channels=in_channels, n_classes=n_classes, patch_size=patch_size)
        self.depth, self.upsample = depth, upsample
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(sum(self.in_channels), widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(Up(widths[i + 1], upsample) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """``(B, C1, H, W)``, ``(B, C2, H, W)`` (``C2`` may be 0) -> logits ``(B, K, H, W)``.

        ``H`` and ``W`` must be multiples of ``self.stride``; anything else raises ``ValueError``.
        """
        self.check_tiles(primary, auxiliary)
        x = self.cpu_channels_last(torch.cat([primary, auxiliary], 1) if auxiliary.shape[1] else primary)
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)
