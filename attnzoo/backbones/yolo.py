"""YOLO-like classification backbones after YOLOv8 and YOLO11: Conv-BN-SiLU, C2f / C3k2, SPPF.

References (the models have no paper of their own; the architecture is defined by Ultralytics'
model configurations and documentation):
  * G. Jocher, A. Chaurasia, J. Qiu, "Ultralytics YOLOv8", 2023. https://docs.ultralytics.com/models/yolov8/
  * G. Jocher, J. Qiu, "Ultralytics YOLO11", 2024. https://docs.ultralytics.com/models/yolo11/
    (described in R. Khanam, M. Hussain, "YOLOv11: An Overview of the Key Architectural
    Enhancements", 2024, https://arxiv.org/abs/2410.17725)
  * C2f / C3 follow CSPNet (C.-Y. Wang et al., 2019, https://arxiv.org/abs/1911.11929); SPPF is the
    sequential form of SPP (K. He et al., 2014, https://arxiv.org/abs/1406.4729) from YOLOv5.

Blocks (ConvBnAct = Conv2d(no bias) -> BN(eps 1e-3, momentum 0.03) -> SiLU):
    YoloBottleneck  y = x + cv2(cv1(x))  (shortcut only when ``add``: asked for and c_in == c_out)
    C2f             a, b = split(cv1(x)); y_i = m_i(y_{i-1}) with y_0 = b; out = cv2(cat(a, b, y_1..y_n))
    C3              out = cv3(cat(m(cv1(x)), cv2(x)))            (C3k: C3 with k x k bottlenecks)
    C3k2            C2f whose m_i are C3k (c3k=True) or YoloBottlenecks with hidden width c/2
    SPPF            y_0 = cv1(x); y_i = maxpool5(y_{i-1}); out = cv2(cat(y_0..y_3))

Network: ``stem`` (3x3 s2, P1/2), ``stage1..stage4`` (each a 3x3 s2 ConvBnAct then a C2f | C3k2;
P2/4 .. P5/32), ``sppf``, ``head``. The base widths and repeats are the YAML backbones', scaled with
(depth, width, max_channels): channels = ceil(min(c, max_channels) * width / 8) * 8, repeats =
max(round(n * depth), 1) for n > 1.

    YOLOv8 (C2f, shortcut):  64 | 128 (x3) | 256 (x6) | 512 (x6) | 1024 (x3) | SPPF 1024
        n (0.33, 0.25, 1024)   s (0.33, 0.50, 1024)   m (0.67, 0.75, 768)
    YOLO11 (C3k2):  64 | 128 -> 256 (x2, e=0.25) | 256 -> 512 (x2, e=0.25) | 512 (x2, C3k) |
                    1024 (x2, C3k) | SPPF 1024
        n (0.50, 0.25, 1024)   s (0.50, 0.50, 1024)   m (0.50, 1.00, 512)
    YOLO11 uses plain bottlenecks (c3k=False) in stages 1-2 and C3k in stages 3-4 at n and s; at m
    every C3k2 uses C3k, as Ultralytics' model parser forces for the m/l/x scales.

Classification head, as Ultralytics' ``Classify``: ConvBnAct 1x1 to 1280 channels, global average
pool, dropout (``drop_rate``, default 0 as Ultralytics), linear. ``forward_pyramid(x)`` returns
{8: P3, 16: P4, 32: P5} (P5 after SPPF) for detectors built on the backbone.

NOTE: the scales are the detection models' (yolov8.yaml / yolo11.yaml, whose backbones end with
SPPF and whose P3-P5 feed a detector), not the -cls models' (yolov8-cls.yaml has no SPPF and
max_channels 1024 at m). YOLO11's C2PSA (partial self-attention after SPPF) is left out: attention
is what this library inserts and ablates, so the baseline has none. Hence parameter counts differ
from the published -cls models by exactly SPPF (v8) or SPPF - C2PSA (YOLO11).
NOTE: ``forward_features`` returns the SPPF output (P5); the head's 1x1 conv to 1280 channels is
part of ``forward_head``, as in Ultralytics where it belongs to ``Classify``.
NOTE: Ultralytics returns softmax probabilities in eval mode; these models always return logits.
Convolutions keep PyTorch's default initialisation, as Ultralytics does.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import register_backbone

__all__ = [
    "ConvBnAct",
    "YoloBottleneck",
    "C2f",
    "C3",
    "C3k",
    "C3k2",
    "SPPF",
    "ClassifyHead",
    "YoloClassifier",
    "YOLOV8_SCALES",
    "YOLO11_SCALES",
    "yolov8n",
    "yolov8s",
    "yolov8m",
    "yolo11n",
    "yolo11s",
    "yolo11m",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.03

# scale -> (depth multiple, width multiple, max channels), from yolov8.yaml and yolo11.yaml
YOLOV8_SCALES = {"n": (0.33, 0.25, 1024), "s": (0.33, 0.50, 1024), "m": (0.67, 0.75, 768)}
YOLO11_SCALES = {"n": (0.50, 0.25, 1024), "s": (0.50, 0.50, 1024), "m": (0.50, 1.00, 512)}


class ConvBnAct(nn.Module):
    """Conv2d (no bias, 'same' padding for odd k) -> BatchNorm2d -> SiLU (or identity)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, padding=k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class YoloBottleneck(nn.Module):
    """Two convs (kernels k1, k2) with hidden width int(c2 * e); residual when ``add``."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, k: tuple[int, int] = (3, 3), e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = ConvBnAct(c1, c_, k[0])
        self.cv2 = ConvBnAct(c_, c2, k[1])
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two convs and every bottleneck's output concatenated (YOLOv8)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)  # hidden width of each branch
        self.cv1 = ConvBnAct(c1, 2 * self.c, 1)
        self.cv2 = ConvBnAct((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(YoloBottleneck(self.c, self.c, shortcut, k=(3, 3), e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))  # 2 x (B, c, H, W)
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))  # (B, (2 + n) * c, H, W) -> (B, c2, H, W)


class C3(nn.Module):
    """CSP bottleneck with three convs: a bottleneck path and a 1x1 bypass, concatenated."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = ConvBnAct(c1, c_, 1)
        self.cv2 = ConvBnAct(c1, c_, 1)
        self.cv3 = ConvBnAct(2 * c_, c2, 1)
        self.m = nn.Sequential(*(YoloBottleneck(c_, c_, shortcut, k=(1, 3), e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))  # (B, 2 c_, H, W) -> (B, c2, H, W)


class C3k(C3):
    """C3 whose bottlenecks use two k x k convs (YOLO11)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5, k: int = 3) -> None:
        super().__init__(c1, c2, n, shortcut, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(YoloBottleneck(c_, c_, shortcut, k=(k, k), e=1.0) for _ in range(n)))


class C3k2(C2f):
    """C2f whose inner blocks are C3k (``c3k=True``, two bottlenecks each) or bottlenecks of
    hidden width c/2 (YOLO11)."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, shortcut: bool = True) -> None:
        super().__init__(c1, c2, n, shortcut, e)
        self.c3k = c3k
        self.m = nn.ModuleList(
            C3k(self.c, self.c, 2, shortcut) if c3k else YoloBottleneck(self.c, self.c, shortcut)
            for _ in range(n)
        )


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools (receptive fields 5, 9, 13)."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = ConvBnAct(c1, c_, 1)
        self.cv2 = ConvBnAct(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))  # (B, 4 c_, H, W) -> (B, c2, H, W)


