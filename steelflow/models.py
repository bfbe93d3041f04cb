"""The two networks on any torchvision backbone: a defect classifier and a segmenter.

An encoder is a torchvision classification network cut into its feature maps
at strides 2 to 32 (``torchvision.models.feature_extraction``): ResNet,
ResNeXt, EfficientNet, MobileNetV3, RegNet and ConvNeXt all work the same way.
Both networks take one gray channel. ``pretrained: imagenet`` loads
torchvision's weights from a given file, the torch hub cache or the network
(with a timeout), and the RGB first layer is summed into one channel.
The segmenter has a U-Net decoder (skip connections, down to ``output_stride``)
or an FPN decoder (a top-down pyramid merged at stride 4).
"""

from __future__ import annotations

import logging
import math
import socket
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor

from steelflow.errors import SteelflowError
from steelflow.io import CLASSES

log = logging.getLogger(__name__)

ENCODERS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext50_32x4d",
    "efficientnet_b0",
    "efficientnet_b2",
    "mobilenet_v3_large",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "convnext_tiny",
)
DOWNLOAD_TIMEOUT_S = 30
BATCH_NORM_MOMENTUM = 0.1  # PyTorch's default


class WeightsError(SteelflowError):
    """Pretrained weights asked for but not to be had; the message says what to do."""


def _imagenet_state(arch: str, weights_path: str | None) -> dict[str, torch.Tensor]:
    weights = models.get_model_weights(arch).DEFAULT
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


def _one_channel(net: nn.Module) -> None:
    """Replace the first 3-channel convolution by a 1-channel one, summing its weights."""
    for parent in net.modules():
        for name, conv in parent.named_children():
            if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
                gray = nn.Conv2d(
                    1,
                    conv.out_channels,
                    conv.kernel_size,
                    conv.stride,
                    conv.padding,
                    bias=conv.bias is not None,
                )
                with torch.no_grad():
                    gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
                    if conv.bias is not None:
                        gray.bias.copy_(conv.bias)
                setattr(parent, name, gray)
                return
    raise ValueError(f"{type(net).__name__} has no 3-channel convolution to adapt")


def backbone(
    arch: str, pretrained: str, weights_path: str | None, fallback_random: bool
) -> nn.Module:
    """A torchvision classification network with a one-channel input, random or ImageNet.

    Batch norm statistics follow the batches at momentum 0.1 in every family:
    MobileNetV3 ships 0.01 (for long ImageNet runs), which leaves the statistics
    of a run of a few hundred steps near their start, and the network predicts a
    constant in evaluation.
    """
    net = models.get_model(arch, weights=None)
    for layer in net.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = BATCH_NORM_MOMENTUM
    if pretrained == "imagenet":
        try:
            net.load_state_dict(_imagenet_state(arch, weights_path))
        except WeightsError as e:
            if not fallback_random:
                raise
            log.warning("%s; falling back to random weights (fallback_random: true)", e)
    _one_channel(net)
    return net


def _stages(net: nn.Module) -> list[str]:
    """The backbone's stage outputs in order, by the layout of its family."""
    if hasattr(net, "layer4"):  # ResNet, ResNeXt
        return ["relu", "layer1", "layer2", "layer3", "layer4"]
    if hasattr(net, "trunk_output"):  # RegNet
        return ["stem", *(f"trunk_output.{n}" for n, _ in net.trunk_output.named_children())]
    if hasattr(net, "features"):  # EfficientNet, MobileNetV3, ConvNeXt
        return [f"features.{i}" for i in range(len(net.features))]
    raise ValueError(f"{type(net).__name__}: no known stage layout")


class Encoder(nn.Module):
    """A backbone's feature maps, the last one at each stride (2, 4, ..., 32), finest first."""

    def __init__(self, net: nn.Module):
        super().__init__()
        probe = create_feature_extractor(net, _stages(net)).eval()
        with torch.no_grad():
            shapes = {k: v.shape for k, v in probe(torch.zeros(1, 1, 64, 64)).items()}
        last = {64 // shape[-1]: node for node, shape in shapes.items()}  # stride -> node
        self.strides = sorted(s for s in last if s >= 2)
        nodes = [last[s] for s in self.strides]
        self.channels = [shapes[n][1] for n in nodes]
        self.body = create_feature_extractor(net, nodes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x).values())


class Classifier(nn.Module):
    """An encoder and a 1x1 convolution: a map of logits, one per cell of the deepest
    features (stride 32), for 'any defect' (binary) or for each class (multilabel).

    An image's logit is its map's maximum (``image_logits``): a defect is a small
    part of a long image, and training scores each cell against the masks, so
    the network is told where the defect is, not only that there is one. Every
    cell starts at probability ``prior``, near the share of cells that hold a
    defect (7.6% on the default data).
    """

    def __init__(self, encoder: Encoder, outputs: int, prior: float = 0.05):
        super().__init__()
        self.encoder = encoder
        self.head = _head(encoder.channels[-1], outputs, prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1])


