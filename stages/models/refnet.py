"""REF-Net: retain-enhance fusion network for optical + SAR land-cover segmentation (Wei, Chen, Liu, Chen,
Wang, IEEE TGRS 63, 2025), written after the official code (TINYWAI/REF_Net: ``core/models/
hetero_cnn_mamba.py`` class ``LinkMamba`` with ``MTMambaFusionDecoder_smooth`` and ``DiffShareMamba``,
config ``cfgs/dfc20/dfc20_bs8_linknet_vssm_mtdecoder_dif_smooth_dsm_w0.005_res50.yaml``, loss
``core/lossfunc/aux_loss.py``); see ../shared/reference/models.md §2.

Shapes, with ``c = decoder_channels`` (128) and levels ``i = 1..5`` at strides ``2, 4, 8, 16, 32``::

    primary (optical)  (B, C1, H, W) --ResNet encoder--> opt_1..opt_5  (64, 256, 512, 1024, 2048 ch)
    auxiliary (SAR)    (B, C2, H, W) --ResNet encoder--> sar_1..sar_5  (separate weights)
    o_i = Conv1x1(opt_i) -> c,  r_i = Conv1x1(sar_i) -> c            (no bias; per level and modality)
    MDF-VSS block (DiffShareMamba), one per level:
        s_i = ConvBNReLU3x3(2c -> c)(cat(VSS_share(o_i), VSS_share(r_i)))   (VSS_share: one block, shared)
        d_i = VSS_diff(o_i - r_i)                                            (modality difference)
        f_i = ResBlock(s_i + d_i)
    MDF decoder:   p_5 = VSS_5(f_5);  p_i = ResBlock(up(p_{i+1}) + VSS_i(f_i)),  i = 4..1
    MSIE decoders (training only):
        q_5 = ResBlock(o_5 + d_5);    q_i = ResBlock(up(q_{i+1}) + ResBlock(o_i + d_i))   (optical)
        t_5 = ResBlock(r_5 + d_5);    t_i = ResBlock(up(t_{i+1}) + ResBlock(r_i + d_i))   (SAR)
    heads: Conv1x1(c -> K) (bias) then bilinear x2 (stride 2 -> full resolution), on p_1, q_1, t_1
    logits (B, K, H, W); loss = CE(p) + aux_weight * (CE(q) + CE(t)),  aux_weight = 0.005

``up`` is bilinear interpolation to the finer level's size (``align_corners=False``, the code's
``F.interpolate(..., mode='bilinear')``); the heads' x2 is ``nn.UpsamplingBilinear2d``, i.e.
``align_corners=True``, as in smp's ``SegmentationHead``. ``ResBlock`` = conv3x3-BN-ReLU-conv3x3-BN +
identity, ReLU (no conv bias). ``VSS`` = :class:`stages.models.vmamba.VSSBlock` (pre-norm SS2D + MLP,
``d_state`` 1, ``ssm_ratio`` 2, ``dt_rank = ceil(c / 16)``, depthwise 3x3 conv without bias, forward type
``v3noz``, drop-path 0.1, MLP ratio 4); all fifteen VSS blocks have their own weights except the shared
block that both modalities go through in each MDF-VSS block. ``H`` and ``W`` must be multiples of 32.

Faithful to the official code: the topology above; the widths; the initialisation (encoders as
torchvision's ResNet; the decoder by smp's ``initialize_decoder``: Kaiming-uniform (fan-in, ReLU) for
every Conv2d incl. the SS2D depthwise convs, Xavier-uniform for every Linear, zero biases, BN 1/0; the
heads by ``initialize_head``: Xavier-uniform, zero bias; SS2D's own ``x_proj``/``dt_proj``/``A_log``/
``D`` parameters keep VMamba's init); PyTorch's default BN momentum 0.1 everywhere; the loss and its
0.005 weight. With the ``paper`` preset, ``in_channels = (3, 2)`` and 9 classes it has exactly
60,799,323 trainable parameters in training (the count of the official model: optical encoder
23,508,032 + SAR encoder 23,504,896 + decoder 13,782,912 + 3 heads x 1,161), 60,797,001 without the two
auxiliary heads (the official inference count, which still includes the MSIE ResBlocks).

Deviations, and why:

* No ImageNet weights: the official encoders load them (the SAR one with conv1 cut to 2 bands and
  scaled x1.5). We have no torchvision weights on this platform and the pipeline's band counts differ
  (S2's 13 bands, HSI's 144), so both encoders start from torchvision's random init.
* The selective scan is :func:`stages.models.selective_scan.selective_scan` (mamba_ssm's CUDA kernel when
  installed and on CUDA, else our pure-PyTorch blocked scan, equal to the reference recurrence to float
  rounding); the official code needs VMamba's compiled ``selective_scan_cuda_oflex`` and triton.
* The shared VSS block runs once on the optical and SAR maps stacked along the batch (same weights,
  same per-sample result; drop-path masks are drawn per sample either way), which halves the number of
  CPU op launches.
* ``forward`` (train or eval) computes only the MDF path and the main head; the MSIE decoders and their
  heads run only inside :meth:`RefNet.training_loss`. The official model always computes all three
  outputs and discards the auxiliary ones outside training: same logits, less work.
* The loss ignores the pipeline's :data:`IGNORE_INDEX` (the official code ignores label 0, DFC20's
  background, which our data layer maps to that index); the auxiliary outputs already have the target's
  size, so the code's nearest resize of the targets is the identity.
* Training schedule (see params/models/refnet.yaml): per-epoch poly decay (the official one is per
  iteration), and checkpoint selection on our validation split by mIoU (the official rule is unknown;
  it evaluates val and test every 2000 iterations).
* Bands: the official DFC20 config feeds 3 optical bands (which S2 bands is not stated) and the 2 S1
  bands; the pipeline passes whatever its dataset gives (``in_channels``: all 13 S2 bands + 2 S1 bands,
  or HSI 144 + LiDAR 1 on the Houston twin), for both presets.
* The ``quick`` preset (CPU) narrows and shortens the encoders (base width 16, one bottleneck per
  layer) and the decoder (width 32), and uses ``levels: 4``: the stride-2 level is dropped (its two
  projections, MDF-VSS block, VSS block and five decoder ResBlocks) and the heads upsample x4 from
  stride 4. On a 64x64 tile that level holds 1024 of the 1364 scan positions and about two thirds of
  the step time. The blocks, their wiring and the loss are unchanged.

Performance (1 thread on this project's shared 2-core CPU; CPU time, wall time under a load average of
~9 in brackets): the quick preset at 13 + 2 bands has 1.73 M parameters and takes 0.21 s (0.55 s) per
AdamW step at batch 8 on 64x64 tiles and 18 ms (46 ms) per 64x64 tile forward; with all five levels
0.60 s (1.5 s) and 36 ms (83 ms). The paper preset is GPU-scale (~151 GFLOPs per 256x256 tile).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.models.base import IGNORE_INDEX, Segmenter
from stages.models.registry import register
from stages.models.resnet import ResNetEncoder
from stages.models.vmamba import VSSBlock2d

LEVELS = 5


class ResBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + identity, then ReLU (no conv bias); ``(B, c, H, W)`` in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class ConvBNReLU(nn.Sequential):
    """smp's ``Conv2dReLU(in, out, 3, padding=1)``: conv (no bias) -> BN -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
        )


