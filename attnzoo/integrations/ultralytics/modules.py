"""The ``AttnZoo`` YAML row and the ``attnzoo:`` model-YAML key, through a wrapper of ``parse_model``.

ultralytics builds a model from its YAML in ``ultralytics.nn.tasks.parse_model``, which looks a row's
module name up in that module's namespace and, for a module it has no rule for, passes the row's
arguments unchanged and sets the row's output channels to its input channels (``ch[f]``). An attention
block keeps its input's shape, so that rule is already the right bookkeeping for ``ch``, for the
``from`` indices and for width scaling (the channel count it sees is the scaled one). What the rule
cannot do is tell the block its channels, so:

1. ``AttnZoo(spec)`` is built by parse_model without channels (it holds no block yet);
2. the wrapper (``ultralytics.nn.tasks.parse_model`` is replaced by :func:`parse_model`) checks every
   AttnZoo row before ultralytics builds anything, so an unknown block fails naming the row;
3. after ultralytics has built the layers, one forward at batch 1 (``PROBE_SIZE``, eval mode, no grad)
   through the layers up to the last AttnZoo row gives each AttnZoo the channels it receives, and it
   builds its block; then the ``attnzoo:`` key, if the YAML has one, runs ``insert_attn`` on its rows.

Everything is in place before ``parse_model`` returns: the model has its final parameters when
ultralytics computes its strides, counts its parameters or builds the optimizer.
"""
from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from ...factory import create_attn, get_attn, list_attn
from ...insertion import InsertReport, insert_attn

__all__ = ["AttnZoo", "parse_model", "ATTNZOO_KEY", "PROBE_SIZE", "attn_rows", "check_attnzoo_key", "last_reports"]

ATTNZOO_KEY = "attnzoo"
PROBE_SIZE = 64  # H = W of the one forward that finds channels (a multiple of every stock model's stride)
_ENTRY_KEYS = ("attn", "position", "blocks", "init", "attn_kwargs", "layers", "where")
_WHERE = ("all", "backbone", "head")
last_reports: list[tuple[int, InsertReport]] = []  # (row, report) of the last model built with an attnzoo: key


