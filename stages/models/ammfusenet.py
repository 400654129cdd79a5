"""AMM-FuseNet: attention-based multi-modal image fusion for land-cover mapping (Ma, Karakuş, Rosin,
Remote Sensing 14(18):4458, 2022), written here after the official PyTorch code
(oktaykarakus/ReSIF, ``AMM-FuseNet/network/modeling.py``, ``_dual_parasingle.py``, ``eca_module.py``,
``train.py``; the default model ``dual_parasingle_nopretrained``).

Two ResNet-50 encoders (:class:`~stages.models.resnet.ResNetEncoder`), one per modality, with conv1
taking that modality's band count, layer4 dilated (output stride 16; 8 dilates layer3 too) and no
pretrained weights. With ``r = reduce_width`` (48), ``a = aspp_width`` (256), ``f = fuse_width`` (256)
and ``L1..L4`` the layer1..layer4 widths (256, 512, 1024, 2048 for ResNet-50), per modality:

* ``layer_i -> Conv1x1(L_i, r) -> BN -> ReLU -> ECA`` for i = 1..4 (:class:`Reduce`); layer2 is
  resized bilinearly to layer1's grid (x2), ``cat(layer3, layer4)`` likewise (x4 at output stride 16);
* CADenseASPP on layer1 (:class:`DenseASPP`): four atrous 3x3 convs at rates 3, 6, 12, 18, each
  ``Conv -> BN -> ECA -> ReLU`` with ``a`` outputs, densely connected (branch k sees
  ``cat(layer1, a_1..a_{k-1})``), an image-pool branch (GAP -> 1x1 -> BN -> ReLU -> upsample), and
  ``cat(layer1, a_1..a_4, pool)`` ``(L1 + 5a)`` -> 1x1 ``a`` -> BN -> ReLU -> Dropout(0.1);
* the modality's decoder features ``cat(red1, red2, red34, aspp)``: ``4r + a`` = 448 channels at stride 4.

Fusion (late, by concatenation; no cross-modal attention): ``cat(primary 448, auxiliary 448)`` = 896 ->
Conv3x3 ``f`` -> BN -> ReLU -> Conv1x1 ``K`` (with bias) -> bilinear to the input size. ECA (Wang et
al., CVPR 2020) is ``x * sigmoid(Conv1d_k3(GAP(x)))`` with one 3-tap kernel shared over channels (the
code's ``eca_layer`` takes a channel count but ignores it: k = 3 always, no bias).

Shapes: ``primary (B, C1, H, W)``, ``auxiliary (B, C2, H, W)`` -> logits ``(B, K, H, W)``; ``H`` and
``W`` multiples of :attr:`AMMFuseNet.stride` (16), so every stage halves the grid exactly and the
stride-16/8 maps resize to the stride-4 grid by exactly x4/x2.

Parameter count. At ``(C1, C2) = (13, 2)`` (Hunan S2 + S1), 7 classes and the ``paper`` preset the
model has 62,332,663 parameters: encoders 23,539,392 + 23,504,896, head 15,288,375, of which the two
DenseASPPs are 12,852,248 (6,426,124 each). That includes the code's DenseASPP ``conv1`` (1x1 256->256 +
BN, 66,048 parameters per modality), which is built but never used in ``forward``: it is kept, behind
``keep_unused_aspp_conv1`` (on in the ``paper`` preset, off in ``quick``), only so the count matches the
official model; it receives no gradient, and PyTorch's SGD skips parameters without one (as it does in
the official training). Without it the paper preset has 62,200,567. With 11 classes (DFC 2020) the
count is 62,333,691.

Faithful to the official code: the topology above, the channel widths, the dilation rates, the ECA
placement (after the 48-channel reductions' ReLU; between BN and ReLU in the ASPP branches), the
dropout, the upsampling (bilinear, ``align_corners=False``), no pretrained weights, and the
initialisation: torchvision's ResNet init in the encoders except conv1, which the code replaces after
init (so PyTorch's default conv init); ``kaiming_normal_`` (fan-in) on the layer1 reductions, the
DenseASPPs and the classifier; PyTorch defaults on the layer2-4 reductions and the ECA kernels (the code
creates those after its ``_init_weight`` call). Encoder BN momentum 0.01 in PyTorch's convention, as
``train.py`` sets with ``set_bn_momentum(backbone, 0.01)`` (the running statistics move 1% per step);
head BNs keep PyTorch's 0.1. Loss: cross-entropy with an ignore label (the code's default; its focal
loss option is not used).

Deviations, and why:

* The ``quick`` preset narrows and shortens the encoders (``base_width``, ``blocks``) and the head
  widths so the model trains on a 2-core CPU, and sets the encoder BN momentum to 0.1: at 0.01 the
  running statistics lag a short run and the eval-mode network predicts poorly (the lesson of FusAtNet's
  quick preset here).
* Training recipe (a training-stage matter, in ``params/models/ammfusenet.yaml``): the poly schedule steps
  per epoch in our loop, the code's per iteration with a floor of 1e-6; the 50k iterations become a
  stated number of epochs; the checkpoint is selected on our validation split by mIoU (the code also
  keeps the best validation mIoU, on its own val folder).
* ``output_stride`` 8 is supported as in the code (layer3 and layer4 dilated); the code's ``aspp_dilate``
  argument is unused there and has no counterpart here.

Implementation note: on CPU the inputs are switched to channels-last memory layout (same values).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.models.base import Segmenter
from stages.models.registry import register
from stages.models.resnet import ResNetEncoder


class ECA(nn.Module):
    """Efficient channel attention: ``x * sigmoid(Conv1d_k(GAP(x)))``, one k-tap kernel over channels.

    ``(B, C, H, W) -> (B, C, H, W)``; ``k`` parameters, no bias, independent of ``C``.
    """

    def __init__(self, k_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k_size, padding=(k_size - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.mean(dim=(2, 3))[:, None, :])  # (B, 1, C): a 1-D conv across channels
        return x * torch.sigmoid(y)[:, 0, :, None, None]


class Reduce(nn.Sequential):
    """``Conv1x1(in, out, no bias) -> BN -> ReLU -> ECA``: an encoder stage squeezed to ``out`` channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True), ECA()
        )


