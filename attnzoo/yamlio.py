"""Strict YAML reading for every attnzoo config: a key given twice in one mapping is an error.

PyYAML's ``safe_load`` keeps the last of two equal keys without a word, so ``lr: 0.1`` followed,
lines later, by ``lr: 0.01`` quietly trains with 0.01. :func:`load_yaml` reads YAML as ``safe_load``
does (plain data only, no Python objects) and raises :class:`attnzoo.errors.AttnzooError` naming
the file, the key and both lines. Used for fit configs (``attnzoo fit --config``, ``__base__``
files) and available to grid files (``attnzoo.ablation``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import AttnzooError

__all__ = ["load_yaml", "read_yaml", "StrictSafeLoader"]


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key."""


def _construct_mapping(loader: StrictSafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)  # merge keys (<<: *anchor) may be overridden; that is what they are for
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: SafeLoader reports it below
            continue
        if first is not None:
            raise AttnzooError(
                f"{loader.source}: key {key!r} is given twice in the same mapping (line {first.start_mark.line + 1} "
                f"and line {key_node.start_mark.line + 1}); YAML would silently keep the last one, so give it once")
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text strictly (see the module docstring); ``source`` names it in errors."""
    loader = StrictSafeLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise AttnzooError(f"{source}: not valid YAML ({e})") from e
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """Read and parse a YAML file strictly; a missing file raises FileNotFoundError naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"YAML file {str(path)!r} not found")
    try:
        text = p.read_text()
    except UnicodeDecodeError as e:
        raise AttnzooError(f"{p}: not a text file ({e}); a config is a UTF-8 YAML file") from e
    return load_yaml(text, str(p))
