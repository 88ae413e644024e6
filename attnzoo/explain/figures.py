"""Pictures of what the blocks attend to (matplotlib, Agg; no display needed).

* :func:`image_figure` -- one image, one network: the input, Grad-CAM of the predicted class, the
  spatial attention of every site overlaid at input resolution, the weights of the chosen query of
  every self-attention site, and bar charts of the strongest channel weights of every channel site.
* :func:`grid_figure` -- several networks trained on the same data, side by side on the same
  images: per network the attention of its deepest spatially resolved block and its Grad-CAM.

Every panel's title names what it shows (block, site, class); heat maps are min-max scaled per
panel (jet colour map, red = highest) and the title gives the raw range, since gates of different
blocks live on different scales.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from ..blocks.base import AttnTap
from .capture import AttentionMaps, Query, capture_attention, site_title
from .gradcam import GradCam, grad_cam
from .images import ExplainImages, LoadedModel

__all__ = ["Explanation", "explain_model", "image_figure", "grid_figure", "HEAT_CMAP"]

HEAT_CMAP = "jet"
HEAT_ALPHA = 0.45
TITLE_SIZE = 8


@dataclass
class Explanation:
    """What one network made of a batch: its attention maps and the Grad-CAM of its predictions."""

    label: str
    description: str
    maps: AttentionMaps
    cam: GradCam


def explain_model(
    model: LoadedModel | nn.Module,
    images: ExplainImages,
    label: str | None = None,
    query: Query = (0.5, 0.5),
    cam_layer: str | nn.Module | None = None,
) -> Explanation:
    """Capture the attention of ``model`` on ``images`` and compute Grad-CAM of each prediction.
    A network without attention blocks gives empty maps (its Grad-CAM is still drawn)."""
    if isinstance(model, LoadedModel):
        net, label, description = model.network, label or model.label, model.description
    elif isinstance(model, nn.Module):
        net, label, description = model, label or type(model).__name__, type(model).__name__
    else:
        raise TypeError(f"model must be a LoadedModel or a torch.nn.Module, got {type(model).__name__}")
    if any(isinstance(m, AttnTap) for m in net.modules()):
        maps = capture_attention(net, images.tensor, query=query)
    else:
        maps = AttentionMaps()
    return Explanation(label, description, maps, grad_cam(net, images.tensor, layer=cam_layer))


# -- drawing helpers ----------------------------------------------------------------------------
def _heat(m: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map -> (H, W) at input resolution, min-max scaled to [0, 1] (constant -> 0)."""
    m = m.detach().float().cpu()[None, None]  # (1, 1, h, w)
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    m = m[0, 0]
    lo, hi = float(m.min()), float(m.max())
    return ((m - lo) / (hi - lo)).numpy() if hi > lo else np.zeros(tuple(size), dtype=np.float32)


def _show(ax: Axes, display: torch.Tensor) -> None:
    """Draw an (H, W, C) image in [0, 1]."""
    img = display.numpy()
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
    elif img.shape[-1] == 3:
        ax.imshow(img)
    else:  # other channel counts: their mean, in grey
        ax.imshow(img.mean(-1), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax: Axes, display: torch.Tensor, heat: np.ndarray, title: str) -> None:
    """The heat map over the image in grey (colours of the image would compete with the heat map)."""
    grey = display.mean(-1, keepdim=True) if display.shape[-1] != 3 else (
        display @ torch.tensor([0.299, 0.587, 0.114])).unsqueeze(-1)  # (H, W, 1), ITU-R 601 luma
    _show(ax, grey)
    ax.imshow(heat, cmap=HEAT_CMAP, alpha=HEAT_ALPHA, vmin=0, vmax=1)
    ax.set_title(title, fontsize=TITLE_SIZE)


def _range(t: torch.Tensor) -> str:
    return f"{float(t.min()):.3g}..{float(t.max()):.3g}"


