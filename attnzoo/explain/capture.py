"""Capture the attention every block computed, through the shared ``AttnTap`` hook points.

Every attnzoo block passes the factor it multiplies into its input (or, for self-attention, its
attention weights) through an :class:`attnzoo.blocks.base.AttnTap`, an identity module. Capturing
needs no per-block code: :class:`AttentionCapture` sets ``tap.active`` (self-attention blocks build
their weights only then), registers a forward hook on every tap, and normalises what it sees:

* ``"channel"``  -> (B, C): a per-channel factor, (B, C, 1, 1) or (B, C) in the tap.
* ``"spatial"``  -> (B, 1, H, W): the tap's factor broadcast to the site's (H, W) (the input size of the
  block that holds the tap), then averaged over its channel dimension; e.g. coordinate attention's
  (B, C, H, 1) row factor becomes an (H, W) map that is constant along each row.
* ``"query"``    -> (B, heads, H, W): the weights of one chosen query position over all key positions
  (default: the centre of the map), taken from the tap's (B, heads, N_query, H_k, W_k) with
  N_query = H * W of the site.

A tap whose factor is not spatially resolved is recorded as channel weights: a "spatial" tap of
spatial size (1, 1) -> (B, C); a "query" tap whose N_query is not the site's H * W (DANet's channel
attention module tapping its (C, C) channel affinity) -> (B, K), the attention each of its K keys
receives, averaged over heads and queries.

NOTE: a block that sub-samples its keys (``nonlocal(sub_sample=True)``) taps an (H', W') key grid;
it is repeated to the site's (H, W) (nearest), so each key's weight covers the pixels it pools.
NOTE: a spatial tap holding several maps that are not the input's channels (External Attention's
(B, S, H, W) weights over S memory units) is averaged over them like channels.

Capture is off unless requested: a tap is an identity and ``active`` is False, so an uncaptured
forward pass does no extra work. Keys are the taps' module paths (``layer1.0.attn_standard.spatial.tap``);
a tap called several times in one forward pass (criss-cross attention's recurrences) gets ``#2``,
``#3``... on its later calls. Several forward passes inside one capture concatenate along the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks.base import AttnTap

__all__ = ["AttentionCapture", "AttentionMaps", "SiteInfo", "capture_attention", "site_title"]

Query = tuple[float, float]


@dataclass
class SiteInfo:
    """What a captured tensor is: ``kind`` of the normalised tensor ("channel" | "spatial" | "query"),
    ``tap_kind`` declared by the tap, the path and class of the block holding it, the site's input
    size (H, W), and for queries the (row, col) of the chosen query on that grid."""

    kind: str
    tap_kind: str
    block_path: str
    block_type: str
    size: tuple[int, int]
    query: tuple[int, int] | None = None


class AttentionMaps(dict):
    """``dict[site, tensor]`` of captured attention plus ``info[site]`` (:class:`SiteInfo`), in the
    order the taps ran."""

    def __init__(self) -> None:
        super().__init__()
        self.info: dict[str, SiteInfo] = {}

    def of_kind(self, kind: str) -> dict[str, torch.Tensor]:
        """The captured tensors of one normalised kind ("channel", "spatial" or "query")."""
        return {k: v for k, v in self.items() if self.info[k].kind == kind}


def site_title(site: str) -> str:
    """A site key without the trailing ``.tap`` (``layer1.0.attn_standard.spatial``), for titles."""
    if site == "tap":
        return "block"
    return site[: -len(".tap")] if site.endswith(".tap") else site.replace(".tap#", "#")


def _check_queries(query: Query | Sequence[Query]) -> tuple[list[Query], bool]:
    """(list of (fy, fx), whether several were asked for)."""
    def one(q) -> Query:
        if (not isinstance(q, (tuple, list)) or len(q) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in q)):
            raise ValueError(
                f"query position must be (fy, fx) with fractions of the map's height and width in [0, 1] "
                f"(e.g. (0.5, 0.5) for the centre), got {q!r}"
            )
        return float(q[0]), float(q[1])

    if isinstance(query, (tuple, list)) and len(query) and isinstance(query[0], (tuple, list)):
        qs = [one(q) for q in query]
        return qs, len(qs) > 1
    return [one(query)], False


def _grid_position(q: Query, h: int, w: int) -> tuple[int, int]:
    """Fractional (fy, fx) -> (row, col) on an h x w grid (fy = 0.5 is the centre row)."""
    return min(int(q[0] * h), h - 1), min(int(q[1] * w), w - 1)


class AttentionCapture:
    """Context manager that records every ``AttnTap`` of ``model`` during forward passes.

        with AttentionCapture(model) as cap:
            model(images)
        maps = cap.maps          # AttentionMaps: site -> tensor, maps.info[site] -> SiteInfo

    ``query``: (fy, fx) fractions of the map's height and width of the query whose weights
    self-attention sites report (default (0.5, 0.5), the centre), or a list of them; with several,
    each query site gives one entry per position, keyed ``site@(fy,fx)``.
    On exit every hook is removed and every tap's ``active`` flag restored, even after an error.
    """

    def __init__(self, model: nn.Module, query: Query | Sequence[Query] = (0.5, 0.5)) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"capture needs a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.queries, self._several = _check_queries(query)
        self.taps = [(name, m) for name, m in model.named_modules() if isinstance(m, AttnTap)]
        if not self.taps:
            raise ValueError(
                f"{type(model).__name__} has no AttnTap: it holds no attnzoo attention block. Insert one first "
                f"(attnzoo.insert_attn(model, 'cbam')) or build a backbone with attn=..."
            )
        self._handles: list = []
        self._saved_active: list[bool] = []
        self._parts: dict[str, list[torch.Tensor]] = {}
        self._info: dict[str, SiteInfo] = {}
        self._order: list[str] = []

    # -- hooks -------------------------------------------------------------------------------
    def _blocks_above(self, tap_name: str) -> list[str]:
        """Paths of the blocks holding a tap, nearest first: ancestors with an int ``channels``
        attribute (every attnzoo block has one); the tap's parent module if there is none."""
        parts = tap_name.split(".")
        ancestors = [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]
        found = [p for p in ancestors
                 if isinstance(getattr(self.model.get_submodule(p), "channels", None), int)
                 and not isinstance(self.model.get_submodule(p), (nn.ModuleList, nn.Sequential))]
        return found or ancestors[:1]

    def __enter__(self) -> "AttentionCapture":
        # block path -> {"size": (H, W) of its current input, "running": bool, "taps": [names]}
        self._blocks: dict[str, dict] = {}
        self._calls: dict[str, int] = {}
        for name, tap in self.taps:
            above = self._blocks_above(name)
            for path in above:
                self._blocks.setdefault(path, {"size": None, "running": False, "taps": []})["taps"].append(name)
            self._calls[name] = 0
            self._saved_active.append(tap.active)
            tap.active = True
            self._handles.append(tap.register_forward_hook(self._tap_hook(name, above)))
        for path, state in self._blocks.items():
            module = self.model.get_submodule(path)
            self._handles.append(module.register_forward_pre_hook(self._block_start(state)))
            self._handles.append(module.register_forward_hook(self._block_end(state)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for (_, tap), active in zip(self.taps, self._saved_active):
            tap.active = active
        self._saved_active.clear()

    def _block_start(self, state: dict):
        def hook(module, args):
            x = args[0] if args else None
            state["size"] = tuple(x.shape[-2:]) if isinstance(x, torch.Tensor) and x.dim() == 4 else None
            state["running"] = True
            for tap in state["taps"]:
                self._calls[tap] = 0  # a new forward pass of this block
        return hook

    @staticmethod
    def _block_end(state: dict):
        def hook(module, args, output):
            state["running"] = False
        return hook

    def _tap_hook(self, name: str, above: list[str]):
        def hook(tap: AttnTap, args, output):
            self._calls[name] += 1
            n = self._calls[name]
            key = name if n == 1 else f"{name}#{n}"
            # the site's (H, W): input of the nearest enclosing block whose forward is running (a
            # block may call a sub-block's method instead of its forward, e.g. danet -> cam.context)
            size = next((self._blocks[p]["size"] for p in above if self._blocks[p]["running"]), None)
            block_path = above[0]
            block_type = type(self.model.get_submodule(block_path)).__name__
            for suffix, kind, tensor, query in self._normalise(tap.kind, output.detach(), size, key):
                k = key + suffix
                if k not in self._parts:
                    self._parts[k] = []
                    self._order.append(k)
                    self._info[k] = SiteInfo(kind, tap.kind, block_path, block_type,
                                             size or tuple(output.shape[-2:]), query)
                self._parts[k].append(tensor.float())
        return hook

    def _normalise(self, tap_kind: str, t: torch.Tensor, size: tuple[int, int] | None, key: str):
        """Yield (key suffix, kind, tensor, query (row, col) or None) for one tap output."""
        if tap_kind == "query":
            yield from self._normalise_query(t, size, key)
            return
        if t.dim() == 2:  # (B, C)
            yield "", "channel", t, None
            return
        if t.dim() != 4:
            raise ValueError(f"attention tap {key!r} ({tap_kind}) gave a {t.dim()}-D tensor of shape {tuple(t.shape)}; "
                             f"a channel or spatial tap must give (B, C) or (B, C or 1, H, W)")
        if t.shape[-2:] == (1, 1):  # not spatially resolved: a channel factor
            yield "", "channel", t.flatten(1), None
            return
        h, w = size if size is not None else t.shape[-2:]
        try:
            t = t.expand(t.shape[0], t.shape[1], h, w)  # (B, C or 1, H, W)
        except RuntimeError as e:
            raise ValueError(
                f"attention tap {key!r} gave shape {tuple(t.shape)}, which does not broadcast to its block's "
                f"input size (H, W) = ({h}, {w}); a spatial tap must give (B, 1 or C, H, W) or a broadcastable factor"
            ) from e
        yield "", "spatial", t.mean(1, keepdim=True), None  # (B, 1, H, W)

    def _normalise_query(self, t: torch.Tensor, size: tuple[int, int] | None, key: str):
        if t.dim() != 5:
            raise ValueError(f"query tap {key!r} gave shape {tuple(t.shape)}; expected (B, heads, N_query, H, W)")
        b, heads, nq, hk, wk = t.shape
        h, w = size if size is not None else (hk, wk)
        if nq != h * w:  # queries are not the site's positions (e.g. channels): report key weights
            yield "", "channel", t.mean((1, 2)).reshape(b, hk * wk), None  # (B, K)
            return
        for q in self.queries:
            row, col = _grid_position(q, h, w)
            m = t[:, :, row * w + col]  # (B, heads, H_k, W_k)
            if (hk, wk) != (h, w):
                m = F.interpolate(m, size=(h, w), mode="nearest")  # (B, heads, H, W)
            suffix = f"@({q[0]:g},{q[1]:g})" if self._several else ""
            yield suffix, "query", m, (row, col)

    # -- results -----------------------------------------------------------------------------
    @property
    def maps(self) -> AttentionMaps:
        """Everything captured so far; several forward passes are concatenated along the batch."""
        out = AttentionMaps()
        for k in self._order:
            out[k] = torch.cat(self._parts[k]) if len(self._parts[k]) > 1 else self._parts[k][0]
            out.info[k] = self._info[k]
        return out


def _batches(images: torch.Tensor, batch_size: int | None) -> Iterator[torch.Tensor]:
    step = len(images) if batch_size is None else batch_size
    for i in range(0, len(images), step):
        yield images[i : i + step]


def capture_attention(
    model: nn.Module,
    images: torch.Tensor,
    query: Query | Sequence[Query] = (0.5, 0.5),
    batch_size: int | None = None,
) -> AttentionMaps:
    """Run ``model`` on ``images`` (B, C, H, W) or (C, H, W) in eval mode, without gradients, and
    return the attention of every tapped block: ``{site: tensor}`` with channel sites (B, C), spatial
    sites (B, 1, H, W) and self-attention sites (B, heads, H, W) for the query at ``query``
    (fractions (fy, fx) of the map, default the centre); see the module docstring.

    Works on any model holding attnzoo blocks (``insert_attn`` output, attnzoo backbones, a block
    alone). The model's train/eval mode is restored afterwards.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    param = next(iter(model.parameters()), None)
    if param is not None:
        images = images.to(param.device)
    was_training = model.training
    model.eval()
    try:
        with AttentionCapture(model, query=query) as cap, torch.no_grad():
            for batch in _batches(images, batch_size):
                model(batch)
    finally:
        model.train(was_training)
    return cap.maps
