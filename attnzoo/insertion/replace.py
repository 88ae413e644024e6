"""replace_attn: swap every SE-like module already in a network for any attention block.

MobileNetV3, EfficientNet, RegNetY, SE-ResNet and their kin carry squeeze-and-excitation modules
of their own (the ECA and Coordinate-attention papers compared blocks by swapping exactly these).
``replace_attn(model, "eca")`` puts an ``eca`` block, sized to the channels found there, in the
place of each one: the attribute (or Sequential index) that held the SE module holds the new block.

Covered classes (``SE_LIKE``): timm's ``SEModule`` (also rexnet's SEWithNorm, regnet's SE),
``EffectiveSEModule``, ``EcaModule``, ``CecaModule``, ``GatherExcite``, ``GlobalContext``,
``CbamModule``, ``LightCbamModule`` (``timm.layers``), the ``SqueezeExcite`` of timm's
EfficientNet / MobileNetV3 / GhostNet blocks, legacy SENet's ``SEModule``, and torchvision's
``SqueezeExcitation`` (MobileNetV3, EfficientNet, RegNetY). NOTE: timm's ``SqueezeExciteCl`` is not
covered: it works on channels-last (B, H, W, C) tensors, and attnzoo blocks take (B, C, H, W).

Steps, as in ``insert_attn`` (and with its pieces): *plan* (find the SE-like modules, outermost
only), *probe* (on a deep copy, a recording identity in each one's place, one batch-1 forward: the
(C, H, W) each sees), *build* (one block per site, checked on its input shape, FLOPs counted),
*apply* (assign, undone in reverse on any error). On any error the model is left exactly as it was.

State_dict: the replaced modules' keys (``features.1.block.1.fc1.weight``, ...) go, the new block's
keys come under the same prefix (``features.1.block.1.conv.weight`` for eca); every other key keeps
its name and value, so a pretrained checkpoint of the original network loads into the replaced one
with ``strict=False`` (only SE keys unexpected, only new-block keys missing).

``init="identity"`` wraps each new block as ``x + alpha * (block(x) - x)`` with ``alpha = 0``: at
first the network computes what it computed *without* its SE modules (not with them: their
parameters are gone), and fine-tuning grows the new blocks in from there. NOTE: a pretrained SE
network loses some accuracy the moment its SE modules go, whichever init; identity init starts from
the SE-free network's function instead of from a random block's disturbance of it.
"""
from __future__ import annotations

from typing import Any, Sequence

from timm.layers import cbam as _timm_cbam
from timm.layers import eca as _timm_eca
from timm.layers import gather_excite as _timm_ge
from timm.layers import global_context as _timm_gc
from timm.layers import squeeze_excite as _timm_se
from timm.models import _efficientnet_blocks as _timm_eff
from timm.models import senet as _timm_senet
from torch import nn
from torchvision.ops import misc as _tv_misc

from ..factory import get_attn
from .insert import (INIT_MODES, _attn_label, _build, _input_size, _inserted_paths, _probe, _Site, _stage_paths,
                     _under)
from .report import InsertReport, SiteRecord

__all__ = ["replace_attn", "SE_LIKE", "REPLACE_POSITION"]

REPLACE_POSITION = "replace"  # the report's position, and insert_attn's / AttnClassifier's name for this

# (class, label) of every module replace_attn swaps; isinstance, so subclasses (torchvision's
# QuantizableSqueezeExcitation, partials of timm's classes) are covered too.
SE_LIKE: tuple[tuple[type[nn.Module], str], ...] = (
    (_timm_se.SEModule, "timm SEModule"),
    (_timm_se.EffectiveSEModule, "timm EffectiveSEModule"),
    (_timm_eca.EcaModule, "timm EcaModule"),
    (_timm_eca.CecaModule, "timm CecaModule"),
    (_timm_ge.GatherExcite, "timm GatherExcite"),
    (_timm_gc.GlobalContext, "timm GlobalContext"),
    (_timm_cbam.CbamModule, "timm CbamModule"),
    (_timm_cbam.LightCbamModule, "timm LightCbamModule"),
    (_timm_eff.SqueezeExcite, "timm SqueezeExcite"),
    (_timm_senet.SEModule, "timm legacy SENet SEModule"),
    (_tv_misc.SqueezeExcitation, "torchvision SqueezeExcitation"),
)


