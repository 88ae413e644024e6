"""insert_attn: put an attention block at chosen positions of a network's residual or YOLO blocks.

Steps, each done in full before the next, so a failure leaves the model exactly as it was:

1. *Plan*: find the host blocks (see ``adapters``) that have ``position``, group them by stage
   (``model.stage_names``; else ``layer1..layerN`` or ``s1..sN``; else the children of ``model.stages``,
   ``model.blocks`` or ``model.trunk_output`` when they are containers of blocks), select
   ``stages`` and ``blocks``; for ``after:<glob>``, the matching modules. Refuse occupied sites.
2. *Probe*: on a deep copy of the model, put a recording identity in every planned slot, run one
   forward at batch 1 in eval mode under ``torch.no_grad`` and read the (C, H, W) each site sees.
   The user never gives channels; the original model is not touched (its train/eval mode neither).
3. *Build*: ``create_attn(attn, C, **attn_kwargs)`` per site (wrapped by ``IdentityInit`` for
   ``init="identity"``), run once on a (1, C, H, W) input under FlopCounterMode to count its FLOPs
   and to check it keeps the shape.
4. *Apply*: switch host classes where needed and fill the slots; undone in reverse on any error.

Original parameter names and state_dict keys never change; only the inserted blocks add keys (e.g.
``layer1.0.attn_standard.fc1.weight``, or timm's own ``layer1.0.se.fc1.weight``), so a pretrained
state_dict loads into the model before insertion and, with ``strict=False``, after it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..factory import create_attn, get_attn
from .adapters import HostAdapter, adapter_for, host_adapters
from .glob import GLOB_SLOT, apply_attn_after, match_glob
from .positions import GLOB_PREFIX, IdentityInit, check_position
from .report import InsertReport, SiteRecord

__all__ = ["insert_attn"]

INIT_MODES = ("default", "identity")
_MARK = "_attnzoo_inserted"  # set on every inserted block; its subtree is never a host


@dataclass
class _Site:
    host_path: str
    host: nn.Module
    adapter: HostAdapter | None  # None for after:<glob>
    slot: str
    position: str
    stage: int | None
    block: int | None

    @property
    def path(self) -> str:
        return f"{self.host_path}.{self.slot}" if self.host_path else self.slot


def insert_attn(
    model: nn.Module,
    attn: Any,
    position: str | None = None,
    stages: str | int | Sequence[int] = "all",
    blocks: str | int | Sequence[int] = "all",
    init: str = "default",
    input_size: Sequence[int] | None = None,
    **attn_kwargs: Any,
) -> InsertReport:
    """Insert the block ``attn`` names into ``model`` in place; return what was inserted where.

    position: ``standard`` | ``pre`` | ``post`` | ``identity`` | ``after_conv1`` | ``after_conv2`` (residual
        blocks), ``bottleneck`` | ``block`` | ``sppf`` (YOLO-like), the positions of the other hosts
        (``positions.POSITIONS``), ``after:<glob>`` (any module), or ``replace``: the model's own
        SE-like modules are swapped for the block (``replace_attn``); None:
        ``model.default_attn_position`` if it has one, else ``standard``.
    stages: ``"all"``, a 1-based stage number or a list of them.
    blocks: ``"all"``, ``"first"``, ``"last"``, an index or a list of indices (negative allowed) of the
        blocks within each selected stage.
    init: ``"default"`` (the block's own initialisation) or ``"identity"`` (each block starts as the
        identity, so a pretrained network's outputs are unchanged until trained).
    input_size: (C, H, W) or (H, W) of the dummy forward and the report; default
        ``model.default_input_size``, else (in_chans, 224, 224).
    attn_kwargs: arguments for the block, e.g. ``rd_ratio=0.25``.

    ``attn=None`` (or ``"none"``) inserts nothing and returns an empty report.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"insert_attn needs an nn.Module, got {type(model).__name__}")
    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
    if position is None:
        position = getattr(model, "default_attn_position", None) or "standard"
    if isinstance(position, str) and position.strip() == "replace":
        if stages != "all" or blocks != "all":
            raise ValueError("position='replace' swaps every SE-like module of the model; stages= and blocks= "
                             "do not apply to it, leave them 'all'")
        if attn is None or (isinstance(attn, str) and attn.strip().lower() in ("", "none")):
            return InsertReport(attn="none", position="replace", init=init, input_size=_input_size(model, input_size))
        from .replace import replace_attn  # lazy: replace.py reuses this module's steps

        return replace_attn(model, attn, init=init, input_size=input_size, **attn_kwargs)
    position = check_position(position)
    size = _input_size(model, input_size)
    label = _attn_label(attn, attn_kwargs)
    report = InsertReport(attn=label, position=position, init=init, input_size=size)
    if attn is None or (isinstance(attn, str) and attn.strip().lower() in ("", "none")):
        if attn_kwargs:
            raise TypeError(f"attn=None inserts nothing but got block arguments {sorted(attn_kwargs)}")
        return report
    if isinstance(attn, nn.Module):
        raise TypeError(
            "insert_attn builds one block per site, sized to the channels found there; pass a name "
            "('se', 'se(rd_ratio=0.25)'), a class or a functools.partial, not a built module"
        )
    get_attn(attn)  # unknown names fail here, before any work

    sites = _plan(model, position, stages, blocks)
    shapes = _probe(model, sites, size)
    built = [_build(attn, attn_kwargs, init, site, shape, model, label) for site, shape in zip(sites, shapes)]
    _apply(sites, [b for b, _ in built])
    for site, shape, (block, flops) in zip(sites, shapes, built):
        report.sites.append(SiteRecord(
            path=site.path, host=site.host_path, position=position, stage=site.stage, block=site.block,
            channels=shape[0], spatial=(shape[1], shape[2]),
            params=sum(p.numel() for p in block.parameters()), flops=flops,
        ))
    return report


