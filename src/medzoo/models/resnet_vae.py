"""ResNet3D-VAE: an encoder-decoder with a variational auto-encoder branch as a regulariser.

Myronenko, "3D MRI brain tumor segmentation using autoencoder regularization", BrainLes (MICCAI BraTS)
2018, LNCS 11384 (arXiv:1810.11654).

Encoder: a 3x3x3 conv, then stages of pre-activation residual blocks (GroupNorm, ReLU, 3x3x3 conv, twice)
with 1, 2, 2, 4 blocks, separated by stride-2 convs that double the width (bottleneck at 1/8 resolution).
Decoder: per level a 1x1x1 conv halving the width, 2x (bi/tri)linear upsampling, addition of the encoder
features, one residual block; a 1x1x1 conv gives the logits.

VAE branch (training only): from the bottleneck, GroupNorm, ReLU and a stride-2 3x3x3 conv to
``vae_channels`` maps, then 1x1x1 convs give the mean and log-variance of a latent *grid* (at 1/16
resolution), a sample is drawn, mapped back by a 1x1x1 conv, upsampled to the exact bottleneck size and
decoded like the segmentation decoder (without skips) into a reconstruction of the input. The paper uses a
dense layer to a 256-d vector instead, which ties the network to one input size; the convolutional latent
grid works for every valid input size (the grid just has more cells for larger inputs).

The regulariser ``0.1 * L2 + 0.1 * KL`` (weights of the paper) is computed during every training forward:
``L2`` is the mean squared error between the reconstruction and the input, ``KL`` the mean over latent
elements of ``mu^2 + sigma^2 - log(sigma^2) - 1`` (the paper's formula; normalised by the number of latent
elements rather than of image voxels, so its weight does not depend on the patch size). Read it with
:meth:`ResNet3dVAE.auxiliary_loss` after the forward and add it to the segmentation loss. In eval mode the
branch is not run and ``auxiliary_loss()`` returns None.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from medzoo.models.layers.factories import FusedSequential, make_conv, make_dropout, make_norm
from medzoo.models.registry import ModelCard, register_model

RESNET_VAE_CARD = ModelCard(
    name="resnet3d_vae",
    spatial_dims=(2, 3),
    paper="Myronenko, BrainLes / MICCAI BraTS 2018 (ResNet3D-VAE, autoencoder regularization)",
    size_divisor=8,
    min_size=8,
    typical_patch=(64, 64, 64),
    tiny_kwargs={"init_filters": 4, "blocks_down": (1, 1, 1, 1), "vae_channels": 4, "latent_channels": 2},
    channels_last=True,  # measured gain: docs/benchmarks.md, "Channels-last per model"
    export_note="the VAE branch is training-only; the eval graph (conv / GroupNorm / linear upsampling) "
                "exports to ONNX (opset 17)",
)

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


class _ResBlock(nn.Module):
    """(GroupNorm -> ReLU -> 3x3x3 conv) x 2 + identity. Shapes: (B, C, *S) -> (B, C, *S)."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.body = FusedSequential(
            make_norm("group", spatial_dims, channels), nn.ReLU(),
            make_conv(spatial_dims, channels, channels, 3, bias=False),
            make_norm("group", spatial_dims, channels), nn.ReLU(),
            make_conv(spatial_dims, channels, channels, 3, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class _UpLevel(nn.Module):
    """1x1x1 conv halving the width, 2x linear upsampling to ``size``, optional skip addition, one block."""

    def __init__(self, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        self.reduce = make_conv(spatial_dims, in_channels, in_channels // 2, 1, bias=False)
        self.block = _ResBlock(spatial_dims, in_channels // 2)
        self.mode = _LINEAR[spatial_dims]

    def forward(self, x: torch.Tensor, size: tuple[int, ...], skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=size, mode=self.mode, align_corners=False)
        return self.block(x if skip is None else x + skip)


class ResNet3dVAE(nn.Module):
    """Myronenko's ResNet3D-VAE (BraTS 2018) with a size-independent VAE branch.

    Every spatial size must be a multiple of 8 and at least 8 (three stride-2 levels; 2^(len(blocks_down)-1)
    in general); other sizes raise
    :class:`~medzoo.errors.InputSizeError` naming the nearest valid size.

    Default widths: ``init_filters=16`` (the paper uses 32; pass ``init_filters=32`` for the paper's
    network) giving 16, 32, 64, 128 channels; blocks per level 1, 2, 2, 4 (paper); VAE with 16 maps at
    1/16 resolution and a latent grid of 16 channels (about 5.1M parameters for 1 channel, 3 classes, of which 0.36M in
    the training-only VAE branch).

    Args:
        in_channels: input modalities (>= 1); the VAE reconstructs all of them.
        num_classes: output classes (background included).
        spatial_dims: 2 or 3.
        init_filters: width of the first level; doubles per level.
        blocks_down: residual blocks per encoder level (its length sets the depth).
        vae_channels: maps of the VAE's stride-2 conv (16 in the paper).
        latent_channels: channels of the latent grid (mean and log-variance each).
        dropout: spatial dropout after the first conv (paper: 0.2).
        l2_weight: weight of the reconstruction loss (paper: 0.1).
        kl_weight: weight of the KL divergence (paper: 0.1).

    Shapes: (B, in_channels, *S) -> (B, num_classes, *S) logits.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3, init_filters: int = 16,
                 blocks_down: tuple[int, ...] = (1, 2, 2, 4), vae_channels: int = 16, latent_channels: int = 16,
                 dropout: float = 0.0, l2_weight: float = 0.1, kl_weight: float = 0.1) -> None:
        super().__init__()
        d, f = spatial_dims, init_filters
        self.l2_weight, self.kl_weight = l2_weight, kl_weight
        divisor = 2 ** (len(blocks_down) - 1)
        self._card = dataclasses.replace(RESNET_VAE_CARD, size_divisor=divisor, min_size=divisor)
        self.stem = nn.Sequential(make_conv(d, in_channels, f, 3, bias=False), make_dropout(d, dropout))
        self.down = nn.ModuleList()
        ch = f
        for i, n in enumerate(blocks_down):
            pre: list[nn.Module] = [] if i == 0 else [make_conv(d, ch // 2, ch, 3, stride=2, bias=False)]
            self.down.append(nn.Sequential(*pre, *[_ResBlock(d, ch) for _ in range(n)]))
            if i < len(blocks_down) - 1:
                ch *= 2
        bottleneck = ch
        self.up = nn.ModuleList(_UpLevel(d, bottleneck // 2**i) for i in range(len(blocks_down) - 1))
        self.head = FusedSequential(make_norm("group", d, f), nn.ReLU(), make_conv(d, f, num_classes, 1))
        # VAE branch
        self.vae_down = FusedSequential(
            make_norm("group", d, bottleneck), nn.ReLU(),
            make_conv(d, bottleneck, vae_channels, 3, stride=2),
        )
        self.vae_mu = make_conv(d, vae_channels, latent_channels, 1)
        self.vae_logvar = make_conv(d, vae_channels, latent_channels, 1)
        self.vae_expand = nn.Sequential(
            make_conv(d, latent_channels, vae_channels, 1), nn.ReLU(),
        )
        self.vae_project = make_conv(d, vae_channels, bottleneck, 1)
        self.vae_up = nn.ModuleList(_UpLevel(d, bottleneck // 2**i) for i in range(len(blocks_down) - 1))
        self.vae_out = make_conv(d, f, in_channels, 1)
        self.mode = _LINEAR[d]
        self._aux: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S) -> (B, num_classes, *S). In train mode also computes the VAE regulariser."""
        self._card.check_input(tuple(x.shape[2:]))
        feats = []
        out = self.stem(x)
        for stage in self.down:
            out = stage(out)
            feats.append(out)
        bottleneck = feats[-1]
        out = bottleneck
        for level, skip in zip(self.up, reversed(feats[:-1])):
            out = level(out, tuple(skip.shape[2:]), skip)
        logits = self.head(out)
        self._aux = self._vae_regulariser(x, bottleneck, [f.shape[2:] for f in feats]) if self.training else None
        return logits

    def _vae_regulariser(self, x: torch.Tensor, bottleneck: torch.Tensor, sizes: list) -> torch.Tensor:
        """Weighted ``l2_weight * MSE(reconstruction, x) + kl_weight * KL`` as a scalar tensor."""
        h = self.vae_down(bottleneck)
        mu, logvar = self.vae_mu(h), self.vae_logvar(h).clamp(-10.0, 10.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        r = F.interpolate(self.vae_expand(z), size=tuple(bottleneck.shape[2:]), mode=self.mode,
                          align_corners=False)
        r = self.vae_project(r)
        for level, size in zip(self.vae_up, reversed(sizes[:-1])):
            r = level(r, tuple(size))
        recon = self.vae_out(r)
        l2 = F.mse_loss(recon, x)
        kl = (mu.pow(2) + logvar.exp() - logvar - 1.0).mean()
        return self.l2_weight * l2 + self.kl_weight * kl

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The weighted VAE regulariser of the last training forward (scalar tensor), or None in eval mode."""
        return self._aux if self.training else None


@register_model(RESNET_VAE_CARD)
def resnet3d_vae(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> ResNet3dVAE:
    """ResNet3D-VAE (see :class:`ResNet3dVAE`); add ``model.auxiliary_loss()`` to the loss when training."""
    return ResNet3dVAE(in_channels, num_classes, spatial_dims, **kwargs)
