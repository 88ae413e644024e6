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
import numbers
import operator
import re
import types
import typing
from typing import Any, Callable

import numpy as np

from torch import nn

from .errors import ArgumentTypeError
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


def _type_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    """The constructor's annotations, resolved ({} when they cannot be read)."""
    target = factory.func if isinstance(factory, functools.partial) else factory
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001  (unresolvable annotations: nothing to check against)
        return {}


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits annotation ``hint``; a hint this does not understand accepts anything."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if hint is str:
        return isinstance(value, str)
    if origin is type or hint is type:
        return callable(value)  # a class, or a factory standing in for one (a partial)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return len(set(args)) != 1 or all(_matches(v, args[0]) for v in value)
    return True


def _describe_hint(hint: Any) -> str:
    if hint is type(None) or hint is None:
        return "None"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe_hint(h) for h in typing.get_args(hint)))
    if origin is type:
        return "a module class"
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a {origin.__name__} of {_describe_hint(args[0])}" if len(set(args)) == 1 else f"a {origin.__name__}"
    return {int: "an int", float: "a number", bool: "True or False", str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _kwarg_type_errors(name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    """[(argument, message)] for the keyword values that do not fit the constructor's annotations;
    a message names the block, the argument, the expected type and the value received. A bool is
    never taken for a number."""
    hints = _type_hints(factory)
    out = []
    for key, value in kwargs.items():
        hint = hints.get(key)
        if hint is None or _matches(value, hint):
            continue
        note = " (True/False is not a number here)" if isinstance(value, (bool, np.bool_)) else ""
        out.append((key, f"attention block {name!r}: argument {key!r} expects {_describe_hint(hint)}, got {value!r} "
                         f"({type(value).__name__}){note}"))
    return out


def _check_kwarg_types(name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Raise :class:`attnzoo.errors.ArgumentTypeError` for the first keyword value of the wrong type."""
    errors = _kwarg_type_errors(name, factory, kwargs)
    if errors:
        raise ArgumentTypeError(errors[0][1])


def _build_checked(name: str, factory: Callable[..., nn.Module], channels: int, kwargs: dict[str, Any]) -> nn.Module:
    """``factory(channels, **kwargs)``; a value of the wrong type is refused even where the block would
    take it (``rd_ratio=True`` as 1.0). Where the block has its own message about that argument
    (e.g. the kernel sizes its paper tabulates), it is appended to the type error."""
    errors = _kwarg_type_errors(name, factory, kwargs)
    if not errors:
        return factory(channels, **kwargs)
    key, message = errors[0]
    try:
        factory(channels, **kwargs)
    except (ValueError, TypeError) as e:
        if re.search(rf"\b{re.escape(key)}\b", str(e)):
            raise ArgumentTypeError(f"{message}; {e}") from e
        raise ArgumentTypeError(message) from e
    raise ArgumentTypeError(message)


def _as_channels(spec: Any, channels: Any) -> Any:
    """numpy integers (and other integral numbers) become a plain int; anything else is left for the block."""
    if isinstance(channels, numbers.Integral) and not isinstance(channels, (bool, np.bool_)):
        return operator.index(channels)
    return channels


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
        _check_kwarg_types(name, factory, kwargs)
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
    channels = _as_channels(spec, channels)
    if isinstance(spec, str):
        name, spec_kwargs = parse_spec(spec)
        from .blocks.base import check_channels

        check_channels(name, channels)  # before any block allocates C-sized weights
        factory = get_attn(name)
        merged = {**spec_kwargs, **kwargs}  # keyword arguments override those inside the string
        _check_kwargs(name, factory, merged)
        return _build_checked(name, factory, channels, merged)
    factory = get_attn(spec)
    return _build_checked(getattr(factory, "__name__", None) or repr(factory), factory, channels, kwargs)
