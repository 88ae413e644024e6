"""The ``after:<glob>`` fallback: a block after every module whose qualified name matches a glob.

The glob is matched with ``fnmatch`` against the names of ``model.named_modules()`` (``*`` also
crosses dots: ``layer3.*.bn2`` matches ``layer3.0.bn2`` and ``layer3.1.bn2``). The inserted block
becomes a child ``attn_after`` of the matched module (so its parameters are the model's, under
``<module>.attn_after.*``, and every original key is unchanged), and a forward hook, a module-level
function so that the model still pickles, replaces the module's output with ``attn_after(output)``.

Refused, with the reason: containers (``nn.Sequential``/``ModuleList``/``ModuleDict``: a child added
to a Sequential would also run inside it), modules the dummy forward calls more than once (e.g.
torchvision's shared ``relu``: the block would apply at every call) or never, and modules whose
output is not a (B, C, H, W) tensor.
"""
from __future__ import annotations

import fnmatch

from torch import nn

__all__ = ["GLOB_SLOT", "match_glob", "apply_attn_after"]

GLOB_SLOT = "attn_after"
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def apply_attn_after(module: nn.Module, args: tuple, output):
    """Forward hook: the module's output goes through its ``attn_after`` block."""
    return module.attn_after(output)


def match_glob(model: nn.Module, pattern: str, skip: set[str]) -> list[tuple[str, nn.Module]]:
    """(name, module) of every non-root module matching ``pattern``, outside the ``skip`` subtrees."""
    out = []
    for name, module in model.named_modules():
        if not name or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if fnmatch.fnmatchcase(name, pattern):
            if isinstance(module, _CONTAINERS):
                raise ValueError(
                    f"position 'after:{pattern}' matches {name!r}, a {type(module).__name__}; a block cannot be "
                    f"attached to a container without changing what it runs. Match its last module instead "
                    f"(e.g. 'after:{name}.<last child>') or narrow the glob"
                )
            out.append((name, module))
    return out
