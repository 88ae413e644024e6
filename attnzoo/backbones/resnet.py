"""ResNets: the CIFAR family (resnet20/32/56/110) and resnet18/34/50 with a CIFAR or ImageNet stem.

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
https://arxiv.org/abs/1512.03385

    y = relu(F(x) + shortcut(x))       F: two 3x3 convs (BasicBlock) or 1x1-3x3-1x1 (Bottleneck)

CIFAR networks (section 4.2): a 3x3 conv with 16 filters, then three stages of n BasicBlocks on
32/16/8-pixel maps with 16/32/64 filters (6n + 2 layers: n = 3, 5, 9, 18 for resnet20/32/56/110),
global average pooling and a linear layer. Downsampling is a stride-2 first conv of stages 2 and 3.
Shortcuts where the shape changes: option A (default, as the paper's CIFAR experiments) subsamples
with stride 2 and pads the new channels with zeros, parameter-free; ``shortcut="B"`` uses a 1x1
conv + BN projection. Parameter counts: 0.27M / 0.46M / 0.85M / 1.7M, as the paper's Table 6.

resnet18/34/50 follow torchvision's layout, names and initialisation exactly (their parameter
count equals torchvision's for the same ``num_classes``), with two stems: ``stem="imagenet"``
(7x7 stride 2 conv + 3x3 stride 2 max-pool, for 224-pixel inputs) or ``stem="cifar"`` (3x3 stride 1
conv, no max-pool, for 32-pixel inputs; the usual CIFAR adaptation, not from the paper).

NOTE: Bottleneck strides in its 3x3 conv (torchvision's "ResNet v1.5"), not in its first 1x1 conv
as the paper's ImageNet model does. Convolutions are initialised with Kaiming normal (fan_out, relu)
as torchvision does, for the CIFAR networks too (the paper cites He et al. 2015's fan_in form).
Option A zero-pads the added channels after the existing ones (the paper does not say where).
``zero_init_residual=True`` zeroes the last BN's gamma of every block, so each block starts as the
identity (Goyal et al. 2017, https://arxiv.org/abs/1706.02677).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register_backbone

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ShortcutA",
    "CifarResNet",
    "ResNet",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "resnet18",
    "resnet34",
    "resnet50",
]

_PAPER = "Deep Residual Learning for Image Recognition"
_LINK = "https://arxiv.org/abs/1512.03385"


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ShortcutA(nn.Module):
    """Option A shortcut: stride-s subsampling, then zero channels appended; no parameters.

    Output spatial size is ceil(H / s), the same as a 3x3 conv with padding 1 and stride s.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"option A shortcut cannot reduce channels ({in_planes} -> {out_planes})")
        self.in_planes, self.out_planes, self.stride = in_planes, out_planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, ceil(H/s), ceil(W/s))
        return F.pad(x, (0, 0, 0, 0, 0, self.out_planes - self.in_planes))  # (B, C_out, H', W')

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.out_planes}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; torchvision's attribute names and forward order."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4; torchvision's names and order."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """torchvision's ResNet initialisation (Linear layers keep PyTorch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


