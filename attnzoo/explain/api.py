"""Checkpoints + images -> figures: what ``attnzoo explain`` does, callable from Python.

:func:`explain_grid` is the call for reports: several checkpoints trained on the same data, the same
test images for each, one grid PNG. :func:`explain_checkpoints` also writes one figure per image per
checkpoint.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from .capture import Query
from .figures import Explanation, explain_model, grid_figure, image_figure
from .images import (
    DATASETS,
    ExplainImages,
    LoadedModel,
    _data_class,
    data_module_norm,
    load_classifier,
    load_dataset_images,
    load_image_folder,
)

__all__ = ["explain_grid", "explain_checkpoints", "load_models", "resolve_images"]

ModelSource = str | Path | LoadedModel | nn.Module


def load_models(checkpoints: Mapping[str, ModelSource] | Sequence[ModelSource]) -> list[LoadedModel]:
    """Checkpoint paths (or already loaded networks) -> LoadedModel, labelled by the mapping's keys
    (a sequence: labelled by each run's block spec); repeated labels get ``#2``, ``#3``."""
    items = list(checkpoints.items()) if isinstance(checkpoints, Mapping) else [(None, c) for c in checkpoints]
    if not items:
        raise ValueError("no checkpoint given; pass at least one (label -> path)")
    models: list[LoadedModel] = []
    for label, src in items:
        if isinstance(src, LoadedModel):
            m = src if label is None else LoadedModel(str(label), src.network, src.hparams, src.path, src.data_config, src.input_size)
        elif isinstance(src, nn.Module):
            net = getattr(src, "model", src) if hasattr(src, "hparams") else src  # an AttnClassifier
            hp = dict(getattr(src, "hparams", {}) or {})
            m = LoadedModel(str(label or hp.get("attn") or type(net).__name__), net.eval(), hp,
                            input_size=tuple(getattr(src, "input_size", ()) or ()) or None)
        elif isinstance(src, (str, Path)):
            m = load_classifier(src, None if label is None else str(label))
        else:
            raise TypeError(f"checkpoint {label!r}: expected a path, a LoadedModel or an nn.Module, got {type(src).__name__}")
        models.append(m)
    seen: dict[str, int] = {}
    for m in models:
        seen[m.label] = seen.get(m.label, 0) + 1
        if seen[m.label] > 1:
            m.label = f"{m.label}#{seen[m.label]}"
    return models


def _model_size(models: Sequence[LoadedModel]) -> tuple[int, tuple[int, int]]:
    m = next((m for m in models if m.input_size), None)
    if m is None:
        raise ValueError("cannot tell the networks' input size; pass images as ExplainImages")
    return m.input_size[0], tuple(m.input_size[-2:])


def resolve_images(
    models: Sequence[LoadedModel],
    images: ExplainImages | str | Path | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    num_images: int = 4,
    split: str = "test",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ExplainImages:
    """The images to explain, normalised as the networks were trained:

    * ``images`` an ExplainImages: used as it is;
    * ``images`` a folder (or file) of images: resized to the networks' input size, normalised with
      ``mean``/``std``, else the first run's data module's, else ``dataset``'s;
    * ``dataset`` (a name of ``DATASETS`` or an attnzoo.data class): its first ``num_images`` test images;
    * neither: the first run's own data module (from its config.yaml), first ``num_images`` test images.
    """
    if isinstance(images, ExplainImages):
        return images
    first = models[0]
    run_data = first.data_config or {}
    run_cls = run_data.get("class_path")
    if images is not None:
        in_chans, size = _model_size(models)
        norm = data_module_norm(run_data) if run_data else None
        classes = norm[2] if norm else None
        if mean is None or std is None:
            if norm is None and dataset is not None:
                cls = _data_class(dataset)
                if getattr(cls, "mean", ()):
                    norm = (tuple(cls.mean), tuple(cls.std), getattr(cls, "classes", None))
            if norm is None:
                raise ValueError(
                    "cannot tell how the networks' training images were normalised: no config.yaml beside the "
                    "checkpoint; pass --mean/--std (one value per channel) or --dataset NAME"
                )
            mean, std = norm[0], norm[1]
        return load_image_folder(images, in_chans, size, mean, std, num_images=num_images, classes=classes)
    init_args: dict[str, Any] = {}
    if dataset is None:
        if not run_cls:
            raise ValueError("no images given and the checkpoint has no run config.yaml naming its data; "
                             "pass --images DIR or --dataset NAME (" + ", ".join(sorted(DATASETS)) + ")")
        dataset = str(run_cls)
    cls = _data_class(dataset)
    if run_cls and _data_class(str(run_cls)) is cls:
        init_args.update(run_data.get("init_args") or {})
    elif cls.__name__ == "SyntheticDataModule" and first.hparams:
        hp = first.hparams
        side = (first.input_size or (0, 32, 32))[-1]
        init_args.update(num_classes=hp.get("num_classes", 4), in_chans=hp.get("in_chans", 3), image_size=side)
    for key in ("batch_size", "num_workers", "augment", "download"):
        init_args.pop(key, None)
    if data_dir is not None:
        init_args["data_dir"] = data_dir
    return load_dataset_images(dataset, num_images=num_images, split=split, **init_args)


def _check_fit(models: Sequence[LoadedModel], images: ExplainImages) -> None:
    c = images.tensor.shape[1]
    for m in models:
        if m.input_size and m.input_size[0] != c:
            raise ValueError(f"{m.label}: the network takes {m.input_size[0]}-channel images, the images have {c} channels")


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label).strip("_") or "model"


def explain_checkpoints(
    checkpoints: Mapping[str, ModelSource] | Sequence[ModelSource],
    images: ExplainImages | str | Path | None,
    out_dir: str | Path,
    *,
    per_image: bool = True,
    grid: bool = True,
    query: Query = (0.5, 0.5),
    cam_layer: str | None = None,
    top_k: int = 12,
    sites: str | Sequence[str] | None = None,
    **image_kw: Any,
) -> list[Path]:
    """Write ``out_dir/<label>/<NN>_<image>.png`` (one figure per image per checkpoint) and
    ``out_dir/grid.png`` (all checkpoints side by side); returns the written paths.
    ``image_kw`` go to :func:`resolve_images` (dataset, data_dir, num_images, split, mean, std)."""
    models = load_models(checkpoints)
    imgs = resolve_images(models, images, **image_kw)
    _check_fit(models, imgs)
    out_dir = Path(out_dir)
    written: list[Path] = []
    explanations: list[Explanation] = []
    for m in models:
        expl = explain_model(m, imgs, query=query, cam_layer=cam_layer)
        explanations.append(expl)
        if per_image:
            for i, name in enumerate(imgs.names):
                written.append(image_figure(expl, imgs, i, out_dir / _slug(m.label) / f"{i:02d}_{_slug(Path(name).stem)}.png",
                                            top_k=top_k, sites=sites))
    if grid:
        written.append(grid_figure(explanations, imgs, out_dir / "grid.png"))
    return written


def explain_grid(
    checkpoints: Mapping[str, ModelSource] | Sequence[ModelSource],
    images: ExplainImages | str | Path | None,
    out_png: str | Path,
    *,
    num_images: int = 4,
    query: Query = (0.5, 0.5),
    cam_layer: str | None = None,
    **image_kw: Any,
) -> Path:
    """One PNG comparing several networks trained on the same data on the same images: per image a
    row, per network its attention and its Grad-CAM (see :func:`attnzoo.explain.figures.grid_figure`).

    ``checkpoints``: label -> checkpoint path (or loaded network). ``images``: ExplainImages, a folder
    of image files, or None for the first ``num_images`` test images of the first run's data module
    (its config.yaml beside the checkpoint), e.g. for an experiment's README::

        explain_grid({"se": "runs/se/last.ckpt", "cbam": "runs/cbam/last.ckpt"}, None, "experiments/x/attention.png")
    """
    models = load_models(checkpoints)
    imgs = resolve_images(models, images, num_images=num_images, **image_kw)
    _check_fit(models, imgs)
    explanations = [explain_model(m, imgs, query=query, cam_layer=cam_layer) for m in models]
    return grid_figure(explanations, imgs, out_png)
