"""The ``attnzoo`` command.

    attnzoo list [FILTER] [--family F]     the block registry as a table
    attnzoo fit|validate|test|predict ...  LightningCLI (attnzoo.training.cli)
    attnzoo ablate GRID ...                run an ablation grid (attnzoo.ablation.cli)
    attnzoo report GRID_OR_DB ...          tables and plots from a results store
    attnzoo cost GRID ...                  step time and throughput of each variant, one at a time
    attnzoo collect GRID                   finished runs' result.json files -> the grid's store
    attnzoo explain ...                    attention maps and Grad-CAM pictures (attnzoo.explain.cli)
    attnzoo yolo ARGS                      ultralytics' `yolo ARGS` with AttnZoo rows (attnzoo[ultralytics])
    attnzoo yolo-yaml MODEL --attn A ...   a YOLO model YAML with attention rows, indices renumbered

Each subcommand lives in its own module and is imported only when used, so ``attnzoo list``
starts fast and a broken optional part cannot break the others.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = ["main"]

# subcommand -> "module:function"; each function takes argv (list[str]) and returns an exit code
_COMMANDS = {
    "list": ("attnzoo.cli:list_main", "print the registered attention blocks"),
    "fit": ("attnzoo.training.cli:main", "train a backbone x block (LightningCLI)"),
    "validate": ("attnzoo.training.cli:main", "validate a checkpoint (LightningCLI)"),
    "test": ("attnzoo.training.cli:main", "test a checkpoint (LightningCLI)"),
    "predict": ("attnzoo.training.cli:main", "predict with a checkpoint (LightningCLI)"),
    "ablate": ("attnzoo.ablation.cli:ablate_main", "run a grid of blocks x positions x seeds"),
    "report": ("attnzoo.ablation.cli:report_main", "write tables and plots from a results store"),
    "cost": ("attnzoo.ablation.cli:cost_main", "measure each grid variant's step time and throughput, quietly"),
    "collect": ("attnzoo.ablation.cli:collect_main", "gather finished runs' result.json files into a grid's store"),
    "explain": ("attnzoo.explain.cli:main", "draw attention maps and Grad-CAM for images"),
    "yolo": ("attnzoo.integrations.ultralytics:yolo_main", "ultralytics' yolo CLI with attnzoo's AttnZoo rows"),
    "yolo-yaml": ("attnzoo.integrations.ultralytics:yolo_yaml_main", "write a YOLO model YAML with attention rows"),
}


def _usage() -> str:
    width = max(map(len, _COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in _COMMANDS.items()]
    return "usage: attnzoo COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines) + "\n\n'attnzoo COMMAND --help' for a command's options"


def main(argv: list[str] | None = None) -> int:
    """Run one ``attnzoo`` command; returns its exit status.

    A bad input (see :mod:`attnzoo.errors`) is printed as one paragraph, what was wrong and what
    would be right, with status 2; ``--debug`` anywhere on the command line (or ``ATTNZOO_DEBUG=1``)
    shows the traceback instead. Other errors are bugs and keep their traceback.
    """
    from .errors import debug_enabled

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    argv = [a for a in argv if a != "--debug"]
    if debug and not os.environ.get("ATTNZOO_DEBUG"):
        os.environ["ATTNZOO_DEBUG"] = "1"  # seen by the subcommands' own error handling
        try:
            return _main(argv, debug=True)
        finally:
            os.environ.pop("ATTNZOO_DEBUG", None)
    return _main(argv, debug=debug)


def _main(argv: list[str], debug: bool) -> int:
    from .errors import is_user_error, user_message

    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in _COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, list(_COMMANDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"attnzoo: unknown command {command!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = _COMMANDS[command]
    module, func = target.split(":")
    fn = getattr(importlib.import_module(module), func)
    if module == "attnzoo.training.cli":
        rest = [command, *rest]  # LightningCLI reads the subcommand itself
    try:
        return int(fn(rest) or 0)
    except Exception as e:  # noqa: BLE001  (sorted below: a described bad input, or a bug)
        if debug or not is_user_error(e):
            raise
        print(f"attnzoo {command}: error: {user_message(e)}", file=sys.stderr)
        return 2


def _param_count(name: str, channels: int) -> str:
    from .factory import create_attn

    try:
        block = create_attn(name, channels)
    except (ValueError, TypeError) as e:  # e.g. a head count that does not divide C
        return f"n/a ({str(e).split(';')[0]})"
    return f"{sum(p.numel() for p in block.parameters()):,}"


def list_main(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import list_attn
    from .factory import FAMILIES, attn_info

    parser = argparse.ArgumentParser(prog="attnzoo list", description="List the registered attention blocks.")
    parser.add_argument("filter", nargs="?", default="*", help="fnmatch pattern, e.g. 'cbam*'")
    parser.add_argument("--family", choices=FAMILIES, help="only blocks of this family")
    args = parser.parse_args(argv)
    names = list_attn(args.filter, family=args.family)
    if not names:
        print(f"no attention block matches {args.filter!r}" + (f" in family {args.family!r}" if args.family else ""),
              file=sys.stderr)
        return 1
    table = Table(title=f"attnzoo attention blocks ({len(names)})")
    for col, kw in [("name", {}), ("family", {}), ("paper", {"overflow": "fold"}), ("year", {"justify": "right"}),
                    ("params @C=64", {"justify": "right"}), ("params @C=256", {"justify": "right"})]:
        table.add_column(col, **kw)
    for name in names:
        meta = attn_info(name).metadata
        table.add_row(name, meta["family"], meta["paper"], str(meta["year"]),
                      _param_count(name, 64), _param_count(name, 256))
    Console(width=160).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