class _ResNetBase(nn.Module):
    """Shared forward: stem, stages, global average pool, linear."""

    default_attn_position = "standard"
    stage_names: list[str]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__} expects (B, {self.in_chans}, H, W) input, got {tuple(x.shape)}"
            )
        x = self._stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(feats), 1)  # (B, C)
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CifarResNet(_ResNetBase):
    """He et al.'s CIFAR ResNet of depth 6n + 2: stages of 16/32/64 channels, BasicBlocks."""

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: str = "A",
        zero_init_residual: bool = False,
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(
                f"shortcut must be 'A' (zero-padding, parameter-free) or 'B' (1x1 projection), got {shortcut!r}"
            )
        n = (depth - 2) // 6
        self.depth, self.shortcut = depth, shortcut
        self.num_classes, self.in_chans = num_classes, in_chans
        self.default_input_size = (in_chans, 32, 32)
        self.inplanes = widths[0]
        self.conv1 = conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], n, stride=1)
        self.layer2 = self._make_layer(widths[1], n, stride=2)
        self.layer3 = self._make_layer(widths[2], n, stride=2)
        self.stage_names = ["layer1", "layer2", "layer3"]
        self.num_features = widths[2]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        _init_weights(self, zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            if self.shortcut == "A":
                downsample = ShortcutA(self.inplanes, planes, stride)
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


class ResNet(_ResNetBase):
    """torchvision's ResNet (same names, layout, init) with a choice of stem."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(
                f"stem must be 'imagenet' (7x7 stride 2 + max-pool, 224-pixel inputs) or "
                f"'cifar' (3x3 stride 1, no max-pool, 32-pixel inputs), got {stem!r}"
            )
        self.stem_type = stem
        self.num_classes, self.in_chans = num_classes, in_chans
        self.default_input_size = (in_chans, 224, 224) if stem == "imagenet" else (in_chans, 32, 32)
        self.inplanes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(in_chans, 64)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.stage_names = ["layer1", "layer2", "layer3", "layer4"]
        self.num_features = 512 * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes)
        _init_weights(self, zero_init_residual)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


def _cifar_meta(n: int) -> dict:
    return dict(family="resnet", paper=_PAPER, year=2016, link=_LINK, default_position="standard",
                input_size=(3, 32, 32), depth=6 * n + 2)


@register_backbone("resnet20", **_cifar_meta(3))
def resnet20(
    num_classes: int = 10, in_chans: int = 3, shortcut: str = "A", zero_init_residual: bool = False,
) -> CifarResNet:
    """ResNet-20 for 32-pixel inputs (n = 3, 0.27M parameters)."""
    return CifarResNet(20, num_classes, in_chans, shortcut, zero_init_residual)


@register_backbone("resnet32", **_cifar_meta(5))
def resnet32(
    num_classes: int = 10, in_chans: int = 3, shortcut: str = "A", zero_init_residual: bool = False,
) -> CifarResNet:
    """ResNet-32 for 32-pixel inputs (n = 5, 0.46M parameters)."""
    return CifarResNet(32, num_classes, in_chans, shortcut, zero_init_residual)


@register_backbone("resnet56", **_cifar_meta(9))
def resnet56(
    num_classes: int = 10, in_chans: int = 3, shortcut: str = "A", zero_init_residual: bool = False,
) -> CifarResNet:
    """ResNet-56 for 32-pixel inputs (n = 9, 0.85M parameters)."""
    return CifarResNet(56, num_classes, in_chans, shortcut, zero_init_residual)


@register_backbone("resnet110", **_cifar_meta(18))
def resnet110(
    num_classes: int = 10, in_chans: int = 3, shortcut: str = "A", zero_init_residual: bool = False,
) -> CifarResNet:
    """ResNet-110 for 32-pixel inputs (n = 18, 1.7M parameters)."""
    return CifarResNet(110, num_classes, in_chans, shortcut, zero_init_residual)


def _imagenet_meta(depth: int) -> dict:
    # input_size is the default stem's (imagenet); stem="cifar" models report (in_chans, 32, 32)
    # in their default_input_size attribute.
    return dict(family="resnet", paper=_PAPER, year=2016, link=_LINK, default_position="standard",
                input_size=(3, 224, 224), depth=depth)


@register_backbone("resnet18", **_imagenet_meta(18))
def resnet18(
    num_classes: int = 1000, in_chans: int = 3, stem: str = "imagenet", zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); 11.69M parameters at 1000 classes."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_chans, stem, zero_init_residual)


@register_backbone("resnet34", **_imagenet_meta(34))
def resnet34(
    num_classes: int = 1000, in_chans: int = 3, stem: str = "imagenet", zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]); 21.80M parameters at 1000 classes."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_chans, stem, zero_init_residual)


@register_backbone("resnet50", **_imagenet_meta(50))
def resnet50(
    num_classes: int = 1000, in_chans: int = 3, stem: str = "imagenet", zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); 25.56M parameters at 1000 classes."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_chans, stem, zero_init_residual)
