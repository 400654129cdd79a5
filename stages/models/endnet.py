"""EndNet: deep encoder-decoder networks for classification of hyperspectral and LiDAR data (D. Hong,
L. Gao, R. Hang, B. Zhang, J. Chanussot, IEEE GRSL 2020), transcribed from the official TensorFlow 1 code
(danfenghong/IEEE_GRSL_EndNet, ``EndNet.py``).

EndNet is a **pixel-wise** network: it sees one feature vector per modality. Our patch pipeline passes
``(B, C, P, P)`` patches, so the model takes the **centre pixel** of the primary patch,
``x1 = primary[:, :, c, c]`` ``(B, Ch)``, and a per-pixel feature vector of the auxiliary patch ``x2``
(its local profile by default, see "LiDAR features" below). Every layer
below is ``Linear`` (with bias); "unit" = ``Linear -> BN -> ReLU``:

* encoders, one per modality (unshared): units ``Ch -> 16 -> 32 -> 64 -> 128`` and
  ``Cl -> 16 -> 32 -> 64 -> 128``;
* joint encoder on ``cat(e1, e2)`` ``(B, 256)``: unit ``256 -> 128`` (the fused representation ``z``),
  unit ``128 -> 64``, ``Linear(64, K)`` -> logits ``(B, K)``;
* decoders, one per modality, both from ``z``: ``Linear -> sigmoid`` ``128 -> 64 -> 32 -> 16``, then
  ``Linear(16, Ch)`` / ``Linear(16, Cl)`` (no BN in the decoders);
* loss: ``CE + l2 * sum_W ||W||^2 / 2 + w1 * MSE(x1_rec, x1) + w2 * MSE(x2_rec, x2)`` with ``l2 = 0.001``
  (``beta_reg * tf.nn.l2_loss`` over all 22 weight matrices, biases and BN excluded) and both
  reconstruction weights 1 (MSE averaged over every element of the batch).

Faithful to the code: the widths, the layer order (linear -> BN -> ReLU), BN ``momentum=0.9`` in
TensorFlow's convention (PyTorch 0.1) and ``epsilon=1e-3``, sigmoid decoder layers, decoders fed by the
first joint layer, the coupled L2 penalty and its weight, the loss weights, TF-contrib
``variance_scaling_initializer`` (He, ``FAN_IN``, truncated normal with std ``sqrt(1.3 * 2 / fan_in)``)
for every weight matrix and zero biases. At ``(Ch, Cl) = (144, 21)`` (the code's Houston2013 inputs) and
15 classes it has 92,628 trainable parameters, the count of the TF model, as it has at ``(144, 1)`` with
the auxiliary profile below.

Assumptions and deviations, and why:

* **Centre pixel.** The pixel-wise model gets the centre of our patches (the code's ``.mat`` files hold
  one vector per labelled pixel).
* **LiDAR features.** The code's LiDAR input has 21 features per pixel (``LiDAR_TrSet.mat``); how they
  were derived from the DSM is not in the repository [UNKNOWN; likely morphological/attribute profiles].
  By default (``aux_features="profile"``) we feed the auxiliary modality's **local profile** computed
  from the patch (:func:`local_profile`): per band the centre value and, for each centred window
  ``3, 5, ..., P``, ``centre - min``, ``max - centre``, ``mean - centre`` and the std: 21 features per
  band at ``P = 11``, so at 144 + 1 bands the model has the code's 92,628 parameters. Like a
  morphological profile it says how a pixel stands above or below its surroundings at several scales;
  unlike one it needs no scene-wide reconstruction. The LiDAR encoder's first layer and decoder's last
  layer are sized by ``Cl * 21``, and the auxiliary decoder rebuilds the profile (the code rebuilds its
  21 features). ``aux_features="centre"`` feeds the raw centre pixel (``Cl`` features; 91,968
  parameters), which on the Houston twin's DSM (absolute height over terrain relief) scored 80.4% test
  OA against the profile's 85.2%.
* **Linear reconstruction output.** The code ends both decoders with a sigmoid on inputs scaled to [0, 1];
  our inputs are z-scored (unbounded), so the last decoder layer is linear. Same parameter count.
* ``forward`` returns logits (the code applies softmax cross-entropy on the same logits); the decoders
  run only in :meth:`training_loss`.
* Training (``params/models/endnet.yaml``): the code halves Adam's learning rate every 30 epochs in a
  staircase; the pipeline's schedules have no staircase, so the preset uses the continuous
  ``exp_after`` decay with the same half-life (equal at every 30th epoch). The code reports the best
  *test* accuracy over epochs; we select on the validation split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.models.base import PatchClassifier
from stages.models.registry import register

# tf.contrib.layers.variance_scaling_initializer defaults: factor 2.0, mode FAN_IN, truncated normal whose
# std is sqrt(1.3 * factor / fan_in) (1.3 compensates for the truncation at 2 std).
_TF_VS_FACTOR = 2.0
# TensorFlow batch_normalization(momentum=0.9, epsilon=1e-3): PyTorch's momentum counts the other way.
TF_BN_MOMENTUM = 0.1
TF_BN_EPS = 1e-3


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """A dense layer with the code's He truncated-normal kernel and zero bias."""
    layer = nn.Linear(in_features, out_features)
    std = math.sqrt(1.3 * _TF_VS_FACTOR / in_features)
    nn.init.trunc_normal_(layer.weight, 0.0, std, -2.0 * std, 2.0 * std)
    nn.init.zeros_(layer.bias)
    return layer


