"""Backbones attention blocks are inserted into: CIFAR/ImageNet ResNets and YOLO-like classifiers.

``create_backbone("resnet20", num_classes=10, in_chans=1, attn="se")`` builds a registered backbone
and, with ``attn=``, inserts that block at the backbone's default position
(``attnzoo.insertion.insert_attn(model, attn, position=model.default_attn_position)``).

Every backbone module has ``num_classes``, ``in_chans``, ``default_attn_position`` (str),
``default_input_size`` ((in_chans, H, W) it is meant for), ``stage_names`` (attribute names of its
stages in order, each an ``nn.Sequential`` of blocks), ``forward_features(x)`` (last feature map
before pooling), ``forward_head(feats)`` and ``forward(x)``.

``create_backbone("timm:convnext_atto", ...)`` and ``create_backbone("tv:mobilenet_v3_small", ...)``
build any timm or torchvision classification model instead (``pretrained=True``, ``pretrained_file=``;
see ``external.py``); those are not in the registry and have only the attributes their library gives.

Registry metadata: ``family`` ("resnet" | "yolo"), ``paper``, ``year``, ``link``,
``default_position`` and ``input_size`` (the (3, H, W) the default configuration is meant for).
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..registry import Registry, RegistryEntry, accepted_kwargs, default_kwargs
from .external import create_external_backbone, is_external

__all__ = [
    "BACKBONE_REGISTRY",
    "FAMILIES",
    "register_backbone",
    "create_backbone",
    "list_backbones",
    "backbone_info",
]

FAMILIES = ("resnet", "yolo")
_REQUIRED_META = ("family", "paper", "year", "link", "default_position", "input_size")

BACKBONE_REGISTRY = Registry("backbone", "attnzoo.list_backbones()")


def register_backbone(name: str, factory: Callable[..., nn.Module] | None = None, **metadata: Any):
    """Register a backbone factory under ``name``; usable as a decorator.

    The factory takes ``num_classes`` and ``in_chans`` by keyword. Metadata: ``family`` (one of
    FAMILIES), ``paper``, ``year``, ``link``, ``default_position``, ``input_size`` (3, H, W).
    """
    family = metadata.get("family")
    if family not in FAMILIES:
        raise ValueError(f"register_backbone({name!r}): family must be one of {FAMILIES}, got {family!r}")
    missing = [k for k in _REQUIRED_META if k not in metadata]
    if missing:
        raise ValueError(f"register_backbone({name!r}): missing metadata {missing}")

    def _register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        names, _ = accepted_kwargs(fn)
        for required in ("num_classes", "in_chans"):
            if required not in names:
                raise TypeError(f"register_backbone({name!r}): the factory must accept {required}=")
        BACKBONE_REGISTRY.register(name, fn, **metadata)
        return fn

    return _register if factory is None else _register(factory)


def list_backbones(filter: str | list[str] = "*", family: str | None = None) -> list[str]:
    """Registered backbone names matching fnmatch ``filter`` (and ``family`` if given), sorted."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown backbone family {family!r}; choose one of {FAMILIES}")
    return BACKBONE_REGISTRY.names(filter, family=family)


def backbone_info(name: str) -> RegistryEntry:
    """The registry entry (factory, metadata, defaults) of a registered backbone."""
    return BACKBONE_REGISTRY.entry(name)


def create_backbone(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    attn: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the backbone registered as ``name``.

    ``kwargs`` go to the backbone's factory (e.g. ``stem="cifar"`` for resnet18, ``shortcut="B"``
    for resnet20); an unknown keyword raises ``TypeError`` naming the accepted ones. ``attn`` is
    shorthand for ``insert_attn(model, attn, position=model.default_attn_position)``; use
    ``attnzoo.insert_attn`` directly for other positions, stages or blocks.

    ``name`` may also be ``"timm:<model>"`` or ``"tv:<model>"`` (any timm / torchvision classification
    model; ``kwargs`` then go to that library, plus ``pretrained=True`` and ``pretrained_file=path``
    for a local checkpoint: see ``attnzoo.backbones.external``); in_chans and num_classes are adapted.
    """
    if not isinstance(name, str):
        raise TypeError(f"create_backbone needs a registered name (str), got {type(name).__name__}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int (1 for grey images, 3 for RGB), got {in_chans!r}")
    if is_external(name):
        model = create_external_backbone(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
        if attn is not None and not (isinstance(attn, str) and attn.strip().lower() in ("", "none")):
            from ..insertion import insert_attn

            insert_attn(model, attn, input_size=(in_chans, 224, 224))
        return model
    if kwargs.get("pretrained") or kwargs.get("pretrained_file"):
        raise ValueError(f"attnzoo's own backbone {name!r} has no pretrained weights; for a pretrained network "
                         "name a timm or torchvision model, e.g. 'timm:resnet18' or 'tv:resnet18'")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained", "pretrained_file")}
    entry = BACKBONE_REGISTRY.entry(name)
    names, var_kw = accepted_kwargs(entry.factory)
    unknown = [k for k in kwargs if k not in names]
    if unknown and not var_kw:
        accepted = ", ".join(
            f"{k}={v!r}" for k, v in default_kwargs(entry.factory).items()
            if k in names and k not in ("num_classes", "in_chans")
        )
        raise TypeError(
            f"backbone {name!r} got unknown argument(s) {unknown}; besides num_classes, in_chans "
            f"and attn it accepts: {accepted or 'nothing'}"
        )
    model = entry.factory(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if attn is not None and not (isinstance(attn, str) and attn.strip().lower() in ("", "none")):
        from ..insertion import insert_attn  # lazy: insertion imports the backbones' block classes

        insert_attn(model, attn, position=model.default_attn_position, input_size=model.default_input_size)
    return model


# Imported last: the modules below register themselves with register_backbone defined above.
from . import resnet, yolo  # noqa: E402,F401
