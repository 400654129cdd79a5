"""A class-conditional WGAN-GP for multimodal patches, with a projection discriminator.

All modalities are generated jointly as one ``(C, P, P)`` tensor (``C`` = total bands, in the store's
normalised units), so the synthetic HSI and LiDAR of a patch belong together.

* Generator: ``[z, embed(y)]`` -> linear -> ``(g, s, s)`` with ``s = ceil(P / 4)`` -> two
  (upsample x2, conv3, BN, ReLU) -> conv3 to ``C`` -> centre crop to ``P``. Linear output: the data
  are z-scores, unbounded.
* Critic: conv3 + LeakyReLU, then two strided conv3 + LeakyReLU (no normalisation, as WGAN-GP
  requires), global sum pooling to ``phi``; ``D(x, y) = w . phi + embed(y) . phi`` (Miyato & Koyama
  2018, projection).
* Loss: Wasserstein with gradient penalty ``lambda * (||grad D(x_hat)|| - 1)^2`` on real/fake
  interpolates (Gulrajani et al. 2017).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Generator(nn.Module):
    def __init__(
        self, channels: int, n_classes: int, patch_size: int, z_dim: int = 64, width: int = 64
    ) -> None:
        super().__init__()
        self.z_dim, self.patch_size = z_dim, patch_size
        self.side = math.ceil(patch_size / 4)
        self.embed = nn.Embedding(n_classes, z_dim)
        self.fc = nn.Linear(2 * z_dim, width * self.side * self.side)
        self.width = width
        self.body = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, channels, 3, padding=1),
        )

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        """``z (B, z_dim)``, ``y (B,)`` class indices -> patches ``(B, C, P, P)``."""
        h = self.fc(torch.cat([z, self.embed(y)], dim=1)).view(-1, self.width, self.side, self.side)
        out = self.body(h)
        off = (out.shape[-1] - self.patch_size) // 2
        return out[..., off : off + self.patch_size, off : off + self.patch_size]


class ProjectionCritic(nn.Module):
    def __init__(self, channels: int, n_classes: int, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        )
        self.linear = nn.Linear(4 * width, 1)
        self.embed = nn.Embedding(n_classes, 4 * width)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``x (B, C, P, P)``, ``y (B,)`` -> critic scores ``(B,)``."""
        phi = self.body(x).sum(dim=(2, 3))
        return self.linear(phi).squeeze(1) + (self.embed(y) * phi).sum(dim=1)


def gradient_penalty(
    critic: ProjectionCritic, real: Tensor, fake: Tensor, y: Tensor, gen: torch.Generator
) -> Tensor:
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=gen).to(real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad = torch.autograd.grad(critic(mixed, y).sum(), mixed, create_graph=True)[0]
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def critic_loss(
    critic: ProjectionCritic, real: Tensor, fake: Tensor, y: Tensor, gp_weight: float, gen: torch.Generator
) -> Tensor:
    return (
        critic(fake, y).mean()
        - critic(real, y).mean()
        + gp_weight * gradient_penalty(critic, real, fake, y, gen)
    )


def generator_loss(critic: ProjectionCritic, fake: Tensor, y: Tensor) -> Tensor:
    return -critic(fake, y).mean()


def sample_noise(n: int, z_dim: int, gen: torch.Generator) -> Tensor:
    return torch.randn(n, z_dim, generator=gen)


__all__ = [
    "Generator",
    "ProjectionCritic",
    "critic_loss",
    "generator_loss",
    "gradient_penalty",
    "sample_noise",
]