def _prediction(expl: Explanation, images: ExplainImages, i: int) -> str:
    c = int(expl.cam.target[i])
    return f"'{images.class_name(c)}' ({float(expl.cam.probs[i, c]):.0%})"


def _select(maps: AttentionMaps, sites: str | Sequence[str] | None) -> list[str]:
    if sites is None:
        return list(maps)
    patterns = [sites] if isinstance(sites, str) else list(sites)
    return [k for k in maps if any(fnmatch.fnmatchcase(k, p) or fnmatch.fnmatchcase(site_title(k), p) for p in patterns)]


def _deepest_block(maps: AttentionMaps) -> tuple[str, list[str]] | None:
    """(block path, its sites) of the last block (in forward order) with spatial maps, else with
    query maps, else None."""
    for kind in ("spatial", "query"):
        sites = [k for k in maps if maps.info[k].kind == kind]
        if sites:
            block = maps.info[sites[-1]].block_path
            return block, [k for k in sites if maps.info[k].block_path == block]
    return None


def _block_heat(maps: AttentionMaps, sites: list[str], i: int, size: tuple[int, int]) -> np.ndarray:
    """Mean of the per-site scaled maps of one block (heads averaged for query sites)."""
    heats = [_heat(maps[k][i].mean(0), size) for k in sites]
    return np.mean(heats, axis=0)


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


# -- one image, one network ---------------------------------------------------------------------
def image_figure(
    expl: Explanation,
    images: ExplainImages,
    index: int,
    out_png: str | Path,
    top_k: int = 12,
    sites: str | Sequence[str] | None = None,
    ncols: int = 5,
) -> Path:
    """Write the figure of image ``index`` for one network; ``sites``: fnmatch pattern(s) choosing
    which sites to draw (default all); ``top_k``: channels per bar chart. Returns the PNG path."""
    if not 0 <= index < len(images.tensor):
        raise IndexError(f"image index {index} out of range for {len(images.tensor)} images")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    display = images.display[index]
    size = tuple(display.shape[:2])
    maps = expl.maps
    panels: list[Callable[[Axes], None]] = []

    def input_panel(ax: Axes) -> None:
        _show(ax, display)
        true = images.targets[index]
        ax.set_title(f"input: {images.names[index]}" + (f"\ntrue class '{images.class_name(true)}'" if true is not None else ""),
                     fontsize=TITLE_SIZE)

    def cam_panel(ax: Axes) -> None:
        _overlay(ax, display, expl.cam.cam[index, 0].cpu().numpy(),
                 f"Grad-CAM of predicted {_prediction(expl, images, index)}\nat layer '{expl.cam.layer}'")

    panels += [input_panel, cam_panel]
    chosen = _select(maps, sites)
    for kind in ("spatial", "query", "channel"):
        for k in chosen:
            info = maps.info[k]
            if info.kind != kind:
                continue
            t = maps[k][index]
            where = f"{site_title(k)} ({info.block_type})"
            if kind == "spatial":
                panels.append(lambda ax, t=t, where=where: _overlay(
                    ax, display, _heat(t[0], size), f"spatial attention\n{where}\nvalues {_range(t)}"))
            elif kind == "query":
                def query_panel(ax: Axes, t=t, where=where, info=info) -> None:
                    heads = t.shape[0]
                    _overlay(ax, display, _heat(t.mean(0), size),
                             f"attention of query x ({'mean of %d heads' % heads if heads > 1 else '1 head'})\n{where}")
                    r, c = info.query
                    h, w = info.size
                    ax.plot([(c + 0.5) * size[1] / w - 0.5], [(r + 0.5) * size[0] / h - 0.5], "wx", ms=8, mew=2)
                panels.append(query_panel)
            else:
                def bar_panel(ax: Axes, t=t, where=where) -> None:
                    k_ = min(top_k, t.numel())
                    vals, idx = t.flatten().topk(k_)
                    ax.bar(range(k_), vals.cpu().numpy(), color="tab:blue")
                    ax.set_xticks(range(k_))
                    ax.set_xticklabels([str(int(j)) for j in idx], fontsize=6, rotation=90)
                    ax.tick_params(axis="y", labelsize=6)
                    ax.set_xlabel("channel", fontsize=7)
                    ax.set_title(f"strongest channel weights ({k_} of {t.numel()})\n{where}", fontsize=TITLE_SIZE)
                panels.append(bar_panel)
    if not chosen:
        def note(ax: Axes) -> None:
            ax.axis("off")
            ax.text(0.5, 0.5, "no attention sites\n(no attnzoo block in this network)" if not maps
                    else f"no site matches {sites!r}", ha="center", va="center", fontsize=TITLE_SIZE)
        panels.append(note)

    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.0 * ncols, 3.1 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax, draw in zip(axes, panels):
        draw(ax)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{expl.label}: {expl.description} -- {images.names[index]}, predicted {_prediction(expl, images, index)}",
                 fontsize=10)
    return _save(fig, out_png)


