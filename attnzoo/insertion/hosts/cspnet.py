"""timm CSPNet / CSPDarknet blocks: BottleneckBlock (cspresnet*, cs3darknet*), DarkBlock, EdgeBlock.

Positions: BottleneckBlock ``standard, pre, post, identity, after_conv1, after_conv2`` (timm's own
``attn2`` is ``after_conv2``, ``attn3`` is ``standard``); DarkBlock / EdgeBlock (darknet*, cs3darknet*,
cs3edgenet*) ``standard, pre, post, identity, after_conv1`` (timm's ``attn`` is ``after_conv1``; their
``post`` has no activation after the add).
"""
from __future__ import annotations

import torch
from timm.models import cspnet as _timm_csp

from ..adapters import HostAdapter, register_host_adapter, slot_attrs

__all__: list[str] = []


# -- timm CSPNet / CSPDarknet blocks --------------------------------------------------------------
class TimmCspBottleneckAttn(_timm_csp.BottleneckBlock):
    """timm CSPNet BottleneckBlock.forward with slots; ``attn2``/``attn3`` are timm's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        shortcut = x
        x = self.conv1(x)
        if self.attn_after_conv1 is not None:
            x = self.attn_after_conv1(x)
        x = self.attn2(self.conv2(x))
        x = self.attn3(self.conv3(x))
        x = self.drop_path(x)
        if self.attn_identity is not None:
            shortcut = self.attn_identity(shortcut)
        x = self.act3(x + shortcut)
        if self.attn_post is not None:
            x = self.attn_post(x)
        return x


class _TimmDarkSlots:
    """timm DarkBlock / EdgeBlock forward with slots; ``attn`` (after conv1) is timm's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        shortcut = x
        x = self.conv2(self.attn(self.conv1(x)))
        if self.attn_standard is not None:
            x = self.attn_standard(x)
        x = self.drop_path(x)
        if self.attn_identity is not None:
            shortcut = self.attn_identity(shortcut)
        x = x + shortcut
        if self.attn_post is not None:
            x = self.attn_post(x)
        return x


class TimmDarkBlockAttn(_TimmDarkSlots, _timm_csp.DarkBlock):
    pass


class TimmEdgeBlockAttn(_TimmDarkSlots, _timm_csp.EdgeBlock):
    pass


for _adapter in [
    HostAdapter(
        "timm CSPNet BottleneckBlock", _timm_csp.BottleneckBlock, TimmCspBottleneckAttn,
        slot_attrs("pre", "post", "identity", "after_conv1", after_conv2="attn2", standard="attn3"),
        frozenset({"after_conv2", "standard"}),
    ),
    HostAdapter(
        "timm CSPNet DarkBlock", _timm_csp.DarkBlock, TimmDarkBlockAttn,
        slot_attrs("standard", "pre", "post", "identity", after_conv1="attn"), frozenset({"after_conv1"}),
    ),
    HostAdapter(
        "timm CSPNet EdgeBlock", _timm_csp.EdgeBlock, TimmEdgeBlockAttn,
        slot_attrs("standard", "pre", "post", "identity", after_conv1="attn"), frozenset({"after_conv1"}),
    ),
]:
    register_host_adapter(_adapter)