class AttnZoo(nn.Module):
    """An attnzoo block as one model-YAML row: ``[-1, 1, AttnZoo, [cbam]]``, ``[-1, 1, AttnZoo, ["se(rd_ratio=0.25)"]]``.

    ``spec`` is any block spec ``attnzoo.create_attn`` reads. ``channels`` is found by the model build
    (see the module docstring); pass it only when building the module by hand.
    """

    def __init__(self, spec: str, channels: int | None = None) -> None:
        super().__init__()
        if not isinstance(spec, str):
            raise TypeError(f"AttnZoo needs a block spec string such as 'cbam' or 'se(rd_ratio=0.25)', got {spec!r}")
        get_attn(spec)  # unknown names and arguments fail here
        self.spec = spec
        self.channels: int | None = None
        self.block: nn.Module | None = None
        if channels is not None:
            self.build(channels)

    def build(self, channels: int) -> None:
        if self.block is not None:
            if channels != self.channels:
                raise ValueError(f"AttnZoo({self.spec!r}) was built for {self.channels} channels, now sees {channels}")
            return
        self.block = create_attn(self.spec, int(channels))
        self.channels = int(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.block is None:
            raise RuntimeError(
                f"AttnZoo({self.spec!r}) has no block yet: it gets its channels when the model is built from its "
                "YAML after 'import attnzoo.integrations.ultralytics'; by hand, pass AttnZoo(spec, channels)")
        return self.block(x)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, channels={self.channels}"


def _rows(d: dict[str, Any]) -> list[tuple[int, str, list]]:
    out = []
    i = 0
    for section in ("backbone", "head"):
        for row in d.get(section) or []:
            out.append((i, section, row))
            i += 1
    return out


def attn_rows(d: dict[str, Any]) -> list[int]:
    """Indices of the AttnZoo rows of a model dict."""
    return [i for i, _, row in _rows(d) if isinstance(row, (list, tuple)) and len(row) == 4 and row[2] == "AttnZoo"]


def _close_names(name: str) -> str:
    close = difflib.get_close_matches(name, list_attn(), n=3, cutoff=0.5)
    return f"; closest block names: {', '.join(close)}" if close else ""


def _check_attn_rows(d: dict[str, Any]) -> None:
    from ...spec import parse_spec

    for i, section, row in _rows(d):
        if not (isinstance(row, (list, tuple)) and len(row) == 4 and row[2] == "AttnZoo"):
            continue
        args = row[3]
        where = f"model YAML row {i} ({section}) {list(row)!r}"
        if not isinstance(args, list) or len(args) != 1 or not isinstance(args[0], str):
            raise ValueError(f"{where}: AttnZoo takes one argument, the block spec, and no channel count (they are "
                             f"inferred): write [-1, 1, AttnZoo, [cbam]] or [-1, 1, AttnZoo, [\"se(rd_ratio=0.25)\"]]")
        try:
            get_attn(args[0])
        except KeyError as e:
            name = parse_spec(args[0])[0] if "(" in args[0] else args[0]
            raise KeyError(f"{where}: unknown attention block {name!r}{_close_names(name)} "
                           f"(attnzoo.list_attn() lists all {len(list_attn())})") from e
        except (ValueError, TypeError) as e:
            raise type(e)(f"{where}: {e}") from e


def check_attnzoo_key(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``attnzoo:`` entries of a model dict, checked; [] when it has none."""
    entries = d.get(ATTNZOO_KEY)
    if entries is None:
        return []
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise ValueError(f"model YAML key {ATTNZOO_KEY!r} must be a list of {{attn: ..., position: ...}}, got {entries!r}")
    n = len(_rows(d))
    out = []
    for k, e in enumerate(entries):
        where = f"model YAML {ATTNZOO_KEY}[{k}]"
        if not isinstance(e, dict) or "attn" not in e:
            raise ValueError(f"{where} must be a mapping with at least 'attn', e.g. {{attn: ema, position: bottleneck}}")
        unknown = [key for key in e if key not in _ENTRY_KEYS]
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; an entry has {', '.join(_ENTRY_KEYS)}")
        try:
            get_attn(e["attn"])
        except KeyError as err:
            name = str(e["attn"]).split("(")[0]
            raise KeyError(f"{where}: unknown attention block {name!r}{_close_names(name)}") from err
        where_ = e.get("where", "all")
        if where_ not in _WHERE:
            raise ValueError(f"{where}: where must be one of {_WHERE}, got {where_!r}")
        layers = e.get("layers")
        if layers is not None and (not isinstance(layers, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) and -n <= x < n for x in layers)):
            raise ValueError(f"{where}: layers must be a list of row indices of this model (0..{n - 1}), got {layers!r}")
        out.append(dict(e))
    return out


def _route(layers: nn.Sequential, x: torch.Tensor, stop: int, record: dict[int, torch.Tensor] | None = None):
    """Run rows 0..stop the way a YOLO model routes them (``m.f``); record the input each row gets."""
    outs: list[Any] = []
    for m in layers[: stop + 1]:
        f = m.f
        if f != -1:
            x = outs[f] if isinstance(f, int) else [x if j == -1 else outs[j] for j in f]
        if record is not None:
            record[m.i] = x
        x = m(x)
        outs.append(x)
    return x


def _forward_probe(layers: nn.Sequential, ch: int, stop: int, what: str) -> dict[int, Any]:
    inputs: dict[int, Any] = {}
    was = layers.training
    layers.eval()
    x = torch.randn(1, ch, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            _route(layers, x, stop, inputs)
    except Exception as e:
        raise RuntimeError(f"attnzoo: the forward at (1, {ch}, {PROBE_SIZE}, {PROBE_SIZE}) that finds the channels "
                           f"of {what} failed at a model row: {type(e).__name__}: {e}") from e
    finally:
        layers.train(was)
    return inputs


def _build_attn_rows(layers: nn.Sequential, ch: int, verbose: bool = False) -> None:
    shells = [(k, m) for k, row in enumerate(layers)
              for m in (row if isinstance(row, nn.Sequential) else [row]) if isinstance(m, AttnZoo) and m.block is None]
    if not shells:
        return
    hooks = [m.register_forward_pre_hook(lambda mod, args: mod.build(args[0].shape[1])) for _, m in shells]
    try:
        _forward_probe(layers, ch, max(k for k, _ in shells), "the AttnZoo rows")
    finally:
        for h in hooks:
            h.remove()
    for k, m in shells:
        layers[k].np = sum(p.numel() for p in layers[k].parameters())
        if verbose:  # ultralytics' table above printed the row before its block existed (0 params)
            from ultralytics.utils import LOGGER

            LOGGER.info(f"attnzoo: row {k}: AttnZoo({m.spec!r}) at {m.channels} channels, "
                        f"{sum(p.numel() for p in m.parameters()):,} params")


def _section_of(d: dict[str, Any], i: int) -> str:
    return "backbone" if i < len(d.get("backbone") or []) else "head"


def _apply_attnzoo_key(d: dict[str, Any], layers: nn.Sequential, ch: int, verbose: bool) -> None:
    from ...insertion.positions import check_position

    entries = check_attnzoo_key(d)
    last_reports.clear()
    if not entries:
        return
    n = len(layers)
    for k, e in enumerate(entries):
        position = check_position(e.get("position", "bottleneck"))
        if position.startswith("after:"):
            raise ValueError(f"model YAML {ATTNZOO_KEY}[{k}]: position must name a host position (bottleneck, block, "
                             f"c3k, sppf, psa), not {position!r}")
        rows = [x % n for x in e["layers"]] if e.get("layers") is not None else list(range(n))
        where = e.get("where", "all")
        rows = [i for i in rows if where == "all" or _section_of(d, i) == where]
        from ...insertion import adapter_for

        hosts = [i for i in rows if any(position in (a.slots if (a := adapter_for(m)) else {})
                                         for m in layers[i].modules())]
        if not hosts:
            raise ValueError(f"model YAML {ATTNZOO_KEY}[{k}]: no row{' of ' + repr(e['layers']) if e.get('layers') else ''} "
                             f"({where}) has a block with position {position!r}")
        inputs = _forward_probe(layers, ch, max(hosts), f"{ATTNZOO_KEY}[{k}]")
        for i in hosts:
            x = inputs[i]
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"model YAML {ATTNZOO_KEY}[{k}]: row {i} takes several inputs; insert into rows "
                                 "with one input (C2f, C3k2, SPPF, C2PSA)")
            kwargs = dict(e.get("attn_kwargs") or {})
            try:
                report = insert_attn(layers[i], e["attn"], position=position, blocks=e.get("blocks", "all"),
                                     init=e.get("init", "default"), input_size=tuple(x.shape[1:]), **kwargs)
            except (ValueError, TypeError, KeyError) as err:
                raise type(err)(f"model YAML {ATTNZOO_KEY}[{k}], row {i} ({type(layers[i]).__name__}): {err}") from err
            layers[i].np = sum(p.numel() for p in layers[i].parameters())
            last_reports.append((i, report))
            if verbose:
                from ultralytics.utils import LOGGER

                LOGGER.info(f"attnzoo: row {i}: {len(report.sites)} x {report.attn} at {position}, "
                            f"+{sum(s.params for s in report.sites):,} params")


_ORIGINAL_PARSE_MODEL = None


def parse_model(d: dict[str, Any], ch: int, verbose: bool = True, *args: Any, **kwargs: Any):
    """ultralytics' parse_model, plus AttnZoo rows with inferred channels and the ``attnzoo:`` key."""
    _check_attn_rows(d)
    check_attnzoo_key(d)
    layers, save = _ORIGINAL_PARSE_MODEL(d, ch, verbose, *args, **kwargs)
    in_ch = int(ch[0] if isinstance(ch, (list, tuple)) else ch)
    _build_attn_rows(layers, in_ch, verbose)
    _apply_attnzoo_key(d, layers, in_ch, verbose)
    return layers, save


def install() -> None:
    """Put ``AttnZoo`` into ultralytics.nn.tasks' namespace and wrap its parse_model (idempotent)."""
    global _ORIGINAL_PARSE_MODEL
    from ultralytics.nn import tasks

    tasks.AttnZoo = AttnZoo
    if getattr(tasks.parse_model, "_attnzoo", False):
        return
    _ORIGINAL_PARSE_MODEL = tasks.parse_model
    parse_model._attnzoo = True  # type: ignore[attr-defined]
    tasks.parse_model = parse_model
