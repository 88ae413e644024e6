"""Host adapters: where each position lies inside the blocks attnzoo knows, and how to add more.

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

from typing import Callable

from torch import nn

__all__ = ["HostAdapter", "adapter_for", "host_adapters", "register_host_adapter", "slot_attrs", "SLOT_ATTRS"]

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
    "after_expand": "attn_after_expand",
    "after_dw": "attn_after_dw",
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
    # has(instance, position): whether this instance has the position (e.g. an inverted residual
    # without an expansion conv has no after_expand); None: every instance has every listed position
    has: Callable[[nn.Module, str], bool] | None = None

    @property
    def positions(self) -> list[str]:
        return list(self.slots)

    def positions_of(self, module: nn.Module) -> list[str]:
        """The positions this instance has."""
        return [p for p in self.slots if self.has is None or self.has(module, p)]

    def attnzoo_slots(self) -> list[str]:
        return [a for p, a in self.slots.items() if p not in self.native]


def slot_attrs(*positions: str, **native: str) -> dict[str, str]:
    """position -> slot attribute: ``attn_<position>`` (``SLOT_ATTRS``) for each of ``positions``, then the
    ``native`` ones (position=attribute of the host's own slot, e.g. ``standard="se"``), in that order."""
    out = {p: SLOT_ATTRS.get(p, f"attn_{p}") for p in positions}
    out.update(native)
    return out


_ADAPTERS: list[HostAdapter] = []


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


_slots = slot_attrs  # the name this helper had before the host families moved to hosts/


def __getattr__(name: str):
    """The adapter classes that lived here before ``hosts/`` (``TorchvisionBasicBlockAttn``, ``_AfterBlockSlot``,
    ...) still import from here: looked up in the host-family modules on first use."""
    from .hosts import cspnet, resnet, yolo

    for module in (resnet, cspnet, yolo):
        if name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
