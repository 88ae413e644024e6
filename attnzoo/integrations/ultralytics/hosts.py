"""insert_attn host adapters for ultralytics' own blocks (Bottleneck, C2f, C3k, C3k2, C2PSA, SPPF).

Positions (named as for attnzoo's YOLO-like backbones, plus two for blocks they do not have):

* ``bottleneck``: inside every ultralytics ``Bottleneck`` (in C2f, C3k2 and C3k), after its second conv,
  before its shortcut add. C3k's ``cv2`` (a 1x1 conv on the bypass branch) is never a site.
* ``block``: after every C2f / C3k2 block (a YAML row's output).
* ``c3k``: after every C3k, the inner CSP block that C3k2 uses at scales m/l/x (``c3k=True``).
* ``sppf``: after the SPPF block.
* ``psa``: after every C2PSA block (YOLO11's position-sensitive attention stage).

Each host class gets an attnzoo subclass, defined here at module level so checkpoints unpickle; the
subclass's ``forward`` is the host's computation with the slot called where its position says.
"""
from __future__ import annotations

import torch
from ultralytics.nn.modules import block as _ub

from ...insertion import HostAdapter, host_adapters, register_host_adapter, register_position

__all__ = ["ULTRALYTICS_POSITIONS", "register_hosts",
           "BottleneckAttn", "C2fAttn", "C3kAttn", "C3k2Attn", "SPPFAttn", "C2PSAAttn"]

ULTRALYTICS_POSITIONS = {
    "bottleneck": "inside each bottleneck of a C2f/C3k2, after its second conv, before its add",
    "block": "after each C2f/C3k2 block",
    "sppf": "after the SPPF block",
    "c3k": "after each C3k (the inner CSP block of an ultralytics C3k2 at scales m/l/x)",
    "psa": "after each ultralytics C2PSA block (YOLO11's attention stage)",
}


class BottleneckAttn(_ub.Bottleneck):
    """ultralytics Bottleneck with ``attn_bottleneck`` after cv2, before the shortcut add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        if self.attn_bottleneck is not None:
            y = self.attn_bottleneck(y)
        return x + y if self.add else y


class _After:
    """The host's own forward, then the block in ``_slot``."""

    _slot = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        attn = getattr(self, self._slot)
        if attn is not None:
            out = attn(out)
        return out


class C2fAttn(_After, _ub.C2f):
    _slot = "attn_block"


class C3k2Attn(_After, _ub.C3k2):
    _slot = "attn_block"


class C3kAttn(_After, _ub.C3k):
    _slot = "attn_c3k"


class SPPFAttn(_After, _ub.SPPF):
    _slot = "attn_sppf"


class C2PSAAttn(_After, _ub.C2PSA):
    _slot = "attn_psa"


_ADAPTERS = (
    HostAdapter("ultralytics Bottleneck", _ub.Bottleneck, BottleneckAttn, {"bottleneck": "attn_bottleneck"}),
    HostAdapter("ultralytics C2f", _ub.C2f, C2fAttn, {"block": "attn_block"}),
    HostAdapter("ultralytics C3k2", _ub.C3k2, C3k2Attn, {"block": "attn_block"}),
    HostAdapter("ultralytics C3k", _ub.C3k, C3kAttn, {"c3k": "attn_c3k"}),
    HostAdapter("ultralytics SPPF", _ub.SPPF, SPPFAttn, {"sppf": "attn_sppf"}, last_stage=True),
    HostAdapter("ultralytics C2PSA", _ub.C2PSA, C2PSAAttn, {"psa": "attn_psa"}, last_stage=True),
)


def register_hosts() -> None:
    """Register the positions and adapters once per process (importing the integration calls this)."""
    for name, description in ULTRALYTICS_POSITIONS.items():
        from ...insertion.positions import POSITIONS

        if name not in POSITIONS:  # bottleneck/block/sppf exist already with attnzoo's own wording
            register_position(name, description)
    known = {a.host for a in host_adapters()}
    for adapter in _ADAPTERS:
        if adapter.host not in known:
            register_host_adapter(adapter)
