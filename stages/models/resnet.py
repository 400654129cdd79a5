"""A ResNet encoder (He et al. 2016, the torchvision "v1.5" bottleneck) written here, as no CPU
torchvision build exists for this environment.

``ResNetEncoder(in_channels)`` with the defaults is ResNet-50 without its pooling and classifier:
23,508,032 parameters for 3 input bands (torchvision's resnet50 minus its 2,049,000-parameter fc).
``base_width`` and ``blocks`` shrink it for CPU presets; ``dilate`` replaces the stride of layer2-4
with dilation (output stride 16 or 8, as DeepLab-style decoders use).

``forward(x)`` returns the five stage features, as segmentation libraries' encoders do::

    c1  relu(bn(conv1(x)))   stride 2    base_width channels
    l1  layer1(maxpool(c1))  stride 4    4 * base_width
    l2  layer2(l1)           stride 8    8 * base_width
    l3  layer3(l2)           stride 16   16 * base_width
    l4  layer4(l3)           stride 32   32 * base_width   (16 or 8 with dilation)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride, dilation) -> 1x1 expand (x4), BN after each, identity or projected skip."""

    expansion = 4

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, dilation: int = 1, bn_momentum: float = 0.1
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(width, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch, momentum=bn_momentum),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNetEncoder(nn.Module):
    """Bottleneck ResNet feature extractor; see the module docstring for outputs and defaults."""

    def __init__(
        self,
        in_channels: int,
        base_width: int = 64,
        blocks: Sequence[int] = (3, 4, 6, 3),
        dilate: Sequence[bool] = (False, False, False),
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or len(dilate) != 3:
            raise ValueError("blocks needs 4 entries (layer1-4) and dilate 3 (layer2-4)")
        self.conv1 = nn.Conv2d(in_channels, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch, dilation = base_width, 1
        layers = []
        for i, n in enumerate(blocks):
            width = base_width * 2**i
            stride = 1 if i == 0 else 2
            if i > 0 and dilate[i - 1]:
                dilation, stride = dilation * stride, 1
            first_dilation = dilation if stride == 1 else 1
            stack = [Bottleneck(in_ch, width, stride, first_dilation, bn_momentum)]
            in_ch = width * Bottleneck.expansion
            stack += [Bottleneck(in_ch, width, 1, dilation, bn_momentum) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stack))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = (base_width, *(base_width * 2**i * Bottleneck.expansion for i in range(4)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, C, H, W)`` -> the five stage features listed in the module docstring."""
        c1 = self.relu(self.bn1(self.conv1(x)))
        l1 = self.layer1(self.maxpool(c1))
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return [c1, l1, l2, l3, l4]
