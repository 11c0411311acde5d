"""Transfer learning: load matching weights, freeze parts, and inflate 2D ResNet weights to 3D.

- :func:`load_matching_weights` loads every tensor whose name and shape match and reports the rest.
- :func:`freeze` / :func:`unfreeze` switch ``requires_grad`` by module-name prefix; ``"encoder"`` means the
  model's ``encoder_prefixes`` attribute (every medzoo model with an encoder defines it).
- :func:`inflate_2d_to_3d` turns a 2D ResNet state dict into one for the 3D
  :class:`~medzoo.models.encoders.resnet.ResNetEncoder` (Carreira & Zisserman, "Quo Vadis, Action
  Recognition?", CVPR 2017, "I3D" inflation): each 2D kernel is repeated along a new depth axis and divided
  by the depth, so a depth-constant input gives the 2D activations on every slice (away from the depth
  borders, where zero padding cuts the sum).
- :func:`load_2d_resnet_into_encoder` reads a local file (safetensors or a weights-only ``torch.load``) of
  torchvision-named ResNet weights (``conv1``, ``bn1``, ``layer1.0.conv1`` ...; ``module.`` / ``encoder.`` /
  ``backbone.`` prefixes stripped), inflates 2D weights when the target is 3D, adapts the stem to the
  number of input channels, and loads them. 3D weights (e.g. MedicalNet's) are loaded as they are.

Weights come from local files only; nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medzoo.errors import CheckpointError, ModelError

__all__ = [
    "TransferReport", "freeze", "inflate_2d_to_3d", "load_2d_resnet_into_encoder", "load_matching_weights",
    "unfreeze",
]

logger = logging.getLogger(__name__)

_STRIP_PREFIXES = ("module.", "encoder.", "backbone.")


@dataclass
class TransferReport:
    """What :func:`load_matching_weights` did.

    Attributes:
        matched: names loaded.
        shape_mismatched: name -> (model shape, given shape), not loaded.
        missing: model names absent from the given state dict (left as they were).
        unexpected: given names the model does not have (ignored).
    """

    matched: list[str] = field(default_factory=list)
    shape_mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, and the first few names of each non-empty problem list."""
        parts = [f"{len(self.matched)} matched"]
        for label, names in (("shape-mismatched", list(self.shape_mismatched)), ("missing", self.missing),
                             ("unexpected", self.unexpected)):
            if names:
                more = f", ... (+{len(names) - 3})" if len(names) > 3 else ""
                parts.append(f"{len(names)} {label} ({', '.join(names[:3])}{more})")
        return "; ".join(parts)


def load_matching_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> TransferReport:
    """Copy into ``model`` every tensor of ``state_dict`` whose name and shape match; report the others.

    Args:
        model: the target network (parameters and buffers).
        state_dict: name -> tensor.

    Returns:
        A :class:`TransferReport` (also logged at INFO, problems at WARNING).
    """
    own = model.state_dict()
    report = TransferReport()
    to_load = {}
    for name, value in state_dict.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(own[name].shape) != tuple(value.shape):
            report.shape_mismatched[name] = (tuple(own[name].shape), tuple(value.shape))
        else:
            to_load[name] = value
            report.matched.append(name)
    report.missing = [n for n in own if n not in state_dict]
    model.load_state_dict(to_load, strict=False)
    level = logging.WARNING if (report.shape_mismatched or report.missing or report.unexpected) else logging.INFO
    logger.log(level, "load_matching_weights: %s", report.summary())
    return report


def _expand_prefixes(model: nn.Module, prefixes: str | Iterable[str]) -> list[str]:
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    out: list[str] = []
    for p in prefixes:
        if p == "encoder" and hasattr(model, "encoder_prefixes"):
            out.extend(model.encoder_prefixes)
        else:
            out.append(p)
    return out


def _set_requires_grad(model: nn.Module, prefixes: str | Iterable[str], flag: bool) -> list[str]:
    pre = _expand_prefixes(model, prefixes)
    hit = [n for n, _ in model.named_parameters() if any(n == p or n.startswith(p + ".") for p in pre)]
    if not hit:
        raise ModelError(f"no parameter starts with {pre}; top-level modules are "
                         f"{[n for n, _ in model.named_children()]}")
    params = dict(model.named_parameters())
    for n in hit:
        params[n].requires_grad_(flag)
    return hit


