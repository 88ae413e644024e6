"""timm and torchvision classification models as attnzoo backbones: ``timm:<name>`` and ``tv:<name>``.

``create_backbone("timm:convnext_atto", num_classes=10, in_chans=1, pretrained=True)`` builds the
model through its own library and adapts it to the data:

* timm: ``timm.create_model(name, pretrained=..., num_classes=..., in_chans=...)``; timm adapts the
  first conv and the classifier itself when loading weights. ``pretrained_file=path`` loads a local
  checkpoint instead of the hub: ``pretrained_cfg_overlay=dict(file=path)``, timm's own way.
* torchvision: ``torchvision.models.get_model(name, weights=...)``. With ``pretrained=True`` the
  weights are the model's ``DEFAULT`` ones (a string names others, e.g. ``"IMAGENET1K_V1"``), or, with
  ``pretrained_file=path``, a local ``state_dict`` file (``torch.save(model.state_dict(), path)``;
  a dict holding it under ``state_dict`` or ``model`` works too), loaded strictly into the model at
  the checkpoint's own head size. Then, as timm does: a different ``in_chans`` gets a new first conv
  whose weights are timm's ``adapt_input_conv`` of the pretrained ones (summed for 1 channel,
  repeated and rescaled for more), and a different ``num_classes`` a freshly initialised classifier
  (the last ``nn.Linear`` of the model: ``fc``, ``classifier[-1]``, ``heads.head``).
  Without pretrained weights the model is built at ``num_classes`` directly, and ``in_chans != 3``
  replaces the first conv by a fresh one.

NOTE: torchvision's and timm's hubs download at build time; on a machine without internet use
``pretrained_file``. Fine-tuning a pretrained model with a new block: insert it with
``init="identity"`` (the network's outputs start unchanged); see ``attnzoo.insertion``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["EXTERNAL_PREFIXES", "is_external", "create_external_backbone"]

EXTERNAL_PREFIXES = {"timm": "timm", "tv": "torchvision", "torchvision": "torchvision"}


def is_external(name: str) -> bool:
    """Whether ``name`` is ``timm:<model>`` / ``tv:<model>`` rather than an attnzoo backbone."""
    return isinstance(name, str) and name.split(":", 1)[0] in EXTERNAL_PREFIXES and ":" in name


def create_external_backbone(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool | str = False,
    pretrained_file: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``timm:<model>`` or ``tv:<model>`` (see the module docstring); ``kwargs`` go to the library."""
    prefix, model_name = name.split(":", 1)
    library = EXTERNAL_PREFIXES[prefix]
    model_name = model_name.strip()
    if not model_name:
        raise ValueError(f"backbone {name!r} names no model; e.g. 'timm:convnext_atto' or 'tv:mobilenet_v3_small'")
    if pretrained_file is not None:
        pretrained_file = Path(pretrained_file).expanduser()
        if not pretrained_file.is_file():
            raise FileNotFoundError(f"pretrained_file {str(pretrained_file)!r} does not exist")
        pretrained = pretrained or True
    if library == "timm":
        return _timm(model_name, num_classes, in_chans, pretrained, pretrained_file, kwargs)
    return _torchvision(model_name, num_classes, in_chans, pretrained, pretrained_file, kwargs)


def _timm(name: str, num_classes: int, in_chans: int, pretrained: bool | str, file: Path | None,
          kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"timm has no model {name!r}{hint} (timm.list_models() lists them)")
    if isinstance(pretrained, str):
        raise ValueError("for timm models pretrained is true/false; pick the weights with the model name's tag "
                         "(e.g. 'timm:resnet50.a1_in1k') or pass pretrained_file")
    if file is not None:
        kwargs = {**kwargs, "pretrained_cfg_overlay": {**kwargs.get("pretrained_cfg_overlay", {}), "file": str(file)}}
    return timm.create_model(name, pretrained=bool(pretrained), num_classes=num_classes, in_chans=in_chans, **kwargs)


def _torchvision(name: str, num_classes: int, in_chans: int, pretrained: bool | str, file: Path | None,
                 kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"torchvision has no classification model {name!r}{hint} "
                         "(torchvision.models.list_models(module=torchvision.models) lists them)")
    if not pretrained:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        if in_chans != 3:
            _replace_first_conv(model, in_chans, adapt=False)
        return model
    if file is not None:
        state = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            state = state.get("state_dict", state.get("model", state))
        head_classes = _head_classes(state)
        build = {"num_classes": head_classes} if head_classes is not None else {}
        model = torchvision.models.get_model(name, weights=None, **build, **kwargs)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise RuntimeError(f"pretrained_file {str(file)!r} does not fit torchvision {name}: {e}") from e
    else:
        weights = "DEFAULT" if pretrained is True else pretrained
        model = torchvision.models.get_model(name, weights=weights, **kwargs)  # downloads (the hub)
    if in_chans != 3:
        _replace_first_conv(model, in_chans, adapt=True)
    head_path, head = _last_linear(model)
    if head.out_features != num_classes:
        _set(model, head_path, nn.Linear(head.in_features, num_classes, bias=head.bias is not None,
                                         device=head.weight.device, dtype=head.weight.dtype))
    return model


def _head_classes(state: dict[str, torch.Tensor]) -> int | None:
    """Rows of the last 2-D weight in the state_dict: the classifier's number of classes."""
    weights = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(weights[-1].shape[0]) if weights else None


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to resize to num_classes; "
                         "build it at its own number of classes or use a timm model")
    return found[-1]


def _replace_first_conv(model: nn.Module, in_chans: int, adapt: bool) -> None:
    path, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None or conv.in_channels != 3:
        raise ValueError(f"cannot adapt {type(model).__name__} to in_chans={in_chans}: its first conv "
                         f"{'is missing' if conv is None else f'takes {conv.in_channels} channels, not 3'}")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    if adapt:
        from timm.models import adapt_input_conv

        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    _set(model, path, new)
