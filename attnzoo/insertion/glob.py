"""The ``after:<glob>`` fallback: a block after every module whose qualified name matches a glob.

The glob follows module names, segment by segment (names are dotted: ``layer3.0.bn2``):

* ``*`` matches within one name segment (never a dot): ``layer3.*.bn2`` matches ``layer3.0.bn2`` and
  ``layer3.1.bn2``, not ``layer3.0.downsample.bn2``; ``stages.*.blocks.*`` on a ConvNeXt matches
  its blocks, not the modules inside them;
* ``**`` matches across segments (any run of characters, dots included, possibly empty):
  ``features.**.bn`` matches ``features.1.bn`` and ``features.1.block.0.bn``;
* ``?`` is one character other than a dot; ``[abc]`` / ``[!abc]`` are character classes as in fnmatch.

NOTE: this differs from plain ``fnmatch`` (what earlier attnzoo versions used), whose ``*`` also
crosses dots; a pattern that relied on that needs ``**`` now.

The inserted block becomes a child ``attn_after`` of the matched module (so its parameters are the
model's, under ``<module>.attn_after.*``, and every original key is unchanged), and a forward hook, a
module-level function so that the model still pickles, replaces the module's output with
``attn_after(output)``.

Sequential-based blocks (subclasses of ``nn.Sequential`` such as torchvision's
``Conv2dNormActivation``, the conv-norm-act unit of MobileNet, EfficientNet and RegNet stems): a
child added to a Sequential would also run inside it, so the block is attached to its last child
instead (recursively), which computes the same thing: "after ``features.0``" is "after
``features.0.2``". The report's ``host`` names the module that got it.

Refused, with the reason: bare containers (``nn.Sequential`` / ``ModuleList`` / ``ModuleDict``
themselves: the error names the modules to match instead), modules the dummy forward calls more
than once (e.g. torchvision's shared ``relu``: the block would apply at every call) or never, and
modules whose output is not a (B, C, H, W) tensor. A glob matching modules of several classes (say
the blocks of a stage and the convs between them) still inserts, with a ``UserWarning`` that names
the classes, since this is usually a glob wider than meant.
"""
from __future__ import annotations

import re
import warnings
from collections import Counter

from torch import nn

__all__ = ["GLOB_SLOT", "glob_to_regex", "match_glob", "apply_attn_after"]

GLOB_SLOT = "attn_after"
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def apply_attn_after(module: nn.Module, args: tuple, output):
    """Forward hook: the module's output goes through its ``attn_after`` block."""
    return module.attn_after(output)


def glob_to_regex(pattern: str) -> re.Pattern:
    """Compile a module-name glob: ``*`` within a segment, ``**`` across segments (see the docstring)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern.startswith("[!", i) else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append("[" + body.replace("\\", r"\\") + "]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _is_bare_container(module: nn.Module) -> bool:
    return type(module) in _CONTAINERS


def _last_leaf(name: str, module: nn.Module) -> tuple[str, nn.Module]:
    """The last child of a Sequential-based block, descending while that child is Sequential too."""
    while isinstance(module, nn.Sequential) and len(module) > 0:
        child_name, module = list(module.named_children())[-1]
        name = f"{name}.{child_name}"
    return name, module


def match_glob(model: nn.Module, pattern: str, skip: set[str]) -> list[tuple[str, nn.Module]]:
    """(name, module) of every site ``pattern`` selects, outside the ``skip`` subtrees.

    Sequential subclasses are redirected to their last child; bare containers raise; matches of
    several classes warn.
    """
    regex = glob_to_regex(pattern)
    out: list[tuple[str, nn.Module]] = []
    seen: set[str] = set()
    classes: Counter[str] = Counter()
    for name, module in model.named_modules():
        if not name or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if not regex.match(name):
            continue
        if _is_bare_container(module):
            children = [n for n, _ in module.named_children()]
            hint = (f"match its modules instead, e.g. 'after:{name}.*' (its children) or 'after:{name}.{children[-1]}' "
                    f"(its last child, the same output for a Sequential)") if children else "it is empty"
            raise ValueError(
                f"position 'after:{pattern}' matches {name!r}, a bare {type(module).__name__}; a block cannot be "
                f"attached to a container without changing what it runs: {hint}, or narrow the glob"
            )
        classes[type(module).__name__] += 1
        site = _last_leaf(name, module) if isinstance(module, nn.Sequential) else (name, module)
        if site[0] not in seen:
            seen.add(site[0])
            out.append(site)
    if len(classes) > 1:
        listing = ", ".join(f"{k} ({v})" for k, v in classes.most_common())
        warnings.warn(
            f"position 'after:{pattern}' matches modules of {len(classes)} classes: {listing}; a block goes after "
            f"each of them. If that is wider than meant, narrow the glob ('*' stays within one name segment, "
            f"'**' crosses them)", UserWarning, stacklevel=3,
        )
    return out
