"""The two networks: a ResNet defect classifier and a U-Net with a ResNet encoder.

Both take one gray channel. ``pretrained: imagenet`` loads torchvision's
weights from a given file, the torch hub cache or the network (with a timeout),
and their RGB first layer is summed into one channel.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

log = logging.getLogger(__name__)

ARCHS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2),
}
DOWNLOAD_TIMEOUT_S = 30


class WeightsError(ValueError):
    """Pretrained weights asked for but not to be had; the message says what to do."""


def _imagenet_state(arch: str, weights_path: str | None) -> dict[str, torch.Tensor]:
    weights = ARCHS[arch][1]
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsError(f"weights_path {path} does not exist")
        return torch.load(path, map_location="cpu", weights_only=True)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # never hang on a dead network
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:
        raise WeightsError(
            f"ImageNet weights for {arch} are not in the torch hub cache ({cached}) and could "
            f"not be downloaded ({type(e).__name__}: {e}); set weights_path to a local copy, "
            "or pretrained: none, or fallback_random: true"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def resnet(
    arch: str, pretrained: str, weights_path: str | None, fallback_random: bool
) -> nn.Module:
    """A torchvision ResNet with a one-channel first layer, random or ImageNet weights."""
    net = ARCHS[arch][0](weights=None)
    if pretrained == "imagenet":
        try:
            net.load_state_dict(_imagenet_state(arch, weights_path))
        except WeightsError as e:
            if not fallback_random:
                raise
            log.warning("%s; falling back to random weights (fallback_random: true)", e)
    rgb = net.conv1.weight.detach()
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        net.conv1.weight.copy_(rgb.sum(dim=1, keepdim=True))
    return net


class Classifier(nn.Module):
    """ResNet with one logit (defect or not) or four (one per class).

    Features are max-pooled, not averaged: a defect is a small part of a long
    image, and averaging over the whole strip washes it out (a from-scratch
    average-pooled ResNet18 stayed at chance in the CPU budget here).
    """

    def __init__(self, backbone: nn.Module, outputs: int):
        super().__init__()
        backbone.avgpool = nn.AdaptiveMaxPool2d(1)
        backbone.fc = nn.Linear(backbone.fc.in_features, outputs)
        self.net = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Up(nn.Module):
    """Upsample to the skip's size, concatenate, two 3x3 convolutions."""

    def __init__(self, channels: int, skip: int, out: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels + skip, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
            nn.Conv2d(out, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.conv(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """U-Net: the ResNet's stages as the contracting path, a decoder with skip
    connections as the expanding path, four logits per pixel (one per class).

    The decoder stops at half resolution and the logits are upsampled
    bilinearly: a full-resolution block cost a third of the training time on
    CPU for no visible gain on masks drawn as loose polygons. Any input size
    works; the output has the input's size.
    """

    def __init__(self, backbone: nn.Module, classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu)  # 1/2
        self.pool = backbone.maxpool
        self.stages = nn.ModuleList(
            [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
        )  # 1/4 ... 1/32
        widths = [64] + [_out_channels(stage) for stage in self.stages]
        decoder = [256, 128, 64, 32]
        ins = [widths[4]] + decoder[:-1]
        skips = widths[3::-1]  # 1/16, 1/8, 1/4, 1/2
        self.ups = nn.ModuleList(_Up(c, s, o) for c, s, o in zip(ins, skips, decoder, strict=True))
        self.head = nn.Conv2d(decoder[-1], classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        y = self.pool(features[0])
        for stage in self.stages:
            y = stage(y)
            features.append(y)
        y = features.pop()  # 1/32
        for up in self.ups:
            skip = features.pop()
            y = up(y, skip)
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _out_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


def build_classifier(cfg: dict) -> Classifier:
    """The classifier of config section ``classifier``."""
    outputs = 1 if cfg["head"] == "binary" else 4
    backbone = resnet(cfg["arch"], cfg["pretrained"], cfg["weights_path"], cfg["fallback_random"])
    return Classifier(backbone, outputs)


def build_unet(cfg: dict) -> UNet:
    """The U-Net of config section ``unet``."""
    return UNet(resnet(cfg["arch"], cfg["pretrained"], cfg["weights_path"], cfg["fallback_random"]))
