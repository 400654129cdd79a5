"""The contracts every landfuse model satisfies: patch classifiers and segmenters.

A patch classifier sees two co-registered patches centred on the pixel to label and returns class
logits for that centre pixel:

* ``primary``   ``(B, C1, P, P)`` float32, e.g. the hyperspectral cube (``role: primary`` in the
  dataset's params file);
* ``auxiliary`` ``(B, C2, P, P)`` float32, e.g. the LiDAR DSM (``role: auxiliary``);
* output        ``(B, n_classes)`` logits -- never probabilities, the loss is cross-entropy on logits.

Both inputs are already normalised (z-scored per band) by the data layer; class targets are integers
``0 .. n_classes - 1``.

**Role filling.** The pipeline always passes both tensors. When an experiment uses a single modality
(e.g. ``fusatnet-hsi``), the data layer feeds the available modality into the missing role too, so
``in_channels`` is then ``(C, C)`` and the same network runs with both roles holding the same data.
This keeps "the same network fed HSI only" architecturally identical to the fused model, which is what
a modality ablation should compare; models therefore never special-case a missing input.

**Segmenters** (:class:`Segmenter`) take the same two inputs as ``(B, C, H, W)`` tiles and return
``(B, K, H, W)`` logits; their targets are dense, with :data:`IGNORE_INDEX` for unlabelled pixels.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -1  # dense targets: pixels without a label (segmentation)


class FusionModel(nn.Module):
    """What every landfuse model shares: two inputs, the role-filling switch, an optional penalty.

    Args:
        in_channels: ``(C1, C2)`` band counts of the primary and auxiliary inputs.
        n_classes: number of classes ``K``.
    """

    #: Whether the data layer fills an unselected role with the other role's modalities (see the
    #: module docstring). Single-stream models set False and accept ``in_channels[1] == 0``.
    fills_missing_role: ClassVar[bool] = True
    #: ``"patch"`` (one label per patch centre) or ``"segmentation"`` (a label per pixel).
    task: ClassVar[str]

    def __init__(self, *, in_channels: tuple[int, int], n_classes: int) -> None:
        super().__init__()
        smallest_aux = 1 if self.fills_missing_role else 0
        if len(in_channels) != 2 or in_channels[0] < 1 or in_channels[1] < smallest_aux:
            raise ValueError(f"in_channels must be two band counts (primary >= 1), got {in_channels!r}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.in_channels = (int(in_channels[0]), int(in_channels[1]))
        self.n_classes = int(n_classes)

    def regularization(self) -> Tensor:
        """An explicit penalty added to the loss (a 0-dim tensor); none by default."""
        return torch.zeros((), device=self._device())

    @staticmethod
    def cpu_channels_last(x: Tensor) -> Tensor:
        """``x`` in channels-last memory layout on CPU, unchanged elsewhere; values and shape are untouched.

        oneDNN's CPU convolutions run about 1.8x faster in channels-last (NHWC) than in NCHW for these
        narrow-width, many-band patch stacks (measured with ``benchmarks/bench_models.py``); the layout
        then propagates through the network. On GPUs the default layout is kept.
        """
        if x.device.type == "cpu" and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


class PatchClassifier(FusionModel):
    """Base class of per-pixel patch classifiers: input geometry and the training loss.

    Subclasses implement :meth:`forward` and may override :meth:`regularization` (an explicit penalty
    added to the loss, e.g. Keras-style coupled L2) or :meth:`training_loss` (e.g. to add
    reconstruction terms).

    Args:
        in_channels: ``(C1, C2)`` band counts of the primary and auxiliary inputs.
        n_classes: number of classes ``K``.
        patch_size: edge ``P`` of the square patches, odd so a patch has a centre pixel.
    """

    task: ClassVar[str] = "patch"

    def __init__(self, *, in_channels: tuple[int, int], n_classes: int, patch_size: int) -> None:
        super().__init__(in_channels=in_channels, n_classes=n_classes)
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be a positive odd number, got {patch_size}")
        self.patch_size = int(patch_size)

    def forward(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """``(B, C1, P, P)``, ``(B, C2, P, P)`` -> logits ``(B, n_classes)``."""
        raise NotImplementedError

    def training_loss(
        self, primary: Tensor, auxiliary: Tensor, target: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss to back-propagate for one batch, and its parts for logging.

        Args:
            primary: ``(B, C1, P, P)``.
            auxiliary: ``(B, C2, P, P)``.
            target: ``(B,)`` int64 class indices in ``0 .. n_classes - 1``.

        Returns:
            ``(loss, {"ce": ..., "reg": ...})`` with ``loss = CE(logits, target) + regularization()``.
        """
        logits = self(primary, auxiliary)
        ce = F.cross_entropy(logits, target)
        reg = self.regularization()
        loss = ce + reg
        return loss, {"ce": float(ce.detach()), "reg": float(reg.detach())}


class Segmenter(FusionModel):
    """Base class of semantic-segmentation models on co-registered tiles.

    * ``primary``   ``(B, C1, H, W)`` and ``auxiliary`` ``(B, C2, H, W)`` float32, normalised;
    * output        ``(B, n_classes, H, W)`` logits;
    * targets       ``(B, H, W)`` int64 class indices, :data:`IGNORE_INDEX` where a pixel has no label
      (background, the dataset's ignore value, or, on scene datasets, every pixel outside the split).

    ``H`` and ``W`` must be multiples of :attr:`stride` (the encoder's total downsampling).

    Args:
        in_channels: ``(C1, C2)`` band counts.
        n_classes: number of classes ``K``.
        patch_size: the training tile edge (the params preset's ``tile_size``); the network is fully
            convolutional and predicts any multiple of :attr:`stride`.
    """

    task: ClassVar[str] = "segmentation"
    #: total downsampling; a class default that an instance may refine (e.g. a UNet's ``2 ** depth``)
    stride: int = 1

    def __init__(self, *, in_channels: tuple[int, int], n_classes: int, patch_size: int) -> None:
        super().__init__(in_channels=in_channels, n_classes=n_classes)
        if patch_size < 1 or patch_size % self.stride:
            raise ValueError(
                f"{type(self).__name__}: tile size must be a multiple of {self.stride}, got {patch_size}"
            )
        self.tile_size = int(patch_size)

    def forward(self, primary: Tensor, auxiliary: Tensor) -> Tensor:
        """``(B, C1, H, W)``, ``(B, C2, H, W)`` -> logits ``(B, n_classes, H, W)``."""
        raise NotImplementedError

    def check_tiles(self, *inputs: Tensor) -> None:
        """Raise ``ValueError`` unless the inputs are 4-D, share batch and grid, and the grid is a
        multiple of :attr:`stride`."""
        shapes = [tuple(x.shape) for x in inputs]
        name = type(self).__name__
        if any(len(s) != 4 for s in shapes):
            raise ValueError(f"{name}: inputs must be (B, C, H, W), got shapes {shapes}")
        b, _, h, w = shapes[0]
        if any((s[0], s[2], s[3]) != (b, h, w) for s in shapes[1:]):
            raise ValueError(f"{name}: inputs must share batch and grid, got shapes {shapes}")
        if h % self.stride or w % self.stride:
            raise ValueError(f"{name}: tile height and width must be multiples of {self.stride}, got {h}x{w}")

    def training_loss(
        self, primary: Tensor, auxiliary: Tensor, target: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """``CE(logits, target, ignore_index=IGNORE_INDEX) + regularization()``; subclasses add terms."""
        logits = self(primary, auxiliary)
        ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        reg = self.regularization()
        return ce + reg, {"ce": float(ce.detach()), "reg": float(reg.detach())}