# -- arguments ------------------------------------------------------------------------------------
def _attn_label(attn: Any, kwargs: dict[str, Any]) -> str:
    if attn is None:
        return "none"
    base = attn if isinstance(attn, str) else getattr(attn, "__name__", None) or getattr(
        getattr(attn, "func", None), "__name__", type(attn).__name__)
    if kwargs:
        base += "(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
    return base


def _input_size(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, int, int]:
    if input_size is None:
        default = getattr(model, "default_input_size", None)
        if default is not None:
            return tuple(int(v) for v in default)  # type: ignore[return-value]
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        in_chans = getattr(model, "in_chans", None) or (first_conv.in_channels if first_conv is not None else 3)
        return (int(in_chans), 224, 224)
    size = tuple(input_size)
    if len(size) == 2:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        in_chans = getattr(model, "in_chans", None) or (first_conv.in_channels if first_conv is not None else 3)
        size = (int(in_chans), *size)
    if len(size) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise ValueError(f"input_size must be (C, H, W) or (H, W) of positive ints, got {input_size!r}")
    return size  # type: ignore[return-value]


# -- 1. plan --------------------------------------------------------------------------------------
def _stage_paths(model: nn.Module) -> list[str]:
    names = getattr(model, "stage_names", None)
    if names:
        return list(names)
    layers = []
    k = 1
    while isinstance(getattr(model, f"layer{k}", None), nn.Module):
        layers.append(f"layer{k}")
        k += 1
    if layers:
        return layers
    k = 1  # timm RegNet: s1..sN
    while isinstance(getattr(model, f"s{k}", None), nn.Module):
        layers.append(f"s{k}")
        k += 1
    if layers:
        return layers
    stages = getattr(model, "stages", None)  # timm ConvNeXt, CSPNet, ...
    if isinstance(stages, (nn.Sequential, nn.ModuleList)):
        return [f"stages.{n}" for n, _ in stages.named_children()]
    for attr in ("blocks", "trunk_output"):  # timm EfficientNet / MobileNet, torchvision RegNet
        stages = getattr(model, attr, None)  # only when it holds containers of blocks, one per stage
        if isinstance(stages, (nn.Sequential, nn.ModuleList)) and all(
                isinstance(c, (nn.Sequential, nn.ModuleList)) for c in stages.children()):
            return [f"{attr}.{n}" for n, _ in stages.named_children()]
    return []


def _inserted_paths(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if getattr(m, _MARK, False)}


