"""Segmentation losses: Dice, generalized Dice, Tversky, focal, (weighted) CE, Dice+CE, BCE(+Dice), deep supervision.

Every loss is an ``nn.Module`` called as ``loss(logits, target) -> scalar tensor``:

- ``logits``: raw network outputs, shape (B, K, *S) with *S = (I, J) or (I, J, K) (any number of spatial
  dims; nothing here is specific to 2D or 3D).
- ``target``: either an integer label map (B, *S) (or (B, 1, *S)) with values in 0..K-1, or, where the loss
  says so, a float one-hot / region target (B, K, *S) (e.g. BraTS regions WT/TC/ET, see
  :func:`labels_to_regions`).

Ignore label (sparse annotation): losses built with ``ignore_index=V`` (the label value, usually
:data:`medzoo.utils.IGNORE_INDEX`) take an integer label map in which voxels equal to ``V`` count for
nothing: they add no term to the cross-entropy or BCE mean and no probability or target mass to the Dice
sums, so their logits get an exactly zero gradient. Region losses (``bce``, ``bce_dice``) built with
``regions=[[values...], ...]`` turn an integer label map into one sigmoid target per region (nnU-Net's
region-based training, e.g. BraTS WT/TC/ET), with the ignore label masked out the same way.

Multi-class losses use a softmax over K. Region / binary losses (``bce``, ``bce_dice`` and the Dice family
with ``activation="sigmoid"``) use an independent sigmoid per channel. Integer targets are one-hot encoded
with ``scatter`` (no python loops over voxels); all reductions are over whole tensors.

Soft Dice (per class k, per sample unless ``batch_dice``)::

    dice_k = (2 * sum(p_k * g_k) + smooth) / (sum(p_k) + sum(g_k) + smooth),   loss = 1 - mean_k dice_k

``create_loss(name, **kwargs)`` builds a loss from the small registry (:func:`list_losses` names them);
``"dice_ce"`` (soft Dice without background + cross-entropy, as nnU-Net) is the default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medzoo.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "BCEDiceLoss",
    "BCELoss",
    "CrossEntropyLoss",
    "DeepSupervisionLoss",
    "DiceCELoss",
    "DiceFocalLoss",
    "DiceLoss",
    "FocalLoss",
    "GeneralizedDiceLoss",
    "TverskyLoss",
    "create_loss",
    "deep_supervision_weights",
    "labels_to_regions",
    "list_losses",
    "one_hot",
    "register_loss",
]


# ----------------------------------------------------------------------------------------------- helpers
def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot encode an integer label map with ``scatter``.

    Args:
        labels: integer tensor (B, *S) with values in 0..num_classes-1.
        num_classes: K.
        dtype: output dtype.

    Returns:
        Tensor (B, K, *S).
    """
    labels = labels.long()
    out = torch.zeros((labels.shape[0], num_classes, *labels.shape[1:]), dtype=dtype, device=labels.device)
    return out.scatter_(1, labels.unsqueeze(1), 1)


