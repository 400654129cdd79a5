"""Building blocks shared by the patch classifiers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

# Keras BatchNormalization defaults. Keras updates ``moving = m * moving + (1 - m) * batch`` with
# m = 0.99; PyTorch's ``momentum`` is the weight of the *batch* statistic, hence 1 - 0.99.
KERAS_BN_MOMENTUM = 0.01
KERAS_BN_EPS = 1e-3


def conv_bn_relu(in_ch: int, out_ch: int, k: int, bn_momentum: float = 0.1) -> nn.Sequential:
    """``Conv2d(k, 'same', no bias) -> BN -> ReLU``: ``(B, in_ch, P, P) -> (B, out_ch, P, P)``."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=False),  # BN follows: a bias would be redundant
        nn.BatchNorm2d(out_ch, momentum=bn_momentum),
        nn.ReLU(inplace=True),
    )


def mean_and_centre(x: Tensor) -> Tensor:
    """``(B, C, P, P) -> (B, 2C)``: global average, then the centre pixel's features."""
    c = x.shape[-1] // 2
    return torch.cat([x.mean(dim=(2, 3)), x[:, :, c, c]], 1)


class KerasConvUnit(nn.Module):
    """``Conv2D(out, k, activation='relu', use_bias=True)`` followed by ``BatchNormalization()``.

    The order is conv -> ReLU -> BN, as in Keras code that passes ``activation='relu'`` to the conv
    and adds a BN layer after it. Kernels use Keras' ``glorot_uniform`` and biases start at zero.

    Shapes: ``(B, in_ch, H, W) -> (B, out_ch, H', W')`` with ``H' = H`` for ``padding='same'`` and
    ``H' = H - k + 1`` for ``padding='valid'``.
    """

    def __init__(self, in_ch: int, out_ch: int, k: int = 3, padding: str = "same") -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        self.conv = nn.Conv2d(in_ch, out_ch, k, padding=padding, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(out_ch, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)
        keras_init_(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.act(self.conv(x)))


def keras_init_(conv: nn.Conv2d) -> None:
    """Keras defaults for a conv layer: ``glorot_uniform`` kernel (same fan rule as xavier) and zero bias."""
    nn.init.xavier_uniform_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def conv_kernels(modules: nn.Module | Iterable[nn.Module]) -> list[Tensor]:
    """The weight tensors of every ``nn.Conv2d`` inside ``modules`` (biases and BN excluded), deduplicated."""
    if isinstance(modules, nn.Module):
        modules = [modules]
    seen: set[int] = set()
    out: list[Tensor] = []
    for root in modules:
        for m in root.modules():
            if isinstance(m, nn.Conv2d) and id(m.weight) not in seen:
                seen.add(id(m.weight))
                out.append(m.weight)
    return out


def l2_penalty(modules: nn.Module | Iterable[nn.Module], weight: float) -> Tensor:
    """Keras ``kernel_regularizer=l2(weight)`` summed over all conv kernels: ``weight * sum(w ** 2)``.

    Returns a 0-dim tensor on the kernels' device (0.0 on CPU when there are none).
    """
    kernels = conv_kernels(modules)
    if not kernels or weight == 0:
        device = kernels[0].device if kernels else torch.device("cpu")
        return torch.zeros((), device=device)
    return weight * torch.stack([w.pow(2).sum() for w in kernels]).sum()