def _units(in_features: int, widths: Sequence[int], bn_momentum: float) -> nn.Sequential:
    """``Linear -> BN -> ReLU`` for each width."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            _linear(in_features, width),
            nn.BatchNorm1d(width, eps=TF_BN_EPS, momentum=bn_momentum),
            nn.ReLU(inplace=True),
        ]
        in_features = width
    return nn.Sequential(*layers)


def _decoder(in_features: int, widths: Sequence[int], out_features: int) -> nn.Sequential:
    """``Linear -> sigmoid`` for each width, then a linear output layer (the code: sigmoid)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [_linear(in_features, width), nn.Sigmoid()]
        in_features = width
    layers.append(_linear(in_features, out_features))
    return nn.Sequential(*layers)


AUX_FEATURES = ("profile", "centre")


def profile_sizes(patch_size: int) -> list[int]:
    """Odd window edges ``3, 5, ..., P`` of the local profile (5 sizes at ``P = 11``)."""
    return list(range(3, patch_size + 1, 2))


def profile_length(patch_size: int) -> int:
    """Features per auxiliary band: the centre value and four statistics per window size (21 at P = 11)."""
    return 1 + 4 * len(profile_sizes(patch_size))


def local_profile(x: Tensor) -> Tensor:
    """``(B, C, P, P)`` -> ``(B, C * (1 + 4 n))``: per band, the centre value ``v`` and, for each centred
    ``k x k`` window (``k = 3, 5, ..., P``), ``v - min``, ``max - v``, ``mean - v`` and the std.

    A pixel's height *relative to its surroundings* at several scales, what morphological profiles of a
    DSM encode (a roof stands above its block, a parking lot does not), without their learned-free but
    scene-wide reconstruction filters: everything comes from the patch. Band-major order.
    """
    p = x.shape[-1]
    c = p // 2
    v = x[:, :, c, c]
    feats = [v]
    for k in profile_sizes(p):
        h = k // 2
        win = x[:, :, c - h : c + h + 1, c - h : c + h + 1].flatten(2)
        feats += [v - win.amin(-1), win.amax(-1) - v, win.mean(-1) - v, win.std(-1, correction=0)]
    return torch.stack(feats, 2).flatten(1)


