"""HyperDenseNet: one path per modality, dense connections within and across paths.

Dolz, Gopinath, Yuan, Lombaert, Desrosiers and Ben Ayed, "HyperDense-Net: A hyper-densely connected CNN
for multi-modal image segmentation", IEEE Transactions on Medical Imaging 38(5), 2019 (arXiv:1804.02967).

Each of the ``in_channels`` modalities has its own path of nine 3x3x3 conv layers (widths 25, 25, 25, 50,
50, 50, 75, 75, 75). The input of layer ``k`` in every path is the concatenation of the outputs of layers
``1..k-1`` of *all* paths (each path sees its own features first, then the other paths' in cyclic order,
the "shuffled" ordering of the paper). The concatenated outputs of all layers of all paths go through 1x1x1
fully connected layers (400, 200, 150, PReLU) and a 1x1x1 classifier.

Differences from the original code and from MedicalZooPytorch:

* any number of modalities, built in a ``ModuleList`` (no per-modality-count classes);
* "same"-padded convolutions: the output has the input's spatial size (the original uses valid
  convolutions and shrinks the output by 18 voxels per axis);
* the fully connected layers read each feature map once (the original concatenates every path's own
  concatenation, i.e. the same maps several times in different orders, which adds parameters but no
  information).
"""

from __future__ import annotations

import torch
from torch import nn

from medzoo.models.layers.factories import make_conv, make_dropout, make_norm
from medzoo.models.registry import ModelCard, register_model

PAPER_WIDTHS = (25, 25, 25, 50, 50, 50, 75, 75, 75)
PAPER_HEAD = (400, 200, 150)

HYPERDENSENET_CARD = ModelCard(
    name="hyperdensenet",
    spatial_dims=(2, 3),
    paper="Dolz et al., IEEE TMI 2018 (HyperDense-Net)",
    typical_patch=(32, 32, 32),
    tiny_kwargs={"widths": (4, 4, 6), "head": (8,)},
    export_note="plain conv / concat graph; exports to ONNX (opset 17)",
)


class HyperDenseNet(nn.Module):
    """HyperDense-Net (Dolz et al., IEEE TMI 2018) for any number of modalities.

    Default widths are the paper's (``PAPER_WIDTHS`` per path, ``PAPER_HEAD`` fully connected); the
    parameter count grows with the square of the number of modalities (about 2.7M for one, 10M for two, 22M for three).
    Everything runs at full resolution, so memory grows with the patch: the paper trains on 27^3 patches;
    use about 32^3 on a CPU.

    Args:
        in_channels: number of modalities (>= 1); one path each.
        num_classes: output classes (background included).
        spatial_dims: 2 or 3.
        widths: output width of each conv layer of a path.
        head: widths of the 1x1x1 fully connected layers.
        norm: normalisation before each activation ("batch", as in the paper's code).
        dropout: dropout before each conv after the first, and after each fully connected layer.

    Shapes: (B, in_channels, *S) -> (B, num_classes, *S) logits, any S.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3,
                 widths: tuple[int, ...] = PAPER_WIDTHS, head: tuple[int, ...] = PAPER_HEAD,
                 norm: str | None = "batch", dropout: float = 0.0) -> None:
        super().__init__()
        d, n = spatial_dims, in_channels
        widths = tuple(widths)
        self.num_paths = n
        # layers[k][p]: layer k of path p. Layer 0 reads its modality; layer k reads n * sum(widths[:k]).
        self.layers = nn.ModuleList()
        for k, w in enumerate(widths):
            if k == 0:
                row = [make_conv(d, 1, w, 3, bias=False) for _ in range(n)]
            else:
                cin = n * sum(widths[:k])
                row = [nn.Sequential(make_norm(norm, d, cin), nn.PReLU(cin), make_dropout(d, dropout),
                                     make_conv(d, cin, w, 3, bias=False)) for _ in range(n)]
            self.layers.append(nn.ModuleList(row))
        total = n * sum(widths)
        fc: list[nn.Module] = [make_norm(norm, d, total), nn.PReLU(total)]
        ch = total
        for w in head:
            fc += [make_conv(d, ch, w, 1), nn.PReLU(w), make_dropout(d, dropout)]
            ch = w
        self.fully_connected = nn.Sequential(*fc)
        self.classifier = make_conv(d, ch, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S) -> (B, num_classes, *S)."""
        n = self.num_paths
        # history[p]: list of feature maps of path p, in layer order.
        history: list[list[torch.Tensor]] = [[self.layers[0][p](x[:, p:p + 1])] for p in range(n)]
        for row in list(self.layers)[1:]:
            done = len(history[0])
            inputs = [torch.cat([history[q][j] for j in range(done) for q in _cyclic(p, n)], dim=1)
                      for p in range(n)]
            for p in range(n):
                history[p].append(row[p](inputs[p]))
        features = torch.cat([history[p][j] for j in range(len(history[0])) for p in range(n)], dim=1)
        return self.classifier(self.fully_connected(features))


def _cyclic(p: int, n: int) -> list[int]:
    """Path order seen by path ``p``: itself first, then the others cyclically."""
    return [(p + i) % n for i in range(n)]


@register_model(HYPERDENSENET_CARD)
def hyperdensenet(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> HyperDenseNet:
    """HyperDense-Net with the paper's widths, one path per input channel (see :class:`HyperDenseNet`)."""
    return HyperDenseNet(in_channels, num_classes, spatial_dims, **kwargs)
