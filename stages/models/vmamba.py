"""VMamba's visual state-space block (VSSBlock) and its 2-D selective-scan operator (SS2D), v2 style.

Written after the VMamba code that REF-Net vendors (TINYWAI/REF_Net ``core/models/vmamba/vmamba.py``,
from MzeroMiko/VMamba), in the configuration REF-Net uses (``vssm_block_config``: ``forward_type``
``v3noz``, ``ssm_init`` ``v0``); see ../shared/reference/models.md §2. Tensors are channels-last
``(B, H, W, C)`` as in VMamba; :class:`VSSBlock2d` wraps a block for ``(B, C, H, W)`` maps.

:class:`SS2D` (``d_inner = ssm_ratio * d_model``, ``R = dt_rank``, ``N = d_state``, ``K = 4``)::

    x  (B, H, W, d_model) --in_proj (no bias)--> (B, H, W, d_inner) --permute--> (B, d_inner, H, W)
       --depthwise conv k x k (no bias by default)--> SiLU
       --cross_scan--> xs (B, K, d_inner, L=H*W): row-major, column-major, and both reversed
       x_dbl = x_proj_k(xs_k)  (per direction, no bias) -> dt (R), B (N), C (N)
       dt = dt_proj_k(dt)     (per direction, weight only; its bias is the scan's delta_bias)
       ys = selective_scan(xs, dt, A = -exp(A_log), B, C, D, delta_bias, delta_softplus=True)
            with B, C grouped per direction: (B, K, N, L)
       y  = cross_merge(ys)   (B, d_inner, L): each direction mapped back to row-major order, summed
       --> LayerNorm(d_inner) --> out_proj (no bias) --> (B, H, W, d_model)

``v3noz`` means: no ``z`` gate branch (``in_proj`` produces ``d_inner`` channels, not ``2 d_inner``) and
the scan's inputs are not forced to float32. Initialisation (``v0``): ``dt_proj`` weight
``U(-R^-1/2, R^-1/2)``, ``dt_proj`` bias ``softplus^-1(dt)`` with ``dt`` log-uniform in
``[dt_min, dt_max] = [1e-3, 0.1]`` (floored at 1e-4), ``A_log = log(1..N)`` (``A = -1`` for ``N = 1``),
``D = 1``; ``x_proj`` as PyTorch's ``nn.Linear`` default (``U(-d_inner^-1/2, d_inner^-1/2)``); the
linear and conv layers keep PyTorch's defaults (REF-Net re-initialises them, see :mod:`refnet`).

:class:`VSSBlock` (pre-norm)::

    x = x + DropPath(SS2D(LayerNorm(x)));   x = x + DropPath(MLP(LayerNorm(x)))

with ``MLP = Linear(C, mlp_ratio C) -> GELU -> Linear(mlp_ratio C, C)`` (biases). At ``d_model = 128``,
``N = 1``, ratios 2 and 4 a block has 222,080 parameters (models.md §2(f)).

Deviation: the scan runs through :func:`stages.models.selective_scan.selective_scan` (mamba_ssm's CUDA
kernel on CUDA when installed, else our blocked pure-PyTorch scan, equal to the reference recurrence to
float rounding); VMamba calls its own CUDA extension (``selective_scan_cuda_oflex``) and cannot run on CPU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from stages.models.selective_scan import selective_scan

K_DIRECTIONS = 4


def cross_scan(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, 4, C, H*W)``: row-major, column-major, and the two reversed."""
    b, c, h, w = x.shape
    rows = x.reshape(b, c, h * w)
    cols = x.transpose(2, 3).reshape(b, c, h * w)
    forward = torch.stack([rows, cols], dim=1)
    return torch.cat([forward, forward.flip(-1)], dim=1)


def cross_merge(ys: Tensor, h: int, w: int) -> Tensor:
    """``(B, 4, C, H*W)`` (the four scan orders) -> ``(B, C, H*W)`` in row-major order, summed."""
    b, _, c, length = ys.shape
    two = ys[:, 0:2] + ys[:, 2:4].flip(-1)
    cols = two[:, 1].reshape(b, c, w, h).transpose(2, 3).reshape(b, c, length)
    return two[:, 0] + cols


class DropPath(nn.Module):
    """Stochastic depth per sample (as timm's ``DropPath``): in training, zero a residual branch for a
    random fraction ``p`` of the batch and scale the rest by ``1 / (1 - p)``; identity in eval."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SS2D(nn.Module):
    """The 2-D selective-scan operator, ``(B, H, W, d_model) -> (B, H, W, d_model)`` (module docstring)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
    ) -> None:
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, rank
        self.in_proj = nn.Linear(d_model, d_inner, bias=False)
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias
        )
        self.act = nn.SiLU()
        k = K_DIRECTIONS
        bound = d_inner**-0.5  # nn.Linear's default init for a (rank + 2N) x d_inner weight
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        std = rank**-0.5 * dt_scale
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, rank).uniform_(-std, std))
        dt = torch.exp(
            torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(a))  # (K * d_inner, N); A = -exp(A_log)
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        x = self.in_proj(x).permute(0, 3, 1, 2)  # channels-last memory; the conv accepts it as is
        x = self.act(self.conv2d(x))  # (B, d_inner, H, W)
        length, n, rank = h * w, self.d_state, self.dt_rank
        xs = cross_scan(x)  # (B, K, d_inner, L)
        x_dbl = torch.matmul(self.x_proj_weight, xs)  # per direction: (R + 2N, d_inner) @ (d_inner, L)
        dts, bs, cs = torch.split(x_dbl, [rank, n, n], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)  # (B, K, d_inner, L)
        ys = selective_scan(
            xs.reshape(b, -1, length),
            dts.reshape(b, -1, length),
            -torch.exp(self.A_logs),
            bs.contiguous(),
            cs.contiguous(),
            self.Ds,
            delta_bias=self.dt_projs_bias.reshape(-1),
            delta_softplus=True,
        ).reshape(b, K_DIRECTIONS, self.d_inner, length)
        y = cross_merge(ys, h, w).transpose(1, 2)  # (B, L, d_inner)
        y = self.out_norm(y).reshape(b, h, w, self.d_inner)
        return self.out_proj(y)


class MLP(nn.Module):
    """``Linear -> GELU -> Linear`` on the last axis (VMamba's ``Mlp`` with dropout 0)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSSBlock(nn.Module):
    """Pre-norm SS2D and MLP residual branches with stochastic depth; ``(B, H, W, C)`` in and out."""

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, d_state, ssm_ratio, dt_rank, d_conv, conv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VSSBlock2d(VSSBlock):
    """A :class:`VSSBlock` on channels-first maps: ``(B, C, H, W)`` in and out (REF-Net's
    ``Permute(0, 2, 3, 1) -> VSSBlock -> Permute(0, 3, 1, 2)``)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
