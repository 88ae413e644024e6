"""See what the blocks attend to: attention capture, Grad-CAM, and pictures.

* :func:`capture_attention` (``capture.py``) -- ``{site: tensor}`` of every block's attention through
  the shared ``AttnTap`` hook points: channel weights (B, C), spatial maps (B, 1, H, W), self-attention
  weights of a chosen query (B, heads, H, W). :class:`AttentionCapture` is the context manager under it.
* :func:`grad_cam` (``gradcam.py``) -- Grad-CAM (Selvaraju et al. 2017) of a chosen class at a layer.
* :func:`image_figure`, :func:`grid_figure` (``figures.py``) -- the PNG figures.
* :func:`explain_grid`, :func:`explain_checkpoints` (``api.py``) -- checkpoints + images -> PNGs;
  ``attnzoo explain`` (``cli.py``) is the command over them.
"""
from __future__ import annotations

from .api import explain_checkpoints, explain_grid, load_models, resolve_images
from .capture import AttentionCapture, AttentionMaps, SiteInfo, capture_attention
from .figures import Explanation, explain_model, grid_figure, image_figure
from .gradcam import GradCam, default_cam_layer, grad_cam
from .images import ExplainImages, LoadedModel, load_classifier, load_dataset_images, load_image_folder

__all__ = [
    "capture_attention", "AttentionCapture", "AttentionMaps", "SiteInfo",
    "grad_cam", "GradCam", "default_cam_layer",
    "explain_grid", "explain_checkpoints", "explain_model", "Explanation", "image_figure", "grid_figure",
    "ExplainImages", "LoadedModel", "load_classifier", "load_dataset_images", "load_image_folder",
    "load_models", "resolve_images",
]