def _se_label(module: nn.Module) -> str | None:
    return next((label for cls, label in SE_LIKE if isinstance(module, cls)), None)


def _parent(model: nn.Module, path: str) -> tuple[str, nn.Module, str]:
    parent_path, _, child = path.rpartition(".")
    return parent_path, (model.get_submodule(parent_path) if parent_path else model), child


def _install_replacement(host: nn.Module, site: _Site, probe: nn.Module) -> None:
    host._modules[site.slot] = probe


def replace_attn(
    model: nn.Module,
    attn: Any,
    init: str = "default",
    input_size: Sequence[int] | None = None,
    **attn_kwargs: Any,
) -> InsertReport:
    """Replace every SE-like module of ``model`` (see ``SE_LIKE``) by the block ``attn`` names, in place.

    attn: a registered name or spec (``"eca"``, ``"cbam(kernel_size=5)"``), a class or a partial taking
        ``channels`` first; it is built once per site at the channels found there.
    init: ``"default"`` (the block's own initialisation) or ``"identity"`` (each block starts as the
        identity; see the module docstring for what that means when replacing).
    input_size: (C, H, W) or (H, W) of the dummy forward and the report; default
        ``model.default_input_size``, else (in_chans, 224, 224).
    attn_kwargs: arguments for the block, e.g. ``rd_ratio=0.25``.

    Returns an ``InsertReport`` with position ``"replace"``, one site per replaced module; each
    ``SiteRecord.replaced`` names the class that was there. Raises ``ValueError`` when the model has
    no SE-like module (and, like insert_attn, on any other failure), leaving the model unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"replace_attn needs an nn.Module, got {type(model).__name__}")
    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
    if attn is None or (isinstance(attn, str) and attn.strip().lower() in ("", "none")):
        raise ValueError("replace_attn needs a block to put in place of the SE modules, e.g. 'eca' or "
                         "'cbam(kernel_size=5)'")
    if isinstance(attn, nn.Module):
        raise TypeError("replace_attn builds one block per site, sized to the channels found there; pass a name "
                        "('eca', 'se(rd_ratio=0.25)'), a class or a functools.partial, not a built module")
    get_attn(attn)  # unknown names fail here, before any work
    size = _input_size(model, input_size)
    label = _attn_label(attn, attn_kwargs)
    report = InsertReport(attn=label, position=REPLACE_POSITION, init=init, input_size=size)

    # 1. plan: the outermost SE-like modules, not inside blocks attnzoo inserted
    skip = _inserted_paths(model)  # blocks attnzoo put in carry a mark; a second replace leaves them be
    stage_paths = _stage_paths(model)
    sites: list[_Site] = []
    replaced: list[str] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if not name or _under(name, skip) or _under(name, taken):
            continue
        what = _se_label(module)
        if what is None:
            continue
        taken.append(name)
        parent_path, parent, child = _parent(model, name)
        stage = next((k + 1 for k, p in enumerate(stage_paths) if _under(name, [p])), None)
        sites.append(_Site(parent_path, parent, None, child, REPLACE_POSITION, stage, None))
        replaced.append(what)
    if not sites:
        covered = ", ".join(label for _, label in SE_LIKE)
        raise ValueError(
            f"{type(model).__name__} holds no SE-like module to replace (covered: {covered}); to add a block "
            f"where there is none, use insert_attn(model, {label!r}, position=...)"
        )

    # 2. probe, 3. build: on a copy / on fresh blocks; the model is untouched so far
    shapes = _probe(model, sites, size, install=_install_replacement)
    built = [_build(attn, attn_kwargs, init, site, shape, model, label) for site, shape in zip(sites, shapes)]

    # 4. apply, undone in reverse on any error
    undo = []
    try:
        for site, (block, _) in zip(sites, built):
            old = site.host._modules[site.slot]
            setattr(site.host, site.slot, block)  # nn.Module.__setattr__: refuses a non-module
            undo.append(lambda host=site.host, slot=site.slot, old=old: setattr(host, slot, old))
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    for site, shape, (block, flops), what in zip(sites, shapes, built, replaced):
        report.sites.append(SiteRecord(
            path=site.path, host=site.host_path, position=REPLACE_POSITION, stage=site.stage, block=None,
            channels=shape[0], spatial=(shape[1], shape[2]),
            params=sum(p.numel() for p in block.parameters()), flops=flops, replaced=what,
        ))
    return report