def _under(path: str, prefixes: set[str] | list[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _select_stages(stages: Any, n: int) -> list[int]:
    if stages == "all":
        return list(range(1, n + 1))
    picked = [stages] if isinstance(stages, int) and not isinstance(stages, bool) else stages
    if isinstance(picked, str) or not isinstance(picked, Sequence) or not picked or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in picked):
        raise ValueError(f"stages must be 'all', a stage number or a list of them (1-based), got {stages!r}")
    if n == 0:
        raise ValueError(f"stages={stages!r} was given, but no stages were recognised in this model "
                         "(it has no stage_names, layer1.., or stages attribute); use stages='all'")
    bad = [s for s in picked if not 1 <= s <= n]
    if bad:
        raise ValueError(f"stages {bad} do not exist: this model has {n} stages, numbered 1 to {n}")
    return sorted(set(picked))


def _select_blocks(blocks: Any, n: int, stage: int | None) -> list[int]:
    if blocks == "all":
        return list(range(n))
    if blocks == "first":
        return [0]
    if blocks == "last":
        return [n - 1]
    picked = [blocks] if isinstance(blocks, int) and not isinstance(blocks, bool) else blocks
    if isinstance(picked, str) or not isinstance(picked, Sequence) or not picked or not all(
            isinstance(b, int) and not isinstance(b, bool) for b in picked):
        raise ValueError(f"blocks must be 'all', 'first', 'last', an index or a list of indices, got {blocks!r}")
    bad = [b for b in picked if not -n <= b < n]
    if bad:
        where = f"stage {stage}" if stage is not None else "the model"
        raise ValueError(f"block indices {bad} do not exist: {where} has {n} block(s) at this position "
                         f"(indices 0..{n - 1}, or negative from the end)")
    return sorted({b % n for b in picked})


def _plan(model: nn.Module, position: str, stages: Any, blocks: Any) -> list[_Site]:
    skip = _inserted_paths(model)
    if position.startswith(GLOB_PREFIX):
        if stages != "all" or blocks != "all":
            raise ValueError("stages= and blocks= select blocks of known hosts; with 'after:<glob>' say which "
                             "modules in the glob itself (e.g. 'after:layer3.1.bn2') and leave them 'all'")
        pattern = position[len(GLOB_PREFIX):].strip()
        matches = match_glob(model, pattern, skip)
        if not matches:
            raise ValueError(f"position {position!r}: no module name matches {pattern!r}; module names look like "
                             f"{[n for n, _ in list(model.named_modules())[1:6]]} (see model.named_modules())")
        sites = []
        for name, module in matches:
            if GLOB_SLOT in module._modules:
                raise ValueError(f"{name} already has an inserted block ({name}.{GLOB_SLOT}); inserting twice at "
                                 "the same site is not allowed")
            sites.append(_Site(name, module, None, GLOB_SLOT, position, None, None))
        return sites

    hosts = [(n, m, a) for n, m in model.named_modules()
             if (a := adapter_for(m)) is not None and not _under(n, skip)]
    candidates = [(n, m, a) for n, m, a in hosts if position in a.slots and (a.has is None or a.has(m, position))]
    if not candidates:
        if not hosts:
            known = ", ".join(a.label for a in host_adapters())
            raise ValueError(
                f"no block of a known host type found in {type(model).__name__} for position {position!r} "
                f"(known: {known}); use position='after:<glob>' to insert after named modules"
            )
        have: dict[str, list[str]] = {}
        for _, _, a in hosts:
            have.setdefault(a.label, a.positions)
        listing = "; ".join(f"{label}: {', '.join(p)}" for label, p in have.items())
        raise ValueError(f"position {position!r} does not exist in the blocks of {type(model).__name__}. "
                         f"Their positions are -- {listing}")

    stage_paths = _stage_paths(model)
    grouped: dict[int | None, list[tuple[str, nn.Module, HostAdapter]]] = {}
    for n, m, a in candidates:
        stage = next((k + 1 for k, p in enumerate(stage_paths) if _under(n, [p])), None)
        if stage is None and a.last_stage and stage_paths:
            stage = len(stage_paths)
        grouped.setdefault(stage, []).append((n, m, a))

    wanted = _select_stages(stages, len(stage_paths))
    sites: list[_Site] = []
    stage_keys = [None] if stages == "all" and None in grouped else []
    stage_keys += [k for k in wanted if k in grouped]
    for k in stage_keys:
        group = grouped[k]
        for idx in _select_blocks(blocks, len(group), k):
            n, m, a = group[idx]
            sites.append(_Site(n, m, a, a.slots[position], position, k, idx))
    if not sites:
        have_stages = sorted(k for k in grouped if k is not None)
        raise ValueError(f"no site matched: position {position!r} exists in stages {have_stages} of this model, "
                         f"but stages={stages!r} selects none of them")
    for s in sites:
        current = _slot_value(s.host, s.slot)
        if current is not None and not isinstance(current, nn.Identity):
            raise ValueError(
                f"{s.path} already holds a block ({type(current).__name__}); inserting twice at the same site "
                f"is not allowed. Pick another position, swap the model's own SE-like modules with "
                f"position='replace' (replace_attn), or start from a model without it"
            )
    return sites


def _slot_value(host: nn.Module, slot: str) -> Any:
    if slot in host._modules:
        return host._modules[slot]
    return host.__dict__.get(slot)


# -- 2. probe -------------------------------------------------------------------------------------
class _Probe(nn.Module):
    """Identity that records the shape of what reaches it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.path} receives a {type(x).__name__}, not a tensor")
        self.shapes.append(tuple(x.shape))
        return x


def _install_probe(host: nn.Module, site: _Site, probe: _Probe) -> None:
    """Put ``probe`` where ``site``'s block will go, on the deep copy's ``host``."""
    if site.adapter is None:
        host.attn_after = probe
        host.register_forward_hook(apply_attn_after)
    else:
        _fill(host, site.adapter, site.position, probe)


def _probe(model: nn.Module, sites: list[_Site], size: tuple[int, int, int],
           install=_install_probe) -> list[tuple[int, int, int]]:
    """(C, H, W) each site sees in one batch-1 forward of a deep copy; ``install(host, site, probe)``
    puts a recording identity at the site (on the copy)."""
    twin = copy.deepcopy(model)
    probes = []
    for site in sites:
        host = twin.get_submodule(site.host_path) if site.host_path else twin
        probe = _Probe(site.path)
        install(host, site, probe)
        probes.append(probe)
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    twin.eval()
    try:
        with torch.no_grad():
            twin(x)
    except Exception as e:
        raise RuntimeError(
            f"the dummy forward of {type(model).__name__} at input_size={size} (batch 1) failed with "
            f"{type(e).__name__}: {e}. Pass the input_size=(C, H, W) the model takes"
        ) from e
    shapes = []
    for site, probe in zip(sites, probes):
        if len(probe.shapes) != 1:
            what = "never runs" if not probe.shapes else f"runs {len(probe.shapes)} times"
            hint = (" (a module reused within one forward, like torchvision's shared relu, would get the block "
                    "at every call; match a module called once, e.g. a bn)") if probe.shapes else ""
            raise ValueError(f"site {site.path} {what} in one forward of the model{hint}; a block there "
                             f"cannot be inserted")
        shape = probe.shapes[0]
        if len(shape) != 4:
            raise ValueError(f"site {site.path} sees a tensor of shape {shape}; attention blocks need (B, C, H, W)")
        shapes.append(tuple(int(v) for v in shape[1:]))
    return shapes


# -- 3. build -------------------------------------------------------------------------------------
def _build(attn: Any, attn_kwargs: dict[str, Any], init: str, site: _Site, shape: tuple[int, int, int],
           model: nn.Module, label: str) -> tuple[nn.Module, int]:
    channels, h, w = shape
    try:
        block = create_attn(attn, channels, **attn_kwargs)
    except (ValueError, TypeError) as e:
        raise type(e)(f"cannot insert {label} at {site.path} ({channels} channels, {h}x{w}): {e}") from e
    if not isinstance(block, nn.Module):
        raise TypeError(f"{label} built a {type(block).__name__}, not an nn.Module")
    if init == "identity":
        block = IdentityInit(block)
    ref = next(iter(site.host.parameters()), None)
    if ref is None:
        ref = next(iter(model.parameters()), None)
    if ref is not None:
        block = block.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    block.eval()
    x = torch.randn(1, channels, h, w, generator=torch.Generator().manual_seed(0))
    if ref is not None:
        x = x.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else x.dtype)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            y = block(x)
    except Exception as e:
        raise ValueError(f"{label} cannot run at {site.path} on a (1, {channels}, {h}, {w}) input: "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{label} at {site.path} turns (1, {channels}, {h}, {w}) into {got}; an inserted block "
                         "must keep the shape")
    block.train(model.training)
    object.__setattr__(block, _MARK, True)
    return block, int(counter.get_total_flops())


# -- 4. apply -------------------------------------------------------------------------------------
def _fill(host: nn.Module, adapter: HostAdapter, position: str, block: nn.Module) -> list:
    """Put ``block`` in ``host``'s slot for ``position``; return undo steps (callables)."""
    undo = []
    if position not in adapter.native and type(host) is not adapter.attn_class:
        old_cls = type(host)
        added = [s for s in adapter.attnzoo_slots() if s not in host.__dict__ and s not in host._modules]
        for s in added:
            object.__setattr__(host, s, None)
        host.__class__ = adapter.attn_class

        def _restore_class(host=host, old_cls=old_cls, added=added):
            host.__class__ = old_cls
            for s in added:
                host.__dict__.pop(s, None)
                host._modules.pop(s, None)

        undo.append(_restore_class)
    slot = adapter.slots[position]
    old = _slot_value(host, slot)
    setattr(host, slot, block)

    def _restore_slot(host=host, slot=slot, old=old):
        host._modules.pop(slot, None)
        if isinstance(old, nn.Module):
            setattr(host, slot, old)
        else:
            object.__setattr__(host, slot, old)

    undo.append(_restore_slot)
    return undo


def _apply(sites: list[_Site], blocks: list[nn.Module]) -> None:
    undo: list = []
    try:
        for site, block in zip(sites, blocks):
            if site.adapter is None:
                site.host.attn_after = block
                handle = site.host.register_forward_hook(apply_attn_after)
                undo.append(lambda h=site.host, handle=handle: (handle.remove(), h._modules.pop(GLOB_SLOT, None)))
            else:
                undo.extend(_fill(site.host, site.adapter, site.position, block))
    except BaseException:
        for step in reversed(undo):
            step()
        raise