@register("endnet")
class EndNet(PatchClassifier):
    """EndNet on the centre pixel of each primary patch and the auxiliary's local profile (module docstring).

    Args:
        in_channels: ``(Ch, Cl)``: primary (HSI) and auxiliary (LiDAR / SAR) band counts.
        n_classes: number of classes ``K``.
        patch_size: patch edge ``P`` (odd; the primary's centre pixel is used, and the auxiliary's
            profile windows 3..P).
        encoder_widths: widths of each modality's encoder units ((16, 32, 64, 128)).
        joint_widths: widths of the joint units ((128, 64)); the first is the fused code the decoders read.
        decoder_widths: widths of the decoders' sigmoid layers ((64, 32, 16)).
        l2: ``beta_reg``: the loss adds ``l2 * sum(w ** 2) / 2`` over every weight matrix (0.001).
        rec_weight_primary: weight of the primary (HSI) reconstruction MSE (1).
        rec_weight_aux: weight of the auxiliary (LiDAR) reconstruction MSE (1).
        bn_momentum: PyTorch BN momentum (the code's TF momentum 0.9 is PyTorch's 0.1).
        aux_features: ``"profile"`` (the auxiliary's local profile, 21 values per band at P = 11) or
            ``"centre"`` (its centre pixel).

    Forward: ``(B, Ch, P, P)``, ``(B, Cl, P, P)`` -> logits ``(B, K)``.
    """

    def __init__(
        self,
        *,
        in_channels: tuple[int, int],
        n_classes: int,
        patch_size: int,
        encoder_widths: Sequence[int] = (16, 32, 64, 128),
        joint_widths: Sequence[int] = (128, 64),
        decoder_widths: Sequence[int] = (64, 32, 16),
        l2: float = 0.001,
        rec_weight_primary: float = 1.0,
        rec_weight_aux: float = 1.0,
        bn_momentum: float = TF_BN_MOMENTUM,
        aux_features: str = "profile",
    ) -> None:
        super().__init__(in_channels=in_channels, n_classes=n_classes, patch_size=patch_size)
        if aux_features not in AUX_FEATURES:
            raise ValueError(f"endnet aux_features must be one of {AUX_FEATURES}, got {aux_features!r}")
        encoder_widths, joint_widths = [int(w) for w in encoder_widths], [int(w) for w in joint_widths]
        decoder_widths = [int(w) for w in decoder_widths]
        if not encoder_widths or not joint_widths or min(encoder_widths + joint_widths + decoder_widths) < 1:
            raise ValueError("endnet needs non-empty, positive encoder and joint widths")
        if min(l2, rec_weight_primary, rec_weight_aux) < 0:
            raise ValueError("endnet l2 and reconstruction weights must be non-negative")
        ch, cl = self.in_channels
        self.aux_features = aux_features
        if aux_features == "profile":
            cl *= profile_length(patch_size)
        self.l2 = float(l2)
        self.rec_weight_primary, self.rec_weight_aux = float(rec_weight_primary), float(rec_weight_aux)
        self.encoder_primary = _units(ch, encoder_widths, bn_momentum)
        self.encoder_auxiliary = _units(cl, encoder_widths, bn_momentum)
        self.joint = _units(2 * encoder_widths[-1], joint_widths[:1], bn_momentum)
        self.joint_rest = _units(joint_widths[0], joint_widths[1:], bn_momentum)
        self.head = _linear(joint_widths[-1], n_classes)
        self.decoder_primary = _decoder(joint_widths[0], decoder_widths, ch)
        self.decoder_auxiliary = _decoder(joint_widths[0], decoder_widths, cl)

    def centre(self, x: Tensor) -> Tensor:
        """``(B, C, P, P)`` -> the centre pixel's bands ``(B, C)``."""
        c = x.shape[-1] // 2
        return x[:, :, c, c]

    def auxiliary_vector(self, x: Tensor) -> Tensor:
        """``(B, Cl, P, P)`` -> the auxiliary encoder's input: the centre pixel ``(B, Cl)``, or with
        ``aux_features="profile"`` its local profile ``(B, Cl * (1 + 4 n))`` (:func:`local_profile`)."""
        return local_profile(x) if self.aux_features == "profile" else self.centre(x)

    def _encode(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``(B, K)`` and the fused code ``z`` ``(B, joint_widths[0])``."""
        z = self.joint(torch.cat([self.encoder_primary(x1), self.encoder_auxiliary(x2)], 1))
        return self.head(self.joint_rest(z)), z

    def forward(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """``(B, Ch, P, P)``, ``(B, Cl, P, P)`` -> logits ``(B, K)`` from the per-pixel vectors."""
        return self._encode(self.centre(primary), self.auxiliary_vector(auxiliary))[0]

    def regularization(self) -> Tensor:
        """``l2 * sum(w ** 2) / 2`` over every weight matrix (``tf.nn.l2_loss``); biases and BN excluded."""
        weights = [m.weight for m in self.modules() if isinstance(m, nn.Linear)]
        return self.l2 * 0.5 * torch.stack([w.pow(2).sum() for w in weights]).sum()

    def training_loss(
        self, primary: Tensor, auxiliary: Tensor, target: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """``CE + regularization() + w1 * MSE(primary) + w2 * MSE(auxiliary)`` on the per-pixel vectors."""
        x1, x2 = self.centre(primary), self.auxiliary_vector(auxiliary)
        logits, z = self._encode(x1, x2)
        ce = F.cross_entropy(logits, target)
        rec_primary = F.mse_loss(self.decoder_primary(z), x1)
        rec_aux = F.mse_loss(self.decoder_auxiliary(z), x2)
        reg = self.regularization()
        loss = ce + reg + self.rec_weight_primary * rec_primary + self.rec_weight_aux * rec_aux
        parts = {
            "ce": float(ce.detach()),
            "rec_primary": float(rec_primary.detach()),
            "rec_aux": float(rec_aux.detach()),
            "reg": float(reg.detach()),
        }
        return loss, parts
