"""Parse block specs written as strings: ``"se"`` or ``"se(rd_ratio=0.25, act_layer='gelu')"``.

Arguments are Python literals read by ``ast.literal_eval``; nothing is ever evaluated,
so a spec from a YAML file or a command line cannot run code.
"""
from __future__ import annotations

import ast
import re
from typing import Any

__all__ = ["parse_spec", "format_spec"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]*")


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name(key=value, ...)"`` into ``(name, {key: value})``.

    Raises ``ValueError`` naming the column where the spec is malformed, or where an argument is
    given a second time (``se(rd_ratio=0.25, rd_ratio=0.5)``: refused, not "the last one wins").
    """
    text = spec.strip()
    m = _NAME.match(text)
    if m is None:
        raise ValueError(_where(spec, 0, "expected a block name such as 'se' or 'se(rd_ratio=0.25)'"))
    name = m.group(0)
    rest = text[m.end():].strip()
    if not rest:
        return name, {}
    offset = len(spec) - len(spec.lstrip()) + m.end() + (len(text[m.end():]) - len(text[m.end():].lstrip()))
    if not rest.startswith("("):
        raise ValueError(_where(spec, offset, f"expected '(' or the end of the spec after {name!r}"))
    if not rest.endswith(")"):
        raise ValueError(_where(spec, len(spec.rstrip()), "missing closing ')'"))
    try:
        call = ast.parse("f" + rest, mode="eval").body
    except SyntaxError as e:  # column relative to "f(...)"
        col = offset + max((e.offset or 1) - 2, 0)
        raise ValueError(_where(spec, col, f"malformed arguments ({e.msg}); write key=value pairs of literals")) from None
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise ValueError(_where(spec, offset, "arguments must be keyword arguments, e.g. se(rd_ratio=0.25)"))
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg in kwargs:
            col = offset + kw.col_offset - 1
            again = ast.get_source_segment("f" + rest, kw.value) or "..."
            raise ValueError(_where(spec, col, f"argument {kw.arg!r} is given twice ({kw.arg}={kwargs[kw.arg]!r}, "
                                    f"then {kw.arg}={again}); give each argument once"))
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            col = offset + kw.value.col_offset - 1
            raise ValueError(
                _where(spec, col, f"value of {kw.arg!r} is not a literal; use numbers, strings, "
                       "True/False/None, tuples or lists (quote names: act_layer='gelu')")
            ) from None
    return name, kwargs


def format_spec(name: str, kwargs: dict[str, Any] | None = None) -> str:
    """Inverse of :func:`parse_spec` for literal values."""
    if not kwargs:
        return name
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


def _where(spec: str, col: int, msg: str) -> str:
    col = max(0, min(col, len(spec)))
    return f"malformed block spec at column {col + 1}: {msg}\n  {spec}\n  {' ' * col}^"