class MDFVSS(nn.Module):
    """The MDF-VSS block (``DiffShareMamba``): ``(o, r)`` -> ``(d, f)``, the modality-difference feature
    and the fused feature, each ``(B, c, h, w)`` (module docstring)."""

    def __init__(self, channels: int, **vss: object) -> None:
        super().__init__()
        self.share = VSSBlock2d(channels, **vss)
        self.share_conv = ConvBNReLU(2 * channels, channels)
        self.diff = VSSBlock2d(channels, **vss)
        self.smooth = ResBlock(channels)

    def forward(self, opt: Tensor, sar: Tensor) -> tuple[Tensor, Tensor]:
        s_opt, s_sar = self.share(torch.cat([opt, sar], 0)).chunk(2, 0)  # one shared block, both inputs
        share = self.share_conv(torch.cat([s_opt, s_sar], 1))
        diff = self.diff(opt - sar)
        return diff, self.smooth(share + diff)


class SegHead(nn.Module):
    """smp's ``SegmentationHead(c, K, kernel_size=1, upsampling=2)``: Conv1x1 (bias) then
    ``UpsamplingBilinear2d(scale_factor=upsampling)`` (``align_corners=True``)."""

    def __init__(self, channels: int, n_classes: int, upsampling: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, n_classes, 1)
        self.upsampling = upsampling

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.conv(x), scale_factor=self.upsampling, mode="bilinear", align_corners=True)