def freeze(model: nn.Module, prefixes: str | Iterable[str] = "encoder") -> list[str]:
    """Set ``requires_grad=False`` on the parameters under the given module-name prefixes.

    ``"encoder"`` expands to ``model.encoder_prefixes`` when the model defines it. BatchNorm running
    statistics still update in train mode; put those modules in eval mode too for a fully frozen part.

    Returns:
        The names of the frozen parameters. Raises ModelError if no parameter matches.
    """
    names = _set_requires_grad(model, prefixes, False)
    logger.info("froze %d parameter tensors", len(names))
    return names


def unfreeze(model: nn.Module, prefixes: str | Iterable[str] = "encoder") -> list[str]:
    """Undo :func:`freeze` for the given prefixes; returns the parameter names."""
    return _set_requires_grad(model, prefixes, True)


def inflate_2d_to_3d(
    state_dict_2d: Mapping[str, torch.Tensor], depth: int | None = None, axis: int = 0
) -> dict[str, torch.Tensor]:
    """Inflate 2D conv kernels to 3D ("I3D" inflation); other tensors are copied.

    Each 4D conv weight (O, I, kh, kw) becomes (O, I, d, kh, kw) (new axis at spatial ``axis``), its 2D
    kernel repeated ``d`` times and divided by ``d``, so that on an input constant along that axis the 3D
    conv reproduces the 2D conv on every slice (away from the borders of that axis). BatchNorm parameters
    and buffers and other tensors are copied unchanged.

    Args:
        state_dict_2d: a 2D state dict (e.g. torchvision ResNet names).
        depth: kernel size along the new axis; ``None`` uses the kernel's own size ``kh`` (cubic kernels,
            what :class:`~medzoo.models.encoders.resnet.ResNetEncoder` has).
        axis: the spatial axis of the new dimension (0, 1 or 2 of the 3D kernel).

    Returns:
        A new state dict for the 3D network.
    """
    if axis not in (0, 1, 2):
        raise ModelError(f"axis must be 0, 1 or 2, got {axis}")
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict_2d.items():
        if t.dim() == 4 and name.endswith("weight"):
            d = depth if depth is not None else t.shape[2]
            out[name] = t.unsqueeze(2 + axis).repeat_interleave(d, dim=2 + axis) / d
        else:
            out[name] = t.clone()
    return out


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found (weights are read from local files only)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or unsafe pickle
        raise CheckpointError(f"{path}: cannot read weights safely ({exc.__class__.__name__}: {exc})") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor)")
    return obj


def _adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a stem kernel (O, C, ...) to ``in_channels``: sum for 1 channel, else cycle and rescale."""
    c = weight.shape[1]
    if c == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // c)
    return weight.repeat(1, reps, *([1] * (weight.dim() - 2)))[:, :in_channels] * (c / in_channels)


def load_2d_resnet_into_encoder(encoder_or_model: nn.Module, path: str | Path) -> TransferReport:
    """Load ResNet weights from a local file into a :class:`ResNetEncoder` (or a model's ``.encoder``).

    Accepts torchvision key names (``conv1.weight``, ``bn1.running_mean``, ``layer1.0.conv1.weight``,
    ``layer1.0.downsample.0.weight`` ...), optionally under ``module.``/``encoder.``/``backbone.``; ``fc.*``
    is dropped. 2D kernels are inflated with :func:`inflate_2d_to_3d` when the encoder is 3D; the stem is
    adapted to the encoder's input channels (RGB summed for 1 channel).

    Args:
        encoder_or_model: a ResNetEncoder, or a model whose ``encoder`` attribute is one.
        path: ``.safetensors`` or a ``torch.save`` file (read with ``weights_only=True``).

    Returns:
        The :class:`TransferReport` of the load (names relative to the encoder).
    """
    from medzoo.models.encoders.resnet import ResNetEncoder

    enc = encoder_or_model
    if not isinstance(enc, ResNetEncoder):
        enc = getattr(encoder_or_model, "encoder", None)
        if not isinstance(enc, ResNetEncoder):
            raise ModelError(f"{type(encoder_or_model).__name__} has no ResNet encoder to load weights into")
    sd = {}
    for name, t in _read_state_dict(path).items():
        while name.startswith(_STRIP_PREFIXES):
            name = name.split(".", 1)[1]
        if not name.startswith("fc."):
            sd[name] = t
    if enc.spatial_dims == 3 and any(t.dim() == 4 for n, t in sd.items() if n.endswith("weight")):
        sd = inflate_2d_to_3d(sd)
    if "conv1.weight" in sd:
        sd["conv1.weight"] = _adapt_stem(sd["conv1.weight"], enc.conv1.weight.shape[1])
    return load_matching_weights(enc, sd)
