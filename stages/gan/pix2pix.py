"""A label-conditioned tile generator (pix2pix, Isola et al. 2017) for tile datasets.

The generator maps a label map to every modality at once: its input is the one-hot label map
(``K`` classes plus one "no label" channel), its output ``C`` bands (all modalities, in the store's
normalised units). Noise comes from dropout kept on while sampling, as in pix2pix.

* Generator: a U-Net of ``depth`` levels (conv-BN-LeakyReLU down, conv-transpose-BN-ReLU up with skip
  concatenation, dropout in the innermost up-blocks), linear output.
* Discriminator: a conditional PatchGAN: ``cat(one-hot labels, image)`` through strided convs to a
  map of real/fake logits, one per receptive-field patch.
* Loss: non-saturating adversarial (BCE on logits) + ``l1_weight * |G(y) - x|`` (pix2pix: 100).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def one_hot(labels: Tensor, n_classes: int) -> Tensor:
    """``(B, H, W)`` class indices with -1 for no label -> ``(B, K + 1, H, W)`` float (last = no label)."""
    idx = torch.where(labels < 0, torch.full_like(labels, n_classes), labels)
    return F.one_hot(idx, n_classes + 1).permute(0, 3, 1, 2).float()


class UNetGenerator(nn.Module):
    def __init__(
        self, n_classes: int, channels: int, width: int = 32, depth: int = 4, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.n_classes, self.depth = n_classes, depth
        widths = [min(width * 2**i, width * 8) for i in range(depth)]
        self.downs = nn.ModuleList()
        in_ch = n_classes + 1
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(in_ch, w, 4, stride=2, padding=1)]
            if i > 0:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.LeakyReLU(0.2))
            self.downs.append(nn.Sequential(*layers))
            in_ch = w
        self.ups = nn.ModuleList()
        for i in reversed(range(depth)):
            out_ch = widths[i - 1] if i > 0 else width
            up_in = widths[i] if i == depth - 1 else 2 * widths[i]
            layers = [
                nn.ConvTranspose2d(up_in, out_ch, 4, stride=2, padding=1),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(),
            ]
            if i >= depth - 2:  # pix2pix: dropout (the noise source) in the innermost decoder blocks
                layers.append(nn.Dropout(dropout))
            self.ups.append(nn.Sequential(*layers))
        self.head = nn.Conv2d(width, channels, 3, padding=1)

    @property
    def stride(self) -> int:
        return 2**self.depth

    def forward(self, labels: Tensor) -> Tensor:
        """``(B, H, W)`` label indices (-1 = none) -> ``(B, C, H, W)``; H, W multiples of :attr:`stride`."""
        x = one_hot(labels, self.n_classes)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        for i, up in enumerate(self.ups):
            if i > 0:
                x = torch.cat([x, skips[self.depth - 1 - i]], dim=1)
            x = up(x)
        return self.head(x)


class PatchDiscriminator(nn.Module):
    def __init__(self, n_classes: int, channels: int, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        self.n_classes = n_classes
        blocks: list[nn.Module] = [
            nn.Conv2d(n_classes + 1 + channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        ch = width
        for i in range(1, layers):
            out = min(width * 2**i, width * 8)
            blocks += [
                nn.Conv2d(ch, out, 4, stride=2 if i < layers - 1 else 1, padding=1),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2),
            ]
            ch = out
        blocks.append(nn.Conv2d(ch, 1, 4, padding=1))
        self.body = nn.Sequential(*blocks)

    def forward(self, labels: Tensor, image: Tensor) -> Tensor:
        return self.body(torch.cat([one_hot(labels, self.n_classes), image], dim=1))


def discriminator_loss(disc: PatchDiscriminator, labels: Tensor, real: Tensor, fake: Tensor) -> Tensor:
    """Real tiles -> 1, generated (detached) -> 0, averaged over the patch logits."""
    d_real, d_fake = disc(labels, real), disc(labels, fake.detach())
    return 0.5 * (
        F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
        + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    )


def generator_loss(
    disc: PatchDiscriminator, labels: Tensor, real: Tensor, fake: Tensor, l1_weight: float
) -> Tensor:
    """Fool the discriminator, and stay close to the real tile (L1)."""
    g_adv = disc(labels, fake)
    return F.binary_cross_entropy_with_logits(g_adv, torch.ones_like(g_adv)) + l1_weight * F.l1_loss(
        fake, real
    )
