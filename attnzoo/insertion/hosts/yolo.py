"""attnzoo's YOLO-like blocks (``attnzoo.backbones.yolo``): YoloBottleneck, C2f, C3k2, SPPF.

Positions (YOLOv8 / YOLO11 layout): ``bottleneck`` (inside each bottleneck, after its second conv,
before its add), ``block`` (after each C2f / C3k2), ``sppf`` (after SPPF, counted in the last stage).
"""
from __future__ import annotations

import torch

from ...backbones import yolo as _az_yolo
from ..adapters import HostAdapter, register_host_adapter, slot_attrs

__all__: list[str] = []


# -- attnzoo YOLO-like blocks (attnzoo.backbones.yolo) ----------------------------------------------
class _AfterBlockSlot:
    """The host's own forward, then ``attn_block``: position ``block``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.attn_block is not None:
            out = self.attn_block(out)
        return out


class _AfterSppfSlot:
    """The host's own forward, then ``attn_sppf``: position ``sppf``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.attn_sppf is not None:
            out = self.attn_sppf(out)
        return out


class YoloBottleneckAttn(_az_yolo.YoloBottleneck):
    """YoloBottleneck.forward with ``attn_bottleneck`` after cv2, before the add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        if self.attn_bottleneck is not None:
            y = self.attn_bottleneck(y)
        return x + y if self.add else y


class C2fAttn(_AfterBlockSlot, _az_yolo.C2f):
    pass


class C3k2Attn(_AfterBlockSlot, _az_yolo.C3k2):
    pass


class SPPFAttn(_AfterSppfSlot, _az_yolo.SPPF):
    pass


for _adapter in [
    HostAdapter("attnzoo YoloBottleneck", _az_yolo.YoloBottleneck, YoloBottleneckAttn, slot_attrs("bottleneck")),
    HostAdapter("attnzoo C2f", _az_yolo.C2f, C2fAttn, slot_attrs("block")),
    HostAdapter("attnzoo C3k2", _az_yolo.C3k2, C3k2Attn, slot_attrs("block")),
    HostAdapter("attnzoo SPPF", _az_yolo.SPPF, SPPFAttn, slot_attrs("sppf"), last_stage=True),
]:
    register_host_adapter(_adapter)
