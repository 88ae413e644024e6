"""Insertion positions: their names, what each one means, and the identity-init wrapper.

Residual-block positions follow the SE paper's integration study (J. Hu, L. Shen, S. Albanie,
G. Sun, E. Wu, "Squeeze-and-Excitation Networks", TPAMI 2019, Fig. 5 and Table 14,
https://arxiv.org/abs/1709.01507) plus mmdetection's plugin positions (``after_conv1``,
``after_conv2``); YOLO positions follow the layout of YOLOv8 / YOLO11's C2f, C3k2 and SPPF. Host
families register their own with ``register_position`` (``hosts/mobilenet.py``: ``after_expand``,
``after_dw``); ``replace`` is not a position of a block but ``replace_attn``'s name (the model's own
SE-like modules), which ``insert_attn`` accepts too.

``init="identity"`` wraps each inserted block as

    y = x + alpha * (block(x) - x),   alpha = 0 at init (one learnable scalar per site)

so the network computes exactly what it computed before insertion until ``alpha`` moves; this is
ReZero's zero-initialised residual gate (T. Bachlechner et al., "ReZero is All You Need", 2020,
https://arxiv.org/abs/2003.04887) applied around the block.
NOTE: the wrapper adds one parameter per site (counted in the report) and nests the block's
parameters under ``.block`` (``layer1.0.se.block.fc1.weight`` instead of ``layer1.0.se.fc1.weight``).
"""
from __future__ import annotations

import difflib

import torch
from torch import nn

__all__ = [
    "POSITIONS", "RESIDUAL_POSITIONS", "YOLO_POSITIONS", "GLOB_PREFIX", "IdentityInit", "check_position",
    "register_position",
]

RESIDUAL_POSITIONS = {
    "standard": "on the residual branch, after its last norm, before the add (SE paper: SE-standard)",
    "pre": "on the block's input, before the split into residual and shortcut (SE-PRE)",
    "post": "after the add and its activation, on the block's output (SE-POST)",
    "identity": "on the shortcut branch, after the downsample if any, before the add (SE-Identity)",
    "after_conv1": "after the first conv, its norm and activation (mmdetection's after_conv1)",
    "after_conv2": "after the second conv, its norm and activation, in a 3-conv bottleneck (mmdetection's after_conv2)",
}
YOLO_POSITIONS = {
    "bottleneck": "inside each bottleneck of a C2f/C3k2, after its second conv, before its add",
    "block": "after each C2f/C3k2 block",
    "sppf": "after the SPPF block",
}
POSITIONS = {**RESIDUAL_POSITIONS, **YOLO_POSITIONS}
GLOB_PREFIX = "after:"


def register_position(name: str, description: str) -> None:
    """Add a named position (used by host adapters of other block families, e.g. ``after_dw``).

    Registering a name again with the same description is a no-op; with another one it raises.
    """
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("after:"):
        raise ValueError(f"a position name must be a plain identifier such as 'after_dw', got {name!r}")
    known = POSITIONS.get(name)
    if known is not None and known != description:
        raise ValueError(f"position {name!r} is already registered as {known!r}")
    POSITIONS[name] = description


def check_position(position: object) -> str:
    """``position`` must be a known name or ``'after:<glob>'``; returns it stripped."""
    if not isinstance(position, str):
        raise TypeError(f"position must be a string such as 'standard' or 'after:layer3.*.bn2', got {position!r}")
    position = position.strip()
    if position.startswith(GLOB_PREFIX):
        if not position[len(GLOB_PREFIX):].strip():
            raise ValueError("position 'after:' needs a glob over module names, e.g. 'after:layer3.*.bn2'")
        return position
    if position not in POSITIONS:
        close = difflib.get_close_matches(position, list(POSITIONS), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown position {position!r}{hint} Known positions: {', '.join(POSITIONS)}, "
            f"'after:<glob>' for any module (e.g. 'after:layer3.*.bn2'), or 'replace' for the model's own SE modules"
        )
    return position


class IdentityInit(nn.Module):
    """``x + alpha * (block(x) - x)`` with ``alpha`` a zero-initialised learnable scalar.

    Exactly the identity at initialisation, for any block, so inserting into a pretrained network
    leaves its outputs unchanged until training moves ``alpha``.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * (self.block(x) - x)