def _up_add(coarse: Tensor, fine: Tensor) -> Tensor:
    return F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False) + fine


def _initialize_decoder(module: nn.Module) -> None:
    """smp's ``initialize_decoder``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _initialize_head(module: nn.Module) -> None:
    """smp's ``initialize_head``."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register("refnet")
class RefNet(Segmenter):
    """REF-Net (module docstring). ``primary`` is the optical input, ``auxiliary`` the SAR (or LiDAR) one.

    Args:
        in_channels: ``(C1, C2)`` optical and SAR band counts.
        n_classes: ``K``.
        patch_size: training tile edge, a multiple of 32.
        base_width, blocks: the two ResNet encoders (64 and (3, 4, 6, 3) = ResNet-50).
        decoder_channels: width ``c`` of every decoder level and VSS block (128).
        d_state, ssm_ratio, dt_rank, mlp_ratio: the VSS blocks (1, 2, "auto" = ceil(c / 16), 4).
        drop_path: stochastic depth of every VSS block (0.1).
        aux_weight: weight of the two MSIE cross-entropies (0.005).
        levels: how many encoder stages feed the decoders, counted from the coarsest (5 = strides
            2 .. 32, the official model; 4 drops the stride-2 level and the heads upsample x4).
    """

    stride = 32

    def __init__(
        self,
        *,
        in_channels: tuple[int, int],
        n_classes: int,
        patch_size: int,
        base_width: int = 64,
        blocks: Sequence[int] = (3, 4, 6, 3),
        decoder_channels: int = 128,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        aux_weight: float = 0.005,
        levels: int = LEVELS,
    ) -> None:
        super().__init__(in_channels=in_channels, n_classes=n_classes, patch_size=patch_size)
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        if not 1 <= levels <= LEVELS:
            raise ValueError(f"levels must be in 1..{LEVELS}, got {levels}")
        self.aux_weight = float(aux_weight)
        self.levels = n = int(levels)
        c = int(decoder_channels)
        self.opt_encoder = ResNetEncoder(self.in_channels[0], base_width, tuple(blocks))
        self.sar_encoder = ResNetEncoder(self.in_channels[1], base_width, tuple(blocks))
        dims = self.opt_encoder.out_channels[LEVELS - n :]  # the n coarsest encoder stages
        vss = {
            "drop_path": drop_path,
            "d_state": d_state,
            "ssm_ratio": ssm_ratio,
            "dt_rank": dt_rank,
            "mlp_ratio": mlp_ratio,
        }

        def res_blocks(n: int) -> nn.ModuleList:
            return nn.ModuleList(ResBlock(c) for _ in range(n))

        # Lists are indexed by level - 1 (level 1 = stride 2 ... level 5 = stride 32).
        self.opt_proj = nn.ModuleList(nn.Conv2d(d, c, 1, bias=False) for d in dims)
        self.sar_proj = nn.ModuleList(nn.Conv2d(d, c, 1, bias=False) for d in dims)
        self.mdf = nn.ModuleList(MDFVSS(c, **vss) for _ in range(n))
        self.vss = nn.ModuleList(VSSBlock2d(c, **vss) for _ in range(n))
        self.smooth = res_blocks(n - 1)  # every level of the MDF decoder but the coarsest
        self.opt_fuse, self.sar_fuse = res_blocks(n), res_blocks(n)  # MSIE: ResBlock(o_i + d_i)
        self.opt_smooth, self.sar_smooth = res_blocks(n - 1), res_blocks(n - 1)
        up = 2 ** (LEVELS - n + 1)  # the finest level used has stride 2 (all five levels) .. 32
        self.head = SegHead(c, self.n_classes, up)
        self.opt_head = SegHead(c, self.n_classes, up)
        self.sar_head = SegHead(c, self.n_classes, up)
        for part in (
            self.opt_proj,
            self.sar_proj,
            self.mdf,
            self.vss,
            self.smooth,
            self.opt_fuse,
            self.sar_fuse,
            self.opt_smooth,
            self.sar_smooth,
        ):
            _initialize_decoder(part)
        for head in (self.head, self.opt_head, self.sar_head):
            _initialize_head(head)

    def aux_modules(self) -> list[nn.Module]:
        """The modules used only by the training loss (MSIE decoders and their heads)."""
        return [self.opt_fuse, self.sar_fuse, self.opt_smooth, self.sar_smooth, self.opt_head, self.sar_head]

    def _decode(self, primary: Tensor, auxiliary: Tensor, with_aux: bool) -> list[Tensor]:
        if primary.dim() != 4 or auxiliary.dim() != 4 or primary.shape[-2:] != auxiliary.shape[-2:]:
            raise ValueError(
                f"REF-Net needs two (B, C, H, W) inputs of one size, got {tuple(primary.shape)} and "
                f"{tuple(auxiliary.shape)}"
            )
        h, w = primary.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"REF-Net: input height and width must be multiples of {self.stride}, got {h} x {w}"
            )
        primary, auxiliary = self.cpu_channels_last(primary), self.cpu_channels_last(auxiliary)
        skip = LEVELS - self.levels
        opts = [proj(x) for proj, x in zip(self.opt_proj, self.opt_encoder(primary)[skip:], strict=True)]
        sars = [proj(x) for proj, x in zip(self.sar_proj, self.sar_encoder(auxiliary)[skip:], strict=True)]
        p = q = t = None
        for i in reversed(range(self.levels)):
            d, f = self.mdf[i](opts[i], sars[i])
            level = self.vss[i](f)
            p = level if p is None else self.smooth[i](_up_add(p, level))
            if with_aux:
                q_i, t_i = self.opt_fuse[i](opts[i] + d), self.sar_fuse[i](sars[i] + d)
                q = q_i if q is None else self.opt_smooth[i](_up_add(q, q_i))
                t = t_i if t is None else self.sar_smooth[i](_up_add(t, t_i))
        out = [self.head(p)]
        if with_aux:
            out += [self.opt_head(q), self.sar_head(t)]
        return out

    def forward(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """``(B, C1, H, W)``, ``(B, C2, H, W)`` -> logits ``(B, K, H, W)`` (MDF path only)."""
        return self._decode(primary, auxiliary, with_aux=False)[0]

    def training_loss(
        self, primary: Tensor, auxiliary: Tensor, target: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """``CE(main) + aux_weight * (CE(optical MSIE) + CE(SAR MSIE))``, all ignoring
        :data:`IGNORE_INDEX`; parts ``ce``, ``aux_opt``, ``aux_sar``, ``reg`` (0)."""
        logits, opt_logits, sar_logits = self._decode(primary, auxiliary, with_aux=True)
        ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        aux_opt = F.cross_entropy(opt_logits, target, ignore_index=IGNORE_INDEX)
        aux_sar = F.cross_entropy(sar_logits, target, ignore_index=IGNORE_INDEX)
        reg = self.regularization()
        loss = ce + self.aux_weight * (aux_opt + aux_sar) + reg
        parts = {"ce": ce, "aux_opt": aux_opt, "aux_sar": aux_sar, "reg": reg}
        return loss, {k: float(v.detach()) for k, v in parts.items()}
