"""timm-style factory for attention blocks: register_attn, get_attn, create_attn, list_attn.

A *spec* names a block in any of these forms:

* a registered name, ``"cbam"``;
* a name with literal arguments, ``"se(rd_ratio=0.25)"`` (parsed, never evaluated);
* ``"timm:<name>"``, timm's own block of that name (for comparisons);
* a class or ``functools.partial`` taking ``channels`` first;
* an ``nn.Module`` instance (returned as is by ``create_attn``);
* ``None`` or ``""``: no block.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from torch import nn

from .registry import Registry, RegistryEntry, accepted_kwargs, default_kwargs
from .spec import parse_spec

__all__ = ["register_attn", "get_attn", "create_attn", "list_attn", "attn_info", "FAMILIES"]

FAMILIES = ("channel", "spatial", "channel+spatial", "self-attention")
# the taxonomy of self-attention blocks (Xu et al. 2015, Luong et al. 2015): where a query looks, how it
# weighs what it sees, and the alignment-score function e(q, k) (attnzoo/blocks/mhsa.py has the formulas)
SCOPES = ("global", "local")
HARDNESS = ("soft", "hard")
SCORE_FUNCTIONS = ("scaled_dot", "dot", "general", "additive", "cosine", "location")
_REQUIRED_META = ("family", "paper", "authors", "year", "link")

ATTN_REGISTRY = Registry("attention block", "attnzoo.list_attn()")

AttnSpec = "str | type[nn.Module] | functools.partial | nn.Module | None"


def register_attn(name: str, factory: Callable[..., nn.Module] | None = None, **metadata: Any):
    """Register a block class or factory under ``name``; usable as a decorator.

    Metadata: ``family`` (one of FAMILIES), ``paper``, ``authors``, ``year``, ``link``;
    optionally ``onnx=False`` with ``onnx_note`` for blocks that cannot export, and for self-attention
    ``scope`` (SCOPES), ``hardness`` (HARDNESS) and ``score`` (SCORE_FUNCTIONS), see ``_check_taxonomy``.
    A duplicate name raises ``ValueError``.
    """
    family = metadata.get("family")
    if family not in FAMILIES:
        raise ValueError(f"register_attn({name!r}): family must be one of {FAMILIES}, got {family!r}")
    missing = [k for k in _REQUIRED_META if k not in metadata]
    if missing:
        raise ValueError(f"register_attn({name!r}): missing metadata {missing}; every block names its paper")
    metadata.setdefault("onnx", True)
    _check_taxonomy(name, metadata)

    def _register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        target = fn.func if isinstance(fn, functools.partial) else fn
        if inspect.isclass(target):
            _accept_factory_kwargs(target)
        ATTN_REGISTRY.register(name, fn, **metadata)
        return fn

    return _register if factory is None else _register(factory)


def _check_taxonomy(name: str, metadata: dict[str, Any]) -> None:
    """Fill in and validate ``scope``, ``hardness`` and ``score`` (in place).

    Self-attention blocks default to ``scope="global"``, ``hardness="soft"`` and ``score=None`` (not
    declared); other families default to None for all three (the terms do not apply to them).
    ``score`` is one of SCORE_FUNCTIONS or None; it names the block's *default* score function.
    """
    self_attn = metadata.get("family") == "self-attention"
    metadata.setdefault("scope", "global" if self_attn else None)
    metadata.setdefault("hardness", "soft" if self_attn else None)
    metadata.setdefault("score", None)
    for key, allowed in (("scope", SCOPES), ("hardness", HARDNESS), ("score", SCORE_FUNCTIONS)):
        value = metadata[key]
        if value is not None and value not in allowed:
            raise ValueError(f"register_attn({name!r}): {key} must be one of {allowed} or None, got {value!r}")


# The keyword arguments timm (1.0.31) passes to a block in its ``attn_layer`` / ``se_layer`` slots:
# resnet/sknet/res2net/nfnet/byobnet/vovnet pass device/dtype (plus the config's attn_kwargs, e.g.
# rd_ratio, rd_divisor); cspnet and efficientnet/mobilenetv5's blocks add act_layer; efficientnet's
# builder adds rd_ratio (and probes ``se_layer(8, rd_ratio=1.0)``); mobilenetv3/hardcorenas build
# their SE as a partial with gate_layer, force_act_layer and rd_round_fn; regnet passes rd_channels.
TIMM_SLOT_KWARGS = (
    "act_layer", "gate_layer", "rd_ratio", "rd_channels", "rd_divisor", "force_act_layer", "rd_round_fn",
    "device", "dtype",
)


def timm_kwargs_ignored(cls: type) -> tuple[str, ...]:
    """The timm slot keywords a block class accepts but cannot use (it has no such part)."""
    return getattr(cls, "_attnzoo_timm_ignored", ())


def _accept_factory_kwargs(cls: type) -> None:
    """Let a block class take every keyword timm passes to its attention slots (``TIMM_SLOT_KWARGS``).

    A keyword the class declares is the class's own business. Of the rest:

    * ``device`` / ``dtype``: the block is built as usual, then moved with ``.to()``;
    * ``force_act_layer`` (timm's SqueezeExcite: it overrides ``act_layer``): becomes ``act_layer``
      when not None, if the block has an activation;
    * ``rd_round_fn`` (timm's SqueezeExcite: reduced width = ``rd_round_fn(C * rd_ratio)``): sets
      ``rd_channels`` that way when the block has a reduction and ``rd_channels`` was not given;
    * any other (``act_layer`` on a block without an activation, ``rd_ratio`` on one without a
      reduction, ...): ignored, because nothing in the block could take it. The class docstring
      gets a sentence naming them, and ``timm_kwargs_ignored(cls)`` returns them.

    Unknown keywords that are not timm's still raise, here and in ``create_attn``.
    """
    if getattr(cls.__init__, "_attnzoo_factory_kwargs", False):
        return
    sig = inspect.signature(cls.__init__)
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # a block taking **kwargs handles what it gets
    missing = tuple(k for k in TIMM_SLOT_KWARGS if k not in params)
    if not missing:
        return
    has_act = "act_layer" in params
    has_rd = "rd_channels" in params and "rd_ratio" in params
    rd_ratio_default = params["rd_ratio"].default if has_rd else None
    # what the block cannot use; force_act_layer / rd_round_fn are used when their target exists
    ignored = tuple(
        k for k in missing
        if k not in ("device", "dtype")
        and not (k == "force_act_layer" and has_act)
        and not (k == "rd_round_fn" and has_rd)
    )
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        timm_kw = {k: kwargs.pop(k) for k in missing if k in kwargs}
        force_act = timm_kw.get("force_act_layer")
        if force_act is not None and has_act:
            kwargs["act_layer"] = force_act
        round_fn = timm_kw.get("rd_round_fn")
        if round_fn is not None and has_rd and kwargs.get("rd_channels") is None:
            channels = args[0] if args else kwargs.get("channels")
            rd_ratio = kwargs.get("rd_ratio", rd_ratio_default)
            if isinstance(channels, int) and isinstance(rd_ratio, (int, float)):
                kwargs["rd_channels"] = int(round_fn(channels * rd_ratio))
        init(self, *args, **kwargs)
        device, dtype = timm_kw.get("device"), timm_kw.get("dtype")
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    __init__._attnzoo_factory_kwargs = True
    cls.__init__ = __init__
    cls._attnzoo_timm_ignored = ignored
    if ignored:
        cls.__doc__ = (cls.__doc__ or cls.__name__).rstrip() + (
            "\n\n    timm interop: accepts and ignores " + ", ".join(f"``{k}``" for k in ignored)
            + " (timm passes them to its attention slots; this block has nothing they could set)."
        )


def list_attn(
    filter: str | list[str] = "*",
    family: str | None = None,
    scope: str | None = None,
    hardness: str | None = None,
    score: str | None = None,
) -> list[str]:
    """Registered block names matching fnmatch ``filter`` and every metadata value given, sorted.

    ``list_attn(scope="local")``, ``list_attn(hardness="hard")``, ``list_attn(score="cosine")``.
    """
    for key, value, allowed in (("family", family, FAMILIES), ("scope", scope, SCOPES),
                                ("hardness", hardness, HARDNESS), ("score", score, SCORE_FUNCTIONS)):
        if value is not None and value not in allowed:
            raise ValueError(f"unknown {key} {value!r}; choose one of {allowed}")
    return ATTN_REGISTRY.names(filter, family=family, scope=scope, hardness=hardness, score=score)


def attn_info(name: str) -> RegistryEntry:
    """The registry entry (factory, metadata, defaults) of a registered block."""
    return ATTN_REGISTRY.entry(name)


def _is_none(spec: Any) -> bool:
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none"))


def _timm_get(name: str) -> Callable[..., nn.Module]:
    from timm.layers import get_attn as timm_get_attn

    try:
        cls = timm_get_attn(name)
    except AssertionError:
        cls = None
    if cls is None:
        raise KeyError(f"timm has no attention block {name!r} (see timm.layers.create_attn for its names)")
    return cls


def _check_kwargs(name: str, factory: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    names, var_kw = accepted_kwargs(factory)
    unknown = [k for k in kwargs if k not in names and k not in TIMM_SLOT_KWARGS]
    if unknown and not var_kw:
        raise TypeError(
            f"attention block {name!r} got unknown argument(s) {unknown}; it accepts: "
            + ", ".join(f"{k}={v!r}" for k, v in default_kwargs(factory).items() if k in names)
        )


def get_attn(spec: Any) -> Callable[..., nn.Module] | None:
    """The class or partial a spec names, unbuilt, e.g. for timm's ``attn_layer=``."""
    if _is_none(spec):
        return None
    if isinstance(spec, nn.Module):
        raise TypeError("get_attn needs a name, class or partial, not a built module; use create_attn instead")
    if isinstance(spec, str):
        name, kwargs = parse_spec(spec)
        if name.startswith("timm:"):
            factory = _timm_get(name[len("timm:"):])
        else:
            factory = ATTN_REGISTRY.entry(name).factory
        if not kwargs:
            return factory
        _check_kwargs(name, factory, kwargs)
        return functools.partial(factory, **kwargs)
    if inspect.isclass(spec) or callable(spec):
        return spec
    raise TypeError(f"cannot read an attention spec of type {type(spec).__name__}: {spec!r}; "
                    "pass a name such as 'se', a class, a partial, a module, or None")


def create_attn(spec: Any, channels: int | None = None, **kwargs: Any) -> nn.Module | None:
    """Build the block a spec names for ``channels``; keyword arguments override the spec's own."""
    if _is_none(spec):
        return None
    if isinstance(spec, nn.Module):
        return spec
    if channels is None:
        raise TypeError(f"create_attn({spec!r}) needs channels, the C of the (B, C, H, W) input it will see")
    if isinstance(spec, str):
        name, spec_kwargs = parse_spec(spec)
        factory = get_attn(name)
        merged = {**spec_kwargs, **kwargs}  # keyword arguments override those inside the string
        _check_kwargs(name, factory, merged)
        return factory(channels, **merged)
    return get_attn(spec)(channels, **kwargs)
