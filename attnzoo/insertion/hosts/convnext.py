"""ConvNeXt blocks: torchvision ``CNBlock`` and timm ``ConvNeXtBlock``.

A ConvNeXt block (Liu et al., "A ConvNet for the 2020s", 2022, https://arxiv.org/abs/2201.03545) is
7x7 depthwise conv -> LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale, added to its input.
Positions, all on (B, C, H, W) tensors:

* ``pre``: on the block input, before the split into branch and shortcut;
* ``after_dw``: after the 7x7 depthwise conv, before the norm;
* ``standard``: the branch's output after the layer scale (gamma), before drop-path and the add;
* ``post``: after the add (ConvNeXt has no activation after it), on the block's output.

NOTE: no position inside the MLP: there the tensor is channels-last (B, H, W, 4C) in both libraries
(timm's ``conv_mlp`` variant aside), and attnzoo blocks take (B, C, H, W).
"""
from __future__ import annotations

import torch
from timm.models import convnext as _timm_convnext
from torchvision.models import convnext as _tv_convnext

from ..adapters import HostAdapter, register_host_adapter, slot_attrs
from .mobilenet import AFTER_DW  # noqa: F401  (imported for its register_position("after_dw", ...))

__all__ = ["CONVNEXT"]

CONVNEXT = ("standard", "pre", "post", "after_dw")


class TorchvisionCNBlockAttn(_tv_convnext.CNBlock):
    """torchvision CNBlock.forward with slots."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        out = x
        for i, layer in enumerate(self.block):
            out = layer(out)
            if i == 0 and self.attn_after_dw is not None:  # block[0] is the 7x7 depthwise conv
                out = self.attn_after_dw(out)
        out = self.layer_scale * out
        if self.attn_standard is not None:
            out = self.attn_standard(out)
        out = self.stochastic_depth(out) + x
        if self.attn_post is not None:
            out = self.attn_post(out)
        return out


class TimmConvNeXtBlockAttn(_timm_convnext.ConvNeXtBlock):
    """timm ConvNeXtBlock.forward with slots."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        shortcut = x
        x = self.conv_dw(x)
        if self.attn_after_dw is not None:
            x = self.attn_after_dw(x)
        if self.use_conv_mlp:
            x = self.mlp(self.norm(x))
        else:
            x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)  # (B, H, W, C) inside
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        if self.attn_standard is not None:
            x = self.attn_standard(x)
        x = self.drop_path(x) + self.shortcut(shortcut)
        if self.attn_post is not None:
            x = self.attn_post(x)
        return x


for _adapter in [
    HostAdapter("torchvision ConvNeXt CNBlock", _tv_convnext.CNBlock, TorchvisionCNBlockAttn, slot_attrs(*CONVNEXT)),
    HostAdapter("timm ConvNeXtBlock", _timm_convnext.ConvNeXtBlock, TimmConvNeXtBlockAttn, slot_attrs(*CONVNEXT)),
]:
    register_host_adapter(_adapter)
