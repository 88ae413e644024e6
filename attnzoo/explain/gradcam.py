"""Grad-CAM: where in the image the evidence for a class lies, from one layer's activations and gradients.

Paper: R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh, D. Batra, "Grad-CAM: Visual
Explanations from Deep Networks via Gradient-based Localization", ICCV 2017.
https://arxiv.org/abs/1610.02391

With A^k (k = 1..K) the feature maps of the chosen layer and y^c the score (logit) of class c:

    alpha_k^c = 1/Z sum_ij d y^c / d A^k_ij          global-average-pooled gradients (Eq. 1)
    L^c       = ReLU(sum_k alpha_k^c A^k)             the class-discriminative map (Eq. 2)

For a network that ends in global average pooling and one linear layer, L^c equals the CAM of
Zhou et al. 2016 (https://arxiv.org/abs/1512.04150) up to the factor 1/Z.

NOTE: the map is upsampled to the input size bilinearly and divided by its maximum per image, so
it lies in [0, 1] (a map that is zero everywhere -- no positive evidence -- stays zero).
Default layer: the last stage of an attnzoo backbone (``stage_names[-1]``), else the last
``nn.Conv2d`` of the network.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GradCam", "grad_cam", "default_cam_layer"]


class GradCam(NamedTuple):
    """``cam`` (B, 1, H, W) in [0, 1] at input resolution, ``target`` (B,) the explained classes,
    ``probs`` (B, num_classes) the softmax of the logits, ``layer`` the explained layer's path."""

    cam: torch.Tensor
    target: torch.Tensor
    probs: torch.Tensor
    layer: str


def _module_path(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError(f"layer {type(module).__name__} is not a submodule of {type(model).__name__}")


def default_cam_layer(model: nn.Module) -> str:
    """Path of the layer Grad-CAM explains by default: the last stage of an attnzoo backbone
    (``model.stage_names[-1]``), else the last ``nn.Conv2d`` in ``model``."""
    stages = getattr(model, "stage_names", None)
    if stages:
        return stages[-1]
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d and no stage_names; pass layer= (a module or its path)")
    return convs[-1]


def _resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    if layer is None:
        layer = default_cam_layer(model)
    if isinstance(layer, nn.Module):
        return _module_path(model, layer), layer
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module, its dotted path (e.g. 'layer3') or None, got {type(layer).__name__}")
    try:
        return layer, model.get_submodule(layer)
    except AttributeError as e:
        import difflib

        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(layer, names, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"{type(model).__name__} has no layer {layer!r}{hint} (model.named_modules() lists them)") from e


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    target: int | torch.Tensor | None = None,
    layer: str | nn.Module | None = None,
) -> GradCam:
    """Grad-CAM of ``target`` (None: each image's predicted class; an int: that class for every
    image; a (B,) tensor: one class per image) at ``layer`` (see :func:`default_cam_layer`).

    ``model`` maps (B, C, H, W) images to (B, num_classes) logits; it runs in eval mode (its mode is
    restored afterwards) and its parameters' ``.grad`` are left untouched.
    """
    if not isinstance(images, torch.Tensor) or images.dim() not in (3, 4):
        raise ValueError(f"images must be a (B, C, H, W) or (C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    path, module = _resolve_layer(model, layer)
    param = next(iter(model.parameters()), None)
    if param is not None:
        images = images.to(param.device)
    seen: list[torch.Tensor] = []

    def hook(mod, args, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise ValueError(f"Grad-CAM layer {path!r} must output a (B, K, h, w) feature map, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        seen.append(out)
        # later in-place ops (e.g. ReLU(inplace=True)) act on a copy, so `out` keeps its values
        return out.clone() if not isinstance(output, (tuple, list)) else output

    was_training = model.training
    model.eval()
    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images)
            if logits.dim() != 2:
                raise ValueError(f"Grad-CAM needs (B, num_classes) logits, the model gave {tuple(logits.shape)}")
            if not seen:
                raise ValueError(f"layer {path!r} did not run in the forward pass; choose a layer the model uses")
            activation = seen[-1]  # (B, K, h, w)
            b, num_classes = logits.shape
            if target is None:
                cls = logits.argmax(1)
            else:
                cls = torch.as_tensor(target, device=logits.device).long().expand(b) if not (
                    isinstance(target, torch.Tensor) and target.dim() == 1) else target.to(logits.device).long()
                if cls.shape != (b,) or (cls < 0).any() or (cls >= num_classes).any():
                    raise ValueError(f"target must be a class in [0, {num_classes}) or a ({b},) tensor of them, got {target!r}")
            score = logits.gather(1, cls[:, None]).sum()  # sum of y^c over the batch
            grads = torch.autograd.grad(score, activation)[0]  # (B, K, h, w)
    finally:
        handle.remove()
        model.train(was_training)
    with torch.no_grad():
        alpha = grads.float().mean((2, 3), keepdim=True)  # (B, K, 1, 1), Eq. 1
        cam = F.relu((alpha * activation.detach().float()).sum(1, keepdim=True))  # (B, 1, h, w), Eq. 2
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)  # (B, 1, H, W)
        peak = cam.flatten(1).amax(1).clamp_min(torch.finfo(cam.dtype).tiny).view(-1, 1, 1, 1)
        cam = (cam / peak).clamp(0, 1)
        probs = logits.detach().float().softmax(1)
    return GradCam(cam, cls.detach(), probs, path)
