"""Host adapters: where each position lies inside the residual and YOLO blocks attnzoo knows.

A *host* is a block class (torchvision's, timm's, attnzoo's). Its adapter names, for each position
it has, the *slot*: the attribute that holds the inserted block. Two kinds of slot:

* native slots, which the host's own ``forward`` already calls: timm ResNet's ``se`` (after the last
  norm, before the add: position ``standard``), timm CSPNet's ``attn2`` / ``attn3`` / ``attn``. Filling
  one changes nothing else, so ``insert_attn(timm resnet50, "se")`` *is* timm's ``seresnet50``.
* attnzoo slots (``attn_pre``, ``attn_identity``, ...). Filling one switches the block instance's
  class to an attnzoo subclass of its own class (``block.__class__ = ...``) whose ``forward`` is the
  host's ``forward`` with every slot called where its position says. The subclass keeps the host's
  attributes, parameters and ``isinstance`` relations, is defined at module level (so pickling
  works), and calls empty slots not at all (``if self.attn_pre is not None``), which torch.compile and
  ONNX export handle as constants.

Why a class switch and not forward hooks: a position such as ``identity`` or ``after_conv1`` lies
inside a ``forward`` where no submodule call marks it (torchvision's BasicBlock reuses one ``relu``
for both of its activations, so a hook on ``relu`` would fire twice); hooks are kept for the
``after:<glob>`` fallback only, where "after this module's output" is all that is asked.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from timm.models import cspnet as _timm_csp
from timm.models import resnet as _timm_resnet
from torchvision.models import resnet as _tv_resnet

from ..backbones import resnet as _az_resnet
from ..backbones import yolo as _az_yolo

__all__ = ["HostAdapter", "adapter_for", "host_adapters", "register_host_adapter", "SLOT_ATTRS"]

# Attribute names of attnzoo's own slots, one per position.
SLOT_ATTRS = {
    "pre": "attn_pre",
    "after_conv1": "attn_after_conv1",
    "after_conv2": "attn_after_conv2",
    "standard": "attn_standard",
    "identity": "attn_identity",
    "post": "attn_post",
    "bottleneck": "attn_bottleneck",
    "block": "attn_block",
    "sppf": "attn_sppf",
}


@dataclass(frozen=True)
class HostAdapter:
    """What insert_attn knows about one host block class."""

    label: str  # e.g. "torchvision BasicBlock"
    host: type[nn.Module]
    attn_class: type[nn.Module]  # the subclass whose forward calls every slot
    slots: dict[str, str]  # position -> attribute holding the inserted block
    native: frozenset[str] = field(default_factory=frozenset)  # positions the host's forward already calls
    last_stage: bool = False  # a host outside every stage counted as part of the last stage (SPPF)

    @property
    def positions(self) -> list[str]:
        return list(self.slots)

    def attnzoo_slots(self) -> list[str]:
        return [a for p, a in self.slots.items() if p not in self.native]


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


# -- registry of adapters -------------------------------------------------------------------------
def _slots(*positions: str, **native: str) -> dict[str, str]:
    out = {p: SLOT_ATTRS[p] for p in positions}
    out.update(native)
    return out


_RES_BASIC = ("standard", "pre", "post", "identity", "after_conv1")
_RES_BOTTLENECK = ("standard", "pre", "post", "identity", "after_conv1", "after_conv2")

_ADAPTERS: list[HostAdapter] = [
    HostAdapter("torchvision BasicBlock", _tv_resnet.BasicBlock, TorchvisionBasicBlockAttn, _slots(*_RES_BASIC)),
    HostAdapter("torchvision Bottleneck", _tv_resnet.Bottleneck, TorchvisionBottleneckAttn, _slots(*_RES_BOTTLENECK)),
    HostAdapter("attnzoo BasicBlock", _az_resnet.BasicBlock, AttnzooBasicBlockAttn, _slots(*_RES_BASIC)),
    HostAdapter("attnzoo Bottleneck", _az_resnet.Bottleneck, AttnzooBottleneckAttn, _slots(*_RES_BOTTLENECK)),
    HostAdapter(
        "timm ResNet BasicBlock", _timm_resnet.BasicBlock, TimmBasicBlockAttn,
        _slots("pre", "post", "identity", "after_conv1", standard="se"), frozenset({"standard"}),
    ),
    HostAdapter(
        "timm ResNet Bottleneck", _timm_resnet.Bottleneck, TimmBottleneckAttn,
        _slots("pre", "post", "identity", "after_conv1", "after_conv2", standard="se"), frozenset({"standard"}),
    ),
    HostAdapter(
        "timm CSPNet BottleneckBlock", _timm_csp.BottleneckBlock, TimmCspBottleneckAttn,
        _slots("pre", "post", "identity", "after_conv1", after_conv2="attn2", standard="attn3"),
        frozenset({"after_conv2", "standard"}),
    ),
    HostAdapter(
        "timm CSPNet DarkBlock", _timm_csp.DarkBlock, TimmDarkBlockAttn,
        _slots("standard", "pre", "post", "identity", after_conv1="attn"), frozenset({"after_conv1"}),
    ),
    HostAdapter(
        "timm CSPNet EdgeBlock", _timm_csp.EdgeBlock, TimmEdgeBlockAttn,
        _slots("standard", "pre", "post", "identity", after_conv1="attn"), frozenset({"after_conv1"}),
    ),
]


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


_ADAPTERS.extend([
    HostAdapter("attnzoo YoloBottleneck", _az_yolo.YoloBottleneck, YoloBottleneckAttn, _slots("bottleneck")),
    HostAdapter("attnzoo C2f", _az_yolo.C2f, C2fAttn, _slots("block")),
    HostAdapter("attnzoo C3k2", _az_yolo.C3k2, C3k2Attn, _slots("block")),
    HostAdapter("attnzoo SPPF", _az_yolo.SPPF, SPPFAttn, _slots("sppf"), last_stage=True),
])


_BY_CLASS: dict[type, HostAdapter] = {}


def _index() -> dict[type, HostAdapter]:
    if not _BY_CLASS:
        for a in _ADAPTERS:
            _BY_CLASS[a.host] = a
            _BY_CLASS[a.attn_class] = a
    return _BY_CLASS


def register_host_adapter(adapter: HostAdapter) -> HostAdapter:
    """Make ``insert_attn`` know one more host block class (integrations call this on import).

    Every position the adapter names must be registered (``positions.register_position``); a host
    class already known raises, so two adapters never disagree about one class.
    """
    from .positions import POSITIONS

    if not isinstance(adapter, HostAdapter):
        raise TypeError(f"register_host_adapter needs a HostAdapter, got {type(adapter).__name__}")
    unknown = [p for p in adapter.slots if p not in POSITIONS]
    if unknown:
        raise ValueError(f"{adapter.label}: unknown position(s) {unknown}; register them with register_position first")
    if adapter.host in _index():
        raise ValueError(f"{adapter.label}: host class {adapter.host.__qualname__} already has an adapter "
                         f"({_index()[adapter.host].label})")
    _ADAPTERS.append(adapter)
    _BY_CLASS.clear()
    return adapter


def host_adapters() -> list[HostAdapter]:
    """Every host adapter, in registration order."""
    return list(_ADAPTERS)


def adapter_for(module: nn.Module) -> HostAdapter | None:
    """The adapter of ``module``'s exact class (or of the attnzoo subclass it was switched to)."""
    return _index().get(type(module))