def labels_to_regions(labels: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """Turn an integer label map into overlapping float region targets (e.g. BraTS WT/TC/ET).

    Args:
        labels: integer tensor (B, *S).
        regions: one list of label values per region, e.g. ``[(1, 2, 3), (2, 3), (3,)]`` for WT, TC, ET.

    Returns:
        Float tensor (B, R, *S): 1 where the voxel's label belongs to the region.
    """
    chans = [torch.isin(labels, torch.as_tensor(list(r), device=labels.device)) for r in regions]
    return torch.stack(chans, dim=1).float()


def _label_map(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Integer target as (B, *S) int64 (accepts (B, 1, *S))."""
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: expected an integer "
            f"label map (B, *S) = {tuple(logits.shape[:1] + logits.shape[2:])}"
        )
    return target.long()


def _dense_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Target as a float (B, K, *S) tensor: one-hot of an integer map, or a given one-hot/region tensor."""
    if target.is_floating_point() and target.shape == logits.shape:
        return target.float()
    if not target.is_floating_point() and target.shape == logits.shape and logits.shape[1] > 1:
        return target.float()  # already one-hot (integer dtype)
    labels = _label_map(target, logits)
    if logits.shape[1] == 1:  # binary task with one output channel: foreground = label > 0
        return (labels > 0).float().unsqueeze(1)
    return one_hot(labels, logits.shape[1])


def _valid_mask(target: torch.Tensor, logits: torch.Tensor, ignore_index: int | None) -> torch.Tensor | None:
    """(B, *S) boolean mask of annotated voxels of an integer target, or None when nothing is ignored."""
    if ignore_index is None or target.is_floating_point() and target.shape == logits.shape:
        return None
    return _label_map(target, logits) != ignore_index


def _region_target(
    target: torch.Tensor, logits: torch.Tensor, regions: Sequence[Sequence[int]] | None, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dense float target (B, R, *S) and the (B, 1, *S) float mask of annotated voxels (None: all are)."""
    valid = _valid_mask(target, logits, ignore_index)
    if regions is not None and not (target.is_floating_point() and target.shape == logits.shape):
        labels = _label_map(target, logits)
        dense = labels_to_regions(labels, regions)
    else:
        if valid is not None:  # ignored voxels become background, then the mask removes them
            target = _label_map(target, logits).masked_fill(~valid, 0)
        dense = _dense_target(target, logits)
    return dense, None if valid is None else valid.unsqueeze(1).float()


def _activate(logits: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation is None or activation == "none":
        return logits
    raise ConfigError(f"unknown activation '{activation}' (use softmax, sigmoid or none)")


def _sum_dims(x: torch.Tensor, batch: bool) -> tuple[int, ...]:
    """Dims to reduce for per-class statistics: the spatial dims, plus the batch dim when ``batch``."""
    spatial = tuple(range(2, x.ndim))
    return (0, *spatial) if batch else spatial


class _RegionBase(nn.Module):
    """Shared options of the Dice family (activation, background, batch statistics, smoothing)."""

    def __init__(
        self,
        include_background: bool = False,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        activation: str = "softmax",
        ignore_index: int | None = None,
        regions: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.regions = None if regions is None else [list(map(int, r)) for r in regions]
        self.include_background = include_background
        self.batch_dice = batch_dice
        self.smooth = float(smooth)
        self.activation = activation

    def _stats(
        self, logits: torch.Tensor, target: torch.Tensor, probs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Soft TP, sum of probabilities and sum of targets per (sample,) class, background dropped if asked.

        Shapes (B, K') or (K',) with ``batch_dice``. For softmax with an integer label map no one-hot tensor is
        built: TP_k = sum of p_k over voxels labelled k (``gather`` + ``scatter_add``), target counts likewise.

        Args:
            probs: already activated probabilities (to share a softmax with another loss term).
        """
        logits = logits.float()
        probs = _activate(logits, self.activation) if probs is None else probs
        k = logits.shape[1]
        dense = target.shape == logits.shape and (target.is_floating_point() or k > 1)
        if self.activation == "softmax" and k > 1 and not dense:
            labels = _label_map(target, logits).reshape(logits.shape[0], -1)  # (B, N)
            flat = probs.reshape(probs.shape[0], k, -1)
            valid = None if self.ignore_index is None else labels != self.ignore_index
            if valid is not None:  # ignored voxels: gathered at class 0, then zeroed, so they add nothing
                labels = labels.masked_fill(~valid, 0)
            p_true = flat.gather(1, labels.unsqueeze(1)).squeeze(1)  # (B, N)
            ones = torch.ones_like(p_true)
            if valid is not None:
                p_true, ones = p_true * valid, ones * valid
                psum = (flat * valid.unsqueeze(1)).sum(-1)
            else:
                psum = probs.sum(tuple(range(2, probs.ndim)))
            tp = probs.new_zeros((probs.shape[0], k)).scatter_add_(1, labels, p_true)
            gsum = probs.new_zeros((probs.shape[0], k)).scatter_add_(1, labels, ones)
            if self.batch_dice:
                tp, gsum, psum = tp.sum(0), gsum.sum(0), psum.sum(0)
        else:
            onehot, mask = _region_target(target, logits, self.regions, self.ignore_index)
            if mask is not None:
                probs, onehot = probs * mask, onehot * mask
            dims = _sum_dims(probs, self.batch_dice)
            tp = (probs * onehot).sum(dims)
            psum, gsum = probs.sum(dims), onehot.sum(dims)
        # Background (channel 0) is dropped only for softmax over >1 classes; sigmoid channels are all foreground.
        if not self.include_background and self.activation == "softmax" and k > 1:
            tp, psum, gsum = tp[..., 1:], psum[..., 1:], gsum[..., 1:]
        return tp, psum, gsum


# ----------------------------------------------------------------------------------------------- Dice family
class DiceLoss(_RegionBase):
    """Soft Dice loss, ``1 - mean_k dice_k``.

    Args:
        include_background: keep class 0 (softmax only). nnU-Net leaves it out (default False).
        batch_dice: pool the statistics over the batch ("batch Dice") instead of per sample.
        smooth: added to numerator and denominator (empty classes then score 1, not NaN).
        activation: ``"softmax"`` (multi-class), ``"sigmoid"`` (binary / region channels) or ``"none"``
            (inputs are already probabilities).
        ignore_index: label value of unannotated voxels in an integer target (None: every voxel counts).
        regions: label values of each sigmoid channel; an integer target becomes region targets.

    Shapes: logits (B, K, *S); target (B, *S) integer, or (B, K, *S) float one-hot / regions.
    """

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, probs: torch.Tensor | None = None
    ) -> torch.Tensor:
        tp, psum, gsum = self._stats(logits, target, probs)
        dice = (2 * tp + self.smooth) / (psum + gsum + self.smooth)
        return 1.0 - dice.mean()


class GeneralizedDiceLoss(_RegionBase):
    """Generalized Dice loss (Sudre et al. 2017), class weights ``w_k = 1 / (sum g_k)^2``.

    ``loss = 1 - (2 * sum_k w_k TP_k + smooth) / (sum_k w_k (P_k + G_k) + smooth)`` per sample (or pooled over
    the batch with ``batch_dice``), averaged over samples. Weights of classes absent from the target (infinite)
    are replaced by the largest finite weight of that sample, as MONAI does.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, psum, ground = self._stats(logits, target)
        denom = psum + ground
        w = 1.0 / ground.square()
        finite = torch.isfinite(w)
        w_fin = torch.where(finite, w, torch.zeros_like(w))
        w_max = w_fin.amax(dim=-1, keepdim=True)
        w = torch.where(finite, w, w_max.expand_as(w))
        numer = 2 * (w * tp).sum(-1)
        denom = (w * denom).sum(-1)
        return 1.0 - ((numer + self.smooth) / (denom + self.smooth)).mean()


class TverskyLoss(_RegionBase):
    """Tversky loss: ``TI_k = (TP + s) / (TP + alpha FP + beta FN + s)``, ``loss = 1 - mean_k TI_k``.

    ``alpha`` weighs false positives, ``beta`` false negatives; alpha = beta = 0.5 is the soft Dice.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, **kwargs) -> None:
        super().__init__(**kwargs)
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, psum, gsum = self._stats(logits, target)
        fp, fn = psum - tp, gsum - tp
        ti = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return 1.0 - ti.mean()


# ----------------------------------------------------------------------------------------------- voxel-wise
def _on(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """``t`` on ``like``'s device (loss modules are often left on the CPU while the logits are on a GPU)."""
    return None if t is None else t.to(like.device)


def _class_weight(weight: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    return None if weight is None else torch.as_tensor(weight, dtype=torch.float32)


class CrossEntropyLoss(nn.Module):
    """Cross-entropy on logits (B, K, *S) and an integer map (B, *S), optionally class-weighted.

    Args:
        weight: per-class weights (K,) (weighted mean over voxels, as ``torch.nn.functional.cross_entropy``).
        ignore_index: label value that contributes nothing (None or -100: none).
        label_smoothing: as in PyTorch.
    """

    def __init__(
        self, weight: Sequence[float] | torch.Tensor | None = None, ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", _class_weight(weight), persistent=False)
        self.ignore_index = -100 if ignore_index is None else int(ignore_index)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), _label_map(target, logits), weight=_on(self.weight, logits), ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): ``mean over voxels of -a_t (1 - p_t)^gamma log p_t``.

    Args:
        gamma: focusing parameter (0 gives cross-entropy).
        alpha: optional per-class weights a_k (K,); ``a_t`` is the weight of the voxel's true class.
    """

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("alpha", _class_weight(alpha), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = _label_map(target, logits).unsqueeze(1)
        logp = torch.log_softmax(logits.float(), dim=1).gather(1, labels).squeeze(1)
        loss = -((1.0 - logp.exp()) ** self.gamma) * logp
        if self.alpha is not None:
            loss = loss * self.alpha.to(loss.device)[labels.squeeze(1)]
        return loss.mean()


class BCELoss(nn.Module):
    """Binary cross-entropy with logits for binary or region targets.

    Shapes: logits (B, R, *S); target (B, R, *S) float regions, or for R == 1 an integer map (B, *S)
    (foreground = label > 0).

    Args:
        pos_weight: optional per-channel weight of positives (R,).
        regions: label values of each region (an integer target is turned into region targets).
        ignore_index: label value of unannotated voxels in an integer target (None: every voxel counts).
    """

    def __init__(
        self, pos_weight: Sequence[float] | torch.Tensor | None = None,
        regions: Sequence[Sequence[int]] | None = None, ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("pos_weight", _class_weight(pos_weight), persistent=False)
        self.regions = None if regions is None else [list(map(int, r)) for r in regions]
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        dense, mask = _region_target(target, logits, self.regions, self.ignore_index)
        pw = None
        if self.pos_weight is not None:
            pw = self.pos_weight.to(logits.device).view(1, -1, *([1] * (logits.ndim - 2)))
        if mask is None:
            return F.binary_cross_entropy_with_logits(logits, dense, pos_weight=pw)
        per_voxel = F.binary_cross_entropy_with_logits(logits, dense, pos_weight=pw, reduction="none") * mask
        return per_voxel.sum() / (mask.sum() * logits.shape[1]).clamp_min(1e-8)


# ----------------------------------------------------------------------------------------------- compounds
class DiceCELoss(nn.Module):
    """``weight_dice * DiceLoss + weight_ce * CrossEntropyLoss`` (nnU-Net's default loss).

    Args:
        include_background, batch_dice, smooth: passed to :class:`DiceLoss` (softmax).
        weight: optional per-class CE weights (K,).
        weight_dice, weight_ce: mixing weights.
        ignore_index: label value of unannotated voxels (None: every voxel counts).
    """

    def __init__(
        self, include_background: bool = False, batch_dice: bool = False, smooth: float = 1e-5,
        weight: Sequence[float] | torch.Tensor | None = None, weight_dice: float = 1.0, weight_ce: float = 1.0,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.dice = DiceLoss(include_background=include_background, batch_dice=batch_dice, smooth=smooth,
                             ignore_index=ignore_index)
        self.ce = CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        self.ignore_index = ignore_index
        self.weight_dice, self.weight_ce = float(weight_dice), float(weight_ce)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=1)  # one softmax shared by both terms
        labels = _label_map(target, logits)
        weight = _on(self.ce.weight, logits)
        if self.ignore_index is None:
            ce = F.nll_loss(logp, labels, weight=weight)
        else:  # a mean over annotated voxels that is 0, not NaN, when a patch has none
            nll = F.nll_loss(logp, labels, weight=weight, ignore_index=self.ignore_index, reduction="none")
            valid = labels != self.ignore_index
            w = valid.float() if weight is None else weight[labels.masked_fill(~valid, 0)] * valid
            ce = nll.sum() / w.sum().clamp_min(1e-8)
        return self.weight_dice * self.dice(logits, target, probs=logp.exp()) + self.weight_ce * ce


class DiceFocalLoss(nn.Module):
    """``weight_dice * DiceLoss + weight_focal * FocalLoss`` (softmax)."""

    def __init__(
        self, include_background: bool = False, batch_dice: bool = False, smooth: float = 1e-5,
        gamma: float = 2.0, alpha: Sequence[float] | None = None, weight_dice: float = 1.0,
        weight_focal: float = 1.0,
    ) -> None:
        super().__init__()
        self.dice = DiceLoss(include_background=include_background, batch_dice=batch_dice, smooth=smooth)
        self.focal = FocalLoss(gamma=gamma, alpha=alpha)
        self.weight_dice, self.weight_focal = float(weight_dice), float(weight_focal)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.weight_dice * self.dice(logits, target) + self.weight_focal * self.focal(logits, target)


class BCEDiceLoss(nn.Module):
    """``weight_bce * BCE + weight_dice * sigmoid soft Dice`` for binary or region (e.g. BraTS) targets.

    Shapes: logits (B, R, *S); target (B, R, *S) float, or (B, *S) integer when R == 1 or ``regions`` is given
    (then ``ignore_index`` marks unannotated voxels).
    """

    def __init__(
        self, batch_dice: bool = False, smooth: float = 1e-5, pos_weight: Sequence[float] | None = None,
        weight_dice: float = 1.0, weight_bce: float = 1.0, regions: Sequence[Sequence[int]] | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.bce = BCELoss(pos_weight=pos_weight, regions=regions, ignore_index=ignore_index)
        self.dice = DiceLoss(include_background=True, batch_dice=batch_dice, smooth=smooth, activation="sigmoid",
                             regions=regions, ignore_index=ignore_index)
        self.weight_dice, self.weight_bce = float(weight_dice), float(weight_bce)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.weight_bce * self.bce(logits, target) + self.weight_dice * self.dice(logits, target)


# ----------------------------------------------------------------------------------------------- deep supervision
def deep_supervision_weights(levels: int, drop_lowest: bool = False) -> list[float]:
    """nnU-Net's weights: ``1 / 2**i`` for level i (0 = full resolution), normalised to sum 1.

    With ``drop_lowest`` the lowest-resolution output gets weight 0 (as nnU-Net does) before normalising.
    """
    w = [1.0 / 2**i for i in range(levels)]
    if drop_lowest and levels > 1:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


def _downsample_target(target: torch.Tensor, size: Sequence[int], logits_ndim: int) -> torch.Tensor:
    """Nearest-neighbour resize of an integer map (B, *S) or a float region target (B, R, *S) to ``size``."""
    dense = target.ndim == logits_ndim  # (B, R, *S) region / one-hot, or (B, 1, *S)
    if tuple(target.shape[-len(size):]) == tuple(size):
        return target
    x = target if dense else target.unsqueeze(1)
    y = F.interpolate(x.float(), size=tuple(size), mode="nearest-exact")
    y = y if dense else y.squeeze(1)
    return y.to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """Apply ``base_loss`` to every output of a deep-supervision net and sum with level weights.

    Args:
        base_loss: a loss ``(logits, target) -> scalar``.
        weights: one weight per level (full resolution first); default halving per level, normalised
            (:func:`deep_supervision_weights`). Extra levels beyond ``len(weights)`` are ignored.

    Call: ``loss(outputs, target)`` with ``outputs`` a list of logits (B, K, *S_i) at decreasing resolution
    (a single tensor is passed straight to ``base_loss``) and ``target`` the full-resolution target (B, *S)
    (or (B, R, *S) regions), downsampled to each level with nearest neighbour; a list of per-level targets
    is also accepted.
    """

    def __init__(self, base_loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.base_loss = base_loss
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(
        self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.base_loss(outputs, target if isinstance(target, torch.Tensor) else target[0])
        weights = self.weights or deep_supervision_weights(len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for i, (out, w) in enumerate(zip(outputs, weights)):
            if w == 0:
                continue
            if isinstance(target, torch.Tensor):
                t = _downsample_target(target, out.shape[2:], out.ndim)
            else:
                t = target[i]
            total = total + w * self.base_loss(out, t)
        return total


# ----------------------------------------------------------------------------------------------- registry
_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator / function registering a loss factory under ``name``."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _LOSSES:
            raise ValueError(f"loss '{name}' is already registered")
        _LOSSES[name] = factory
        return factory

    return deco


for _name, _cls in [
    ("dice", DiceLoss),
    ("generalized_dice", GeneralizedDiceLoss),
    ("tversky", TverskyLoss),
    ("focal", FocalLoss),
    ("ce", CrossEntropyLoss),
    ("dice_ce", DiceCELoss),
    ("dice_focal", DiceFocalLoss),
    ("bce", BCELoss),
    ("bce_dice", BCEDiceLoss),
]:
    register_loss(_name)(_cls)


def list_losses() -> list[str]:
    """Names accepted by :func:`create_loss`."""
    return sorted(_LOSSES)


def create_loss(name: str = "dice_ce", *, deep_supervision: bool = False, ds_weights: Sequence[float] | None = None,
                **kwargs) -> nn.Module:
    """Build a registered loss.

    Args:
        name: one of :func:`list_losses` (``dice_ce`` by default).
        deep_supervision: wrap it in :class:`DeepSupervisionLoss`.
        ds_weights: level weights for the deep-supervision wrapper.
        **kwargs: the loss's own arguments (e.g. ``include_background``, ``batch_dice``, ``weight``).

    Raises:
        ConfigError: unknown name or argument.
    """
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss '{name}'; available: {', '.join(list_losses())}")
    try:
        loss = _LOSSES[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad arguments for loss '{name}': {err}") from err
    if deep_supervision:
        loss = DeepSupervisionLoss(loss, ds_weights)
    return loss