class ClassifyHead(nn.Module):
    """Ultralytics' Classify: 1x1 ConvBnAct to ``hidden`` channels, average pool, dropout, linear."""

    def __init__(self, c1: int, num_classes: int, hidden: int = 1280, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.conv = ConvBnAct(c1, hidden, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=drop_rate)
        self.linear = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x)).flatten(1)  # (B, hidden)
        return self.linear(self.dropout(x))


def _width(c: int, width: float, max_channels: int) -> int:
    return int(math.ceil(min(c, max_channels) * width / 8) * 8)


def _depth(n: int, depth: float) -> int:
    return max(round(n * depth), 1) if n > 1 else n


class YoloClassifier(nn.Module):
    """YOLOv8 / YOLO11 backbone (stem, four stages, SPPF) with a classification head."""

    default_attn_position = "block"

    def __init__(
        self,
        version: str = "yolov8",
        scale: str = "n",
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        head_channels: int = 1280,
    ) -> None:
        super().__init__()
        scales = {"yolov8": YOLOV8_SCALES, "yolo11": YOLO11_SCALES}
        if version not in scales:
            raise ValueError(f"version must be 'yolov8' or 'yolo11', got {version!r}")
        if scale not in scales[version]:
            raise ValueError(f"scale must be one of {sorted(scales[version])}, got {scale!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        depth, width, max_channels = scales[version][scale]
        self.version, self.scale = version, scale
        self.num_classes, self.in_chans = num_classes, in_chans
        self.default_input_size = (in_chans, 224, 224)

        def ch(c: int) -> int:
            return _width(c, width, max_channels)

        c0 = ch(64)
        self.stem = ConvBnAct(in_chans, c0, 3, 2)  # P1/2
        if version == "yolov8":
            # (downsampling conv width, block output width, repeats)
            plan = [(128, 128, 3), (256, 256, 6), (512, 512, 6), (1024, 1024, 3)]
        else:
            plan = [(128, 256, 2), (256, 512, 2), (512, 512, 2), (1024, 1024, 2)]
        c_in = c0
        self.feature_info = []
        for i, (c_down, c_out, n) in enumerate(plan, start=1):
            cd, co, reps = ch(c_down), ch(c_out), _depth(n, depth)
            if version == "yolov8":
                block: nn.Module = C2f(cd, co, reps, shortcut=True)
            else:
                c3k = i >= 3 or scale in ("m", "l", "x")
                block = C3k2(cd, co, reps, c3k=c3k, e=0.25 if i <= 2 else 0.5)
            setattr(self, f"stage{i}", nn.Sequential(ConvBnAct(c_in, cd, 3, 2), block))
            self.feature_info.append(dict(num_chs=co, reduction=2 ** (i + 1), module=f"stage{i}"))
            c_in = co
        self.stage_names = ["stage1", "stage2", "stage3", "stage4"]
        self.sppf = SPPF(c_in, c_in, 5)
        self.feature_info[-1] = dict(num_chs=c_in, reduction=32, module="sppf")
        self.num_features = c_in
        self.head = ClassifyHead(c_in, num_classes, head_channels, drop_rate)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{self.version}{self.scale} expects (B, {self.in_chans}, H, W) input, got {tuple(x.shape)}"
            )

    def forward_pyramid(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Feature maps by stride: {8: P3 (stage2), 16: P4 (stage3), 32: P5 (SPPF)}."""
        self._check(x)
        x = self.stage2(self.stage1(self.stem(x)))
        p3 = x
        p4 = self.stage3(p3)
        p5 = self.sppf(self.stage4(p4))
        return {8: p3, 16: p4, 32: p5}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.sppf(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _meta(version: str) -> dict:
    if version == "yolov8":
        return dict(family="yolo", paper="Ultralytics YOLOv8", year=2023,
                    link="https://docs.ultralytics.com/models/yolov8/", default_position="block",
                    input_size=(3, 224, 224))
    return dict(family="yolo", paper="Ultralytics YOLO11", year=2024,
                link="https://docs.ultralytics.com/models/yolo11/", default_position="block",
                input_size=(3, 224, 224))


@register_backbone("yolov8n", **_meta("yolov8"))
def yolov8n(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, head_channels: int = 1280,
) -> YoloClassifier:
    """YOLOv8-n backbone (depth 0.33, width 0.25) with a classification head."""
    return YoloClassifier("yolov8", "n", num_classes, in_chans, drop_rate, head_channels)


@register_backbone("yolov8s", **_meta("yolov8"))
def yolov8s(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, head_channels: int = 1280,
) -> YoloClassifier:
    """YOLOv8-s backbone (depth 0.33, width 0.50) with a classification head."""
    return YoloClassifier("yolov8", "s", num_classes, in_chans, drop_rate, head_channels)


@register_backbone("yolov8m", **_meta("yolov8"))
def yolov8m(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, head_channels: int = 1280,
) -> YoloClassifier:
    """YOLOv8-m backbone (depth 0.67, width 0.75, at most 768 channels) with a classification head."""
    return YoloClassifier("yolov8", "m", num_classes, in_chans, drop_rate, head_channels)


@register_backbone("yolo11n", **_meta("yolo11"))
def yolo11n(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, head_channels: int = 1280,
) -> YoloClassifier:
    """YOLO11-n backbone (depth 0.50, width 0.25) with a classification head."""
    return YoloClassifier("yolo11", "n", num_classes, in_chans, drop_rate, head_channels)


@register_backbone("yolo11s", **_meta("yolo11"))
def yolo11s(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, head_channels: int = 1280,
) -> YoloClassifier:
    """YOLO11-s backbone (depth 0.50, width 0.50) with a classification head."""
    return YoloClassifier("yolo11", "s", num_classes, in_chans, drop_rate, head_channels)


@register_backbone("yolo11m", **_meta("yolo11"))
def yolo11m(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, head_channels: int = 1280,
) -> YoloClassifier:
    """YOLO11-m backbone (depth 0.50, width 1.00, at most 512 channels; C3k everywhere) with a
    classification head."""
    return YoloClassifier("yolo11", "m", num_classes, in_chans, drop_rate, head_channels)
