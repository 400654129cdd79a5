"""The hand-written ResNet-50 encoder matches torchvision's parameter counts and strides."""

from __future__ import annotations

import pytest
import torch

from stages.models.resnet import ResNetEncoder

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("bands", "dilate", "expected"),
    [
        (3, (False, False, False), 23_508_032),  # torchvision resnet50 (25,557,032) minus its fc (2,049,000)
        (2, (False, False, False), 23_504_896),  # REF-Net's SAR encoder: conv1 with 2 input bands
        (13, (False, False, True), 23_539_392),  # AMM-FuseNet's S2 encoder: dilation adds no parameters
    ],
)
def test_resnet50_parameter_counts(bands: int, dilate: tuple[bool, bool, bool], expected: int) -> None:
    encoder = ResNetEncoder(bands, dilate=dilate)
    assert sum(p.numel() for p in encoder.parameters()) == expected


def test_stage_strides_and_channels() -> None:
    encoder = ResNetEncoder(4, base_width=8, blocks=(1, 1, 1, 1))
    features = encoder(torch.zeros(2, 4, 64, 64))
    assert [f.shape[1] for f in features] == list(encoder.out_channels) == [8, 32, 64, 128, 256]
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]
    dilated = ResNetEncoder(4, base_width=8, blocks=(1, 1, 1, 1), dilate=(False, False, True))
    assert [f.shape[-1] for f in dilated(torch.zeros(1, 4, 64, 64))] == [32, 16, 8, 4, 4]
