"""RegNet blocks: torchvision ``ResBottleneckBlock`` and timm ``regnet.Bottleneck`` (RegNetX / RegNetY).

A RegNet block is a ResNeXt bottleneck (Radosavovic et al., "Designing Network Design Spaces",
2020, https://arxiv.org/abs/2003.13678): 1x1 conv -> 3x3 group conv -> [SE, RegNetY] -> 1x1 conv,
so its positions are the ResNet bottleneck's: ``pre``, ``after_conv1`` (after the 1x1 conv, its norm
and activation), ``after_conv2`` (after the 3x3 group conv, its norm and activation, i.e. where
RegNetY's SE sits), ``standard`` (after the last 1x1 conv and its norm, before the add),
``identity`` (the shortcut, after its projection if any, before the add) and ``post`` (after the add
and its activation).

torchvision: the branch ``f`` is a Sequential with children ``a``, ``b``, [``se``], ``c``; ``after_conv2``
goes after ``b``, before the SE. timm: ``se`` is timm's own slot at ``after_conv2`` (an empty
``nn.Identity`` in RegNetX, filled with SEModule in RegNetY: there, swap it with ``replace_attn``);
a timm block whose ``downsample`` is None has no shortcut, so no ``identity``.
"""
from __future__ import annotations

import torch
from timm.models import regnet as _timm_regnet
from torch import nn
from torchvision.models import regnet as _tv_regnet

from ..adapters import HostAdapter, register_host_adapter, slot_attrs
from .resnet import RES_BOTTLENECK

__all__: list[str] = []


class TorchvisionResBottleneckAttn(_tv_regnet.ResBottleneckBlock):
    """torchvision ResBottleneckBlock.forward with slots."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        out = x
        for name, layer in self.f.named_children():
            out = layer(out)
            if name == "a" and self.attn_after_conv1 is not None:
                out = self.attn_after_conv1(out)
            if name == "b" and self.attn_after_conv2 is not None:
                out = self.attn_after_conv2(out)
        if self.attn_standard is not None:
            out = self.attn_standard(out)
        shortcut = self.proj(x) if self.proj is not None else x
        if self.attn_identity is not None:
            shortcut = self.attn_identity(shortcut)
        out = self.activation(shortcut + out)
        if self.attn_post is not None:
            out = self.attn_post(out)
        return out


class TimmRegNetBottleneckAttn(_timm_regnet.Bottleneck):
    """timm regnet Bottleneck.forward with slots; ``se`` is timm's own (position ``after_conv2``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        shortcut = x
        x = self.conv1(x)
        if self.attn_after_conv1 is not None:
            x = self.attn_after_conv1(x)
        x = self.conv3(self.se(self.conv2(x)))
        if self.attn_standard is not None:
            x = self.attn_standard(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
            if self.attn_identity is not None:
                shortcut = self.attn_identity(shortcut)
            x = self.drop_path(x) + shortcut
        x = self.act3(x)
        if self.attn_post is not None:
            x = self.attn_post(x)
        return x


def _timm_has(host: nn.Module, position: str) -> bool:
    return position != "identity" or host.downsample is not None


for _adapter in [
    HostAdapter("torchvision RegNet ResBottleneckBlock", _tv_regnet.ResBottleneckBlock, TorchvisionResBottleneckAttn,
                slot_attrs(*RES_BOTTLENECK)),
    HostAdapter("timm RegNet Bottleneck", _timm_regnet.Bottleneck, TimmRegNetBottleneckAttn,
                slot_attrs("standard", "pre", "post", "identity", "after_conv1", after_conv2="se"),
                frozenset({"after_conv2"}), has=_timm_has),
]:
    register_host_adapter(_adapter)