def image_logits(cells: torch.Tensor) -> torch.Tensor:
    """The classifier's (N, K) image logits from its (N, K, h, w) map of cell logits."""
    return cells.amax(dim=(-2, -1))


def _head(channels: int, outputs: int, prior: float) -> nn.Conv2d:
    """The 1x1 convolution to ``outputs`` logits per pixel, its bias set so that every
    pixel starts at probability ``prior`` (as RetinaNet does for rare positives)."""
    head = nn.Conv2d(channels, outputs, kernel_size=1)
    if prior != 0.5:
        nn.init.constant_(head.bias, -math.log((1 - prior) / prior))
    return head


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _Up(nn.Module):
    """Upsample 2x (to the skip's size), concatenate the skip if any, two 3x3 convolutions."""

    def __init__(self, channels: int, skip: int, out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(channels + skip, out), _conv(out, out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else [2 * n for n in x.shape[-2:]]
        x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x if skip is None else torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """U-Net: the encoder as the contracting path, a decoder with skip connections as
    the expanding path, one logit per class and pixel.

    The decoder has ``width * stride / 2`` channels at each stride and stops at
    ``output_stride`` (1 = the input's resolution; below the encoder's finest
    stride without skips); the logits are upsampled bilinearly to the input size.
    """

    def __init__(self, encoder: Encoder, width: int = 32, output_stride: int = 2, prior=0.5):
        super().__init__()
        self.encoder = encoder
        strides, channels = encoder.strides, encoder.channels
        ups, current = [], channels[-1]
        for stride in [s for s in (16, 8, 4, 2, 1) if s >= output_stride]:
            skip = channels[strides.index(stride)] if stride in strides else 0
            out = max(8, width * stride // 2)
            ups.append(_Up(current, skip, out))
            current = out
        self.skips = [stride in strides for stride in (16, 8, 4, 2, 1) if stride >= output_stride]
        self.ups = nn.ModuleList(ups)
        self.head = _head(current, len(CLASSES), prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = features.pop()  # stride 32
        for up, has_skip in zip(self.ups, self.skips, strict=True):
            y = up(y, features.pop() if has_skip else None)
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


class FPN(nn.Module):
    """Feature pyramid decoder: 1x1 laterals at strides 4-32, a top-down sum, each level
    smoothed and brought to stride 4, summed; logits upsampled bilinearly."""

    def __init__(self, encoder: Encoder, width: int = 32, prior: float = 0.5):
        super().__init__()
        self.encoder = encoder
        self.levels = [i for i, s in enumerate(encoder.strides) if s >= 4]
        pyramid = 4 * width
        self.laterals = nn.ModuleList(
            nn.Conv2d(encoder.channels[i], pyramid, 1) for i in self.levels
        )
        self.smooth = nn.ModuleList(_conv(pyramid, 2 * width) for _ in self.levels)
        self.head = nn.Sequential(
            _conv(2 * width, 2 * width), _head(2 * width, len(CLASSES), prior)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        laterals = [
            lateral(features[i]) for lateral, i in zip(self.laterals, self.levels, strict=True)
        ]
        for k in range(len(laterals) - 1, 0, -1):  # top-down: coarse into fine
            up = F.interpolate(laterals[k], size=laterals[k - 1].shape[-2:], mode="nearest")
            laterals[k - 1] = laterals[k - 1] + up
        size = laterals[0].shape[-2:]
        merged = sum(
            F.interpolate(smooth(p), size=size, mode="bilinear", align_corners=False)
            for smooth, p in zip(self.smooth, laterals, strict=True)
        )
        return F.interpolate(
            self.head(merged), size=x.shape[-2:], mode="bilinear", align_corners=False
        )


def _encoder(cfg: dict) -> Encoder:
    net = backbone(cfg["arch"], cfg["pretrained"], cfg["weights_path"], cfg["fallback_random"])
    return Encoder(net)


def copy_encoder(state: dict[str, torch.Tensor], net: nn.Module) -> None:
    """Load the ``encoder.`` weights of another network's ``state`` into ``net``'s encoder."""
    prefix = "encoder."
    encoder = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    net.encoder.load_state_dict(encoder)


def build_classifier(cfg: dict) -> Classifier:
    """The classifier of config section ``classifier``."""
    return Classifier(_encoder(cfg), 1 if cfg["head"] == "binary" else len(CLASSES))


def build_unet(cfg: dict) -> nn.Module:
    """The segmenter of config section ``unet``: U-Net or FPN decoder on the encoder."""
    if cfg["decoder"] == "fpn":
        return FPN(_encoder(cfg), cfg["decoder_width"], cfg["head_prior"])
    return UNet(_encoder(cfg), cfg["decoder_width"], cfg["output_stride"], cfg["head_prior"])
