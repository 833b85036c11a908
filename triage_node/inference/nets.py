"""Network definitions: 2-D slice classifiers from ``monai.networks.nets`` and the crop-grid segmenter.

The crop-grid segmenter follows Kalmutskiy & Berikov (2021): an encoder-decoder with skip connections whose deeper
convolutions are dilated, and a linear + sigmoid classifier on the encoder output that gates the segmentation.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import DenseNet121, ResNet
from torch import nn

ICH_ARCHITECTURES = ("resnet18", "resnet50", "densenet121")


def build_classifier(arch: str, in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """A 2-D multi-label classifier returning logits (N, num_classes).

    ``arch``: ``resnet18`` | ``resnet50`` | ``densenet121``. ``width`` scales the ResNet channel counts (0.5 halves
    them: a quarter of the compute, used by the shipped ich model to reach CPU speed).
    """
    if arch == "resnet18":
        return ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=in_channels,
                      conv1_t_size=7, conv1_t_stride=2, widen_factor=width, num_classes=num_classes)
    if arch == "resnet50":
        return ResNet("bottleneck", [3, 4, 6, 3], [64, 128, 256, 512], spatial_dims=2, n_input_channels=in_channels,
                      conv1_t_size=7, conv1_t_stride=2, widen_factor=width, num_classes=num_classes)
    if arch == "densenet121":
        return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)
    raise ValueError(f"architecture must be one of {ICH_ARCHITECTURES}, got {arch!r}")


def gradcam_layer(arch: str) -> str:
    """The layer whose activations Grad-CAM weighs, per architecture (the last convolutional stage)."""
    return {"resnet18": "layer4", "resnet50": "layer4", "densenet121": "features.denseblock4"}[arch]


def _conv(cin: int, cout: int, dilation: int = 1) -> nn.Module:
    return Convolution(2, cin, cout, kernel_size=3, dilation=dilation, padding=dilation, act="RELU", norm="BATCH")


class CropGridSegNet(nn.Module):
    """Encoder-decoder on one crop with a gating classifier.

    Input (N, C, H, W) with H and W divisible by 4. Returns ``(seg_logits (N, 1, H, W), cls_logits (N,))``.
    Dilations grow with depth (1, 2, 4) so that a 64-pixel crop sees most of its area from the bottleneck.
    """

    def __init__(self, in_channels: int = 3, base: int = 16) -> None:
        super().__init__()
        b = base
        self.enc1 = nn.Sequential(_conv(in_channels, b), _conv(b, b))
        self.enc2 = nn.Sequential(_conv(b, 2 * b), _conv(2 * b, 2 * b, dilation=2))
        self.enc3 = nn.Sequential(_conv(2 * b, 4 * b, dilation=2), _conv(4 * b, 4 * b, dilation=4))
        self.pool = nn.MaxPool2d(2)
        self.classifier = nn.Linear(8 * b, 1)
        self.up2 = nn.ConvTranspose2d(4 * b, 2 * b, 2, stride=2)
        self.dec2 = nn.Sequential(_conv(4 * b, 2 * b), _conv(2 * b, 2 * b))
        self.up1 = nn.ConvTranspose2d(2 * b, b, 2, stride=2)
        self.dec1 = nn.Sequential(_conv(2 * b, b), _conv(b, b))
        self.head = nn.Conv2d(b, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s1 = self.enc1(x)
        s2 = self.enc2(self.pool(s1))
        bott = self.enc3(self.pool(s2))
        pooled = torch.cat([bott.mean(dim=(2, 3)), bott.amax(dim=(2, 3))], dim=1)
        cls = self.classifier(pooled).squeeze(1)
        d2 = self.dec2(torch.cat([self.up2(bott), s2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), s1], dim=1))
        return self.head(d1), cls


def build_segmenter(in_channels: int = 3, base: int = 16, **_: Any) -> CropGridSegNet:
    return CropGridSegNet(in_channels=in_channels, base=base)
