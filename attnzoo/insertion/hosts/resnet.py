"""ResNet blocks: attnzoo's and torchvision's BasicBlock / Bottleneck, timm's ResNet / ResNeXt blocks.

Positions (SE paper, Hu et al. TPAMI 2019, Fig. 5; mmdetection plugins; see ``positions.py``):
BasicBlock ``standard, pre, post, identity, after_conv1``; Bottleneck adds ``after_conv2``.
timm's ``se`` attribute is its own slot at ``standard`` (filling it gives timm's seresnet*/ecaresnet*).
"""
from __future__ import annotations

import torch
from timm.models import resnet as _timm_resnet
from torchvision.models import resnet as _tv_resnet

from ...backbones import resnet as _az_resnet
from ..adapters import HostAdapter, register_host_adapter, slot_attrs

__all__ = ["RES_BASIC", "RES_BOTTLENECK"]

RES_BASIC = ("standard", "pre", "post", "identity", "after_conv1")
RES_BOTTLENECK = ("standard", "pre", "post", "identity", "after_conv1", "after_conv2")


# -- ResNet blocks with torchvision's layout (torchvision's and attnzoo's) ---------------------------
class _TorchvisionBasicSlots:
    """torchvision BasicBlock.forward with slots: pre, after_conv1, standard, identity, post."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        if self.attn_after_conv1 is not None:
            out = self.attn_after_conv1(out)
        out = self.bn2(self.conv2(out))
        if self.attn_standard is not None:
            out = self.attn_standard(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        if self.attn_identity is not None:
            identity = self.attn_identity(identity)
        out = self.relu(out + identity)
        if self.attn_post is not None:
            out = self.attn_post(out)
        return out


class _TorchvisionBottleneckSlots:
    """torchvision Bottleneck.forward with slots: pre, after_conv1, after_conv2, standard, identity, post."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        if self.attn_after_conv1 is not None:
            out = self.attn_after_conv1(out)
        out = self.relu(self.bn2(self.conv2(out)))
        if self.attn_after_conv2 is not None:
            out = self.attn_after_conv2(out)
        out = self.bn3(self.conv3(out))
        if self.attn_standard is not None:
            out = self.attn_standard(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        if self.attn_identity is not None:
            identity = self.attn_identity(identity)
        out = self.relu(out + identity)
        if self.attn_post is not None:
            out = self.attn_post(out)
        return out


class TorchvisionBasicBlockAttn(_TorchvisionBasicSlots, _tv_resnet.BasicBlock):
    pass


class TorchvisionBottleneckAttn(_TorchvisionBottleneckSlots, _tv_resnet.Bottleneck):
    pass


class AttnzooBasicBlockAttn(_TorchvisionBasicSlots, _az_resnet.BasicBlock):
    pass


class AttnzooBottleneckAttn(_TorchvisionBottleneckSlots, _az_resnet.Bottleneck):
    pass


# -- timm ResNet blocks ---------------------------------------------------------------------------
class TimmBasicBlockAttn(_timm_resnet.BasicBlock):
    """timm BasicBlock.forward with slots; ``se`` is timm's own (position ``standard``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        if self.attn_after_conv1 is not None:
            x = self.attn_after_conv1(x)
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        if self.attn_identity is not None:
            shortcut = self.attn_identity(shortcut)
        x = self.act2(x + shortcut)
        if self.attn_post is not None:
            x = self.attn_post(x)
        return x


class TimmBottleneckAttn(_timm_resnet.Bottleneck):
    """timm Bottleneck.forward with slots; ``se`` is timm's own (position ``standard``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        if self.attn_after_conv1 is not None:
            x = self.attn_after_conv1(x)
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        if self.attn_after_conv2 is not None:
            x = self.attn_after_conv2(x)
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        if self.attn_identity is not None:
            shortcut = self.attn_identity(shortcut)
        x = self.act3(x + shortcut)
        if self.attn_post is not None:
            x = self.attn_post(x)
        return x


for _adapter in [
    HostAdapter("torchvision BasicBlock", _tv_resnet.BasicBlock, TorchvisionBasicBlockAttn, slot_attrs(*RES_BASIC)),
    HostAdapter("torchvision Bottleneck", _tv_resnet.Bottleneck, TorchvisionBottleneckAttn, slot_attrs(*RES_BOTTLENECK)),
    HostAdapter("attnzoo BasicBlock", _az_resnet.BasicBlock, AttnzooBasicBlockAttn, slot_attrs(*RES_BASIC)),
    HostAdapter("attnzoo Bottleneck", _az_resnet.Bottleneck, AttnzooBottleneckAttn, slot_attrs(*RES_BOTTLENECK)),
    HostAdapter(
        "timm ResNet BasicBlock", _timm_resnet.BasicBlock, TimmBasicBlockAttn,
        slot_attrs("pre", "post", "identity", "after_conv1", standard="se"), frozenset({"standard"}),
    ),
    HostAdapter(
        "timm ResNet Bottleneck", _timm_resnet.Bottleneck, TimmBottleneckAttn,
        slot_attrs("pre", "post", "identity", "after_conv1", "after_conv2", standard="se"), frozenset({"standard"}),
    ),
]:
    register_host_adapter(_adapter)