class AtrousECA(nn.Sequential):
    """One DenseASPP branch: ``Conv3x3(rate, no bias) -> BN -> ECA -> ReLU``, grid unchanged."""

    def __init__(self, in_ch: int, out_ch: int, rate: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=rate, dilation=rate, bias=False),
            nn.BatchNorm2d(out_ch),
            ECA(),
            nn.ReLU(inplace=True),
        )


class ImagePool(nn.Sequential):
    """``GAP -> Conv1x1 (no bias) -> BN -> ReLU`` broadcast back to the input grid (bilinear from 1x1)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).expand(-1, -1, *x.shape[-2:])  # = bilinear upsampling of a 1x1 map


class DenseASPP(nn.Module):
    """CADenseASPP: ``(B, C, h, w) -> (B, width, h, w)``, see the module docstring.

    Args:
        in_ch: input channels ``C`` (layer1's width).
        width: channels of every branch and of the output (256 in the code).
        rates: dilation rates of the densely connected atrous branches (3, 6, 12, 18 in the code).
        dropout: dropout after the projection (0.1 in the code).
        keep_unused_conv1: also build the code's 1x1 ``conv1`` branch, which ``forward`` never uses
            (only so the parameter count matches the official model).
    """

    def __init__(
        self,
        in_ch: int,
        width: int = 256,
        rates: Sequence[int] = (3, 6, 12, 18),
        dropout: float = 0.1,
        keep_unused_conv1: bool = False,
    ) -> None:
        super().__init__()
        if keep_unused_conv1:
            self.unused_conv1 = nn.Sequential(
                nn.Conv2d(in_ch, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
            )
        self.branches = nn.ModuleList(
            AtrousECA(in_ch + k * width, width, int(rate)) for k, rate in enumerate(rates)
        )
        self.pool = ImagePool(in_ch, width)
        self.project = nn.Sequential(
            nn.Conv2d(in_ch + (len(rates) + 1) * width, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        feature, outs = x, []
        for branch in self.branches:
            out = branch(feature)
            outs.append(out)
            feature = torch.cat([feature, out], 1)  # after the loop: cat(x, a_1..a_n)
        return self.project(torch.cat([feature, self.pool(x)], 1))


class ModalityDecoder(nn.Module):
    """One modality's stride-4 decoder features ``cat(red1, red2, red34, aspp)``: ``(B, 4r + a, H/4, W/4)``.

    Args:
        widths: ``(L1, L2, L3, L4)`` channels of the encoder's layer1..layer4.
        reduce_width: ``r``, the 48-channel reductions.
        aspp_width, aspp_rates, dropout, keep_unused_conv1: see :class:`DenseASPP`.
    """

    def __init__(
        self,
        widths: Sequence[int],
        reduce_width: int,
        aspp_width: int,
        aspp_rates: Sequence[int],
        dropout: float,
        keep_unused_conv1: bool,
    ) -> None:
        super().__init__()
        self.reduce = nn.ModuleList(Reduce(w, reduce_width) for w in widths)
        self.aspp = DenseASPP(widths[0], aspp_width, aspp_rates, dropout, keep_unused_conv1)
        self.out_channels = 4 * reduce_width + aspp_width

    def forward(self, l1: Tensor, l2: Tensor, l3: Tensor, l4: Tensor) -> Tensor:
        size = l1.shape[-2:]
        r1, r2, r3, r4 = (red(x) for red, x in zip(self.reduce, (l1, l2, l3, l4), strict=True))
        r2 = F.interpolate(r2, size=size, mode="bilinear", align_corners=False)
        r34 = F.interpolate(torch.cat([r3, r4], 1), size=size, mode="bilinear", align_corners=False)
        return torch.cat([r1, r2, r34, self.aspp(l1)], 1)


@register("ammfusenet")
class AMMFuseNet(Segmenter):
    """AMM-FuseNet (see the module docstring for the topology, the count and the deviations).

    Args:
        in_channels: ``(C1, C2)``: the two modalities' band counts (S2 13, S1 2 in the paper).
        n_classes: number of classes ``K``.
        patch_size: training tile edge, a multiple of 16.
        base_width: encoder stem width (64 = ResNet-50); layer i has ``4 * base_width * 2**(i-1)`` channels.
        blocks: bottleneck blocks per encoder layer ((3, 4, 6, 3) = ResNet-50).
        output_stride: 16 (layer4 dilated, the code's default) or 8 (layer3 and layer4 dilated).
        encoder_bn_momentum: PyTorch BN momentum of the encoders (the code sets 0.01).
        reduce_width: channels of the per-stage 1x1 reductions (48).
        aspp_width: channels of the DenseASPP branches and output (256).
        aspp_rates: DenseASPP dilation rates ((3, 6, 12, 18)).
        fuse_width: channels of the fusion 3x3 conv (256).
        dropout: dropout after the DenseASPP projection (0.1).
        keep_unused_aspp_conv1: build the code's unused DenseASPP ``conv1`` (parameter-count parity).

    Forward: ``(B, C1, H, W)``, ``(B, C2, H, W)`` -> logits ``(B, K, H, W)``.
    """

    stride = 16

    def __init__(
        self,
        *,
        in_channels: tuple[int, int],
        n_classes: int,
        patch_size: int,
        base_width: int = 64,
        blocks: Sequence[int] = (3, 4, 6, 3),
        output_stride: int = 16,
        encoder_bn_momentum: float = 0.01,
        reduce_width: int = 48,
        aspp_width: int = 256,
        aspp_rates: Sequence[int] = (3, 6, 12, 18),
        fuse_width: int = 256,
        dropout: float = 0.1,
        keep_unused_aspp_conv1: bool = True,
    ) -> None:
        super().__init__(in_channels=in_channels, n_classes=n_classes, patch_size=patch_size)
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        if min(base_width, reduce_width, aspp_width, fuse_width, *blocks, *aspp_rates) < 1:
            raise ValueError("AMMFuseNet widths, blocks and rates must be positive")
        if len(blocks) != 4 or not aspp_rates:
            raise ValueError("blocks needs 4 entries and aspp_rates at least one")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        dilate = (False, output_stride == 8, True)
        self.encoders = nn.ModuleList(
            ResNetEncoder(c, base_width, tuple(blocks), dilate, encoder_bn_momentum) for c in self.in_channels
        )
        for encoder in self.encoders:
            encoder.conv1.reset_parameters()  # the code swaps conv1 in after torchvision's init
        widths = self.encoders[0].out_channels[1:]
        self.decoders = nn.ModuleList(
            ModalityDecoder(
                widths, reduce_width, aspp_width, tuple(aspp_rates), dropout, keep_unused_aspp_conv1
            )
            for _ in range(2)
        )
        self.classifier = nn.Sequential(
            nn.Conv2d(2 * self.decoders[0].out_channels, fuse_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(fuse_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(fuse_width, n_classes, 1),
        )
        # The code's head init: kaiming_normal_ on the modules built before its _init_weight call (layer1
        # reductions, DenseASPPs, classifier); the layer2-4 reductions and ECA kernels keep the defaults.
        late = {id(m) for d in self.decoders for red in d.reduce[1:] for m in red.modules()}
        for head in (*self.decoders, self.classifier):
            for m in head.modules():
                if isinstance(m, nn.Conv2d) and id(m) not in late:
                    nn.init.kaiming_normal_(m.weight)

    def forward(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """``(B, C1, H, W)``, ``(B, C2, H, W)`` -> logits ``(B, K, H, W)``; ``H, W`` multiples of 16."""
        self.check_tiles(primary, auxiliary)
        features = []
        for x, encoder, decoder in zip((primary, auxiliary), self.encoders, self.decoders, strict=True):
            _, l1, l2, l3, l4 = encoder(self.cpu_channels_last(x))
            features.append(decoder(l1, l2, l3, l4))  # (B, 4r + a, H/4, W/4)
        logits = self.classifier(torch.cat(features, 1))
        return F.interpolate(logits, size=primary.shape[-2:], mode="bilinear", align_corners=False)