# -- several networks, several images -----------------------------------------------------------
def grid_figure(explanations: Sequence[Explanation], images: ExplainImages, out_png: str | Path) -> Path:
    """Rows: images; columns: the input, then per network its attention (the deepest block with a
    spatial or query map; heads and taps averaged) and its Grad-CAM. Returns the PNG path."""
    if not explanations:
        raise ValueError("grid_figure needs at least one explanation")
    n = len(images.tensor)
    for e in explanations:
        if len(e.cam.cam) != n:
            raise ValueError(f"explanation {e.label!r} covers {len(e.cam.cam)} images, the grid has {n}")
    display = images.display
    size = tuple(display.shape[1:3])
    ncols = 1 + 2 * len(explanations)
    fig = Figure(figsize=(2.3 * ncols, 2.5 * n + 0.6), layout="constrained")
    axes = fig.subplots(n, ncols, squeeze=False)
    for i in range(n):
        _show(axes[i, 0], display[i])
        true = images.targets[i]
        axes[i, 0].set_title(images.names[i] + (f"\ntrue '{images.class_name(true)}'" if true is not None else ""),
                             fontsize=TITLE_SIZE)
        for j, e in enumerate(explanations):
            ax_attn, ax_cam = axes[i, 1 + 2 * j], axes[i, 2 + 2 * j]
            block = _deepest_block(e.maps)
            if block is None:
                _show(ax_attn, display[i])
                ax_attn.set_title(f"{e.label}: attention", fontsize=TITLE_SIZE)
                ax_attn.text(0.5, 0.5, "channel attention only\n(no spatial map)" if e.maps else "no attention block",
                             transform=ax_attn.transAxes, ha="center", va="center", fontsize=7,
                             bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
            else:
                path, sites = block
                kind = e.maps.info[sites[0]].kind
                what = "attention of query x" if kind == "query" else "spatial attention"
                taps = f", mean of {len(sites)} taps" if len(sites) > 1 else ""
                _overlay(ax_attn, display[i], _block_heat(e.maps, sites, i, size),
                         f"{e.label}: {what}\n{path or 'block'} ({e.maps.info[sites[0]].block_type}{taps})")
                if kind == "query":
                    r, c = e.maps.info[sites[0]].query
                    h, w = e.maps.info[sites[0]].size
                    ax_attn.plot([(c + 0.5) * size[1] / w - 0.5], [(r + 0.5) * size[0] / h - 0.5], "wx", ms=7, mew=2)
            _overlay(ax_cam, display[i], e.cam.cam[i, 0].cpu().numpy(),
                     f"{e.label}: Grad-CAM\npredicted {_prediction(e, images, i)}")
    fig.suptitle("  |  ".join(f"{e.label} = {e.description}" for e in explanations), fontsize=9)
    return _save(fig, out_png)
