"""The native ops of the working tree against those of a git revision: the same blocks, same weights, same
inputs, timed interleaved in one process.

    python benchmarks/native_revision.py --rev 5c89a4a --blocks cbam simam strip
    python benchmarks/native_revision.py --rev 5c89a4a --hosts resnet20 --blocks cbam coord
    python benchmarks/native_revision.py --rev 5c89a4a --json benchmarks/results/native_revision_cpu.json

The revision's ``attnzoo/blocks/_native.c`` is built into a temporary library (the flags of
``_native._FLAGS``) and its ``attnzoo/blocks/_pooled_gates.py`` and ``_small_graphs.py`` (where it has them)
loaded as modules of their own; the "old" side points each block module's imported ops at those modules and
the kernel library at that build, the "new" side at the working tree's (an op the revision did not have
returns None there, so the block takes its PyTorch path or runs its small graph as modules, as it did).
Where a block's own module (``attnzoo/blocks/<block>.py``) differs from the revision's, the revision's file is
loaded as a module of its own too, and the old side runs its classes' methods (every function the old class
defines but ``__init__``) on the working tree's instances: the same parameters, the revision's computation.
``LayoutConv2d`` likewise runs the revision's ``_layout.py`` methods on the old side where that file differs (its
routes, and the argument lists of the kernels it calls, which must match the revision's library); the native
grouped convolution is switched off there (``_layout._GROUPED_MAX``) where the revision had none. Everything else
is the working tree's on both sides.

Blocks: forward + backward (``y.backward(g)``) at ResNet-20's three stages on Fashion-MNIST (batch 128:
16x28x28, 32x14x14, 64x7x7), channels_last, float32, train mode, ``--steps`` passes per turn; ``--pairs``
ABBA pairs (old, new, new, old), the ratio new / old of each pair's two sums; printed: the median ratio and
its range over the pairs (< 1: the working tree is faster). The outputs and input gradients of both sides
are checked equal first.

Hosts (``--hosts``): whole training steps of ``overhead_floor.py``'s hosts with the block inserted at every
site (SGD, batch 128, channels_last), the same ABBA pairs of ``--steps`` steps each.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

import attnzoo
import attnzoo.factory
from attnzoo.ablation.runner import cpu_model
from attnzoo.blocks import _layout, _native, _pooled_gates, _small_graphs
from attnzoo.training.allocator import use_allocator

sys.path.insert(0, str(Path(__file__).parent))
from overhead_floor import Job  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(128, 16, 28, 28), (128, 32, 14, 14), (128, 64, 7, 7)]
OP_MODULES = (_pooled_gates, _small_graphs)  # the modules whose ops the block modules import
OPS = [op for m in OP_MODULES for op in m.__all__]


def _git_show(rev: str, path: str, missing_ok: bool = False) -> str | None:
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        if missing_ok:
            return None
        raise SystemExit(f"git show {rev}:{path} failed: {proc.stderr.strip()}")
    return proc.stdout


def revision_side(rev: str, tmp: Path):
    """(kernel library, [the revision's op modules, those it has]) of ``rev``."""
    source = _git_show(rev, "attnzoo/blocks/_native.c")
    c_file, so_file = tmp / "native_rev.c", tmp / "native_rev.so"
    c_file.write_text(source)
    subprocess.run(["cc", *_native._FLAGS, str(c_file), "-o", str(so_file), "-lm"], check=True)
    lib = ctypes.CDLL(str(so_file))
    lib.attnzoo_native_abi.restype = ctypes.c_int
    for name, types in _native.signatures(source).items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = types, None
    modules = []
    for current in OP_MODULES:
        short = current.__name__.rsplit(".", 1)[1]
        text = _git_show(rev, f"attnzoo/blocks/{short}.py", missing_ok=short != "_pooled_gates")
        if text is None:
            continue
        spec = importlib.util.spec_from_loader(f"attnzoo.blocks.{short}_rev", loader=None)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "attnzoo.blocks"
        exec(compile(text, f"{rev}:{short}.py", "exec"), module.__dict__)
        modules.append(module)
    layout = _git_show(rev, "attnzoo/blocks/_layout.py")
    return lib, modules, {"_GROUPED_MAX": _layout._GROUPED_MAX if "_GroupedConv" in layout else 0}


def block_methods(rev: str, names) -> dict:
    """{class: {method name: the revision's function}} for the blocks whose module differs from the revision's, and
    for ``LayoutConv2d`` where ``_layout.py`` does (its routes and the argument lists of the kernels it calls)."""
    out = {}
    classes = [_layout.LayoutConv2d]
    for name in names:
        factory = attnzoo.factory.attn_info(name).factory
        classes.append(getattr(factory, "func", factory))
    for cls in classes:
        short = cls.__module__.rsplit(".", 1)[1]
        path = f"attnzoo/blocks/{short}.py"
        text = _git_show(rev, path, missing_ok=True)
        if text is None or text == (ROOT / path).read_text() or cls in out:
            continue
        spec = importlib.util.spec_from_loader(f"attnzoo.blocks.{short}_rev", loader=None)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "attnzoo.blocks"
        with _registry_frozen():
            exec(compile(text, f"{rev}:{short}.py", "exec"), module.__dict__)
        sys.modules[spec.name] = module  # so that Sides.use points its imported ops at each side's too
        old_cls = getattr(module, cls.__name__)
        out[cls] = {k: _rebound(v, cls) for k, v in vars(old_cls).items()
                    if callable(v) and k != "__init__" and not isinstance(v, type)}
    return out


def _rebound(fn, cls):
    """``fn`` with its zero-argument ``super()`` cell pointing at the working tree's ``cls`` (whose instances it runs
    on), not at the revision's class of the same name."""
    code = getattr(fn, "__code__", None)
    if code is None or "__class__" not in code.co_freevars:
        return fn
    cells = tuple(types.CellType(cls) if name == "__class__" else cell
                  for name, cell in zip(code.co_freevars, fn.__closure__))
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, cells)


class _registry_frozen:
    """The revision's block module registers its blocks again on import: keep the registry as it was."""

    def __enter__(self):
        self.entries = attnzoo.factory.ATTN_REGISTRY._entries
        self.saved = dict(self.entries)
        self.entries.clear()

    def __exit__(self, *exc):
        self.entries.clear()
        self.entries.update(self.saved)


class Sides:
    """Switches every loaded block module's imported native ops and the kernel library between two sides."""

    def __init__(self, old_lib, old_modules, old_layout: dict, methods: dict | None = None) -> None:
        self.lib = {"old": old_lib, "new": _native.kernels()}
        self.layout = {"old": old_layout, "new": {k: getattr(_layout, k) if k.isupper() else
                                                  getattr(_layout.LayoutConv2d, k) for k in old_layout}}
        self.methods = {"old": methods or {}, "new": {cls: {k: cls.__dict__.get(k) for k in m}
                                                       for cls, m in (methods or {}).items()}}
        # an op the revision did not have: the block took its PyTorch path there (the op "does not apply")
        old = {op: getattr(m, op) for m in old_modules for op in getattr(m, "__all__", ()) if op in OPS}
        self.ops = {"old": {op: old.get(op, _not_there) for op in OPS},
                    "new": {op: getattr(m, op) for m in OP_MODULES for op in m.__all__}}

    def use(self, side: str) -> None:
        _native._state["lib"] = self.lib[side]
        for k, v in self.layout[side].items():
            setattr(_layout if k.isupper() else _layout.LayoutConv2d, k, v)
        for cls, methods in self.methods[side].items():
            for k, v in methods.items():
                if v is None:
                    delattr(cls, k) if k in cls.__dict__ else None
                else:
                    setattr(cls, k, v)
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("attnzoo.blocks.") and module not in OP_MODULES:
                for op in OPS:
                    if getattr(module, op, None) in (self.ops["old"][op], self.ops["new"][op]):
                        setattr(module, op, self.ops[side][op])


def _not_there(*args, **kwargs) -> None:
    return None


def abba(sides: Sides, run, pairs: int) -> list[float]:
    for side in ("old", "new"):
        sides.use(side)
        run()
    ratios = []
    for _ in range(pairs):
        t = {"old": 0.0, "new": 0.0}
        for side in ("old", "new", "new", "old"):
            sides.use(side)
            t0 = time.perf_counter()
            run()
            t[side] += time.perf_counter() - t0
        ratios.append(t["new"] / t["old"])
    sides.use("new")
    return ratios


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", required=True, help="the git revision to compare with (e.g. the last measured commit)")
    p.add_argument("--blocks", nargs="+", required=True)
    p.add_argument("--hosts", nargs="*", default=[], help="also whole training steps in these hosts (resnet20, resnet56)")
    p.add_argument("--pairs", type=int, default=11)
    p.add_argument("--steps", type=int, default=5, help="passes (blocks) or steps (hosts) per turn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    alloc = use_allocator("keep")
    if _native.kernels() is None:
        print(f"native kernels unavailable: {_native.build_error()}")
        return 1
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "attnzoo"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sides = Sides(*revision_side(args.rev, Path(tmp)), block_methods(args.rev, args.blocks))
        print(f"working tree ({head}{', modified' if dirty else ''}) / {args.rev}: forward+backward, float32, "
              f"channels_last, {args.threads} threads, {cpu_model()}, torch {torch.__version__}, median of "
              f"{args.pairs} ABBA pairs of {args.steps} passes (range)")
        for shape in SHAPES:
            for name in args.blocks:
                torch.manual_seed(0)
                block = attnzoo.create_attn(name, shape[1]).train()
                x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_(True)
                g = torch.randn(shape).contiguous(memory_format=torch.channels_last)
                state = {k: v.clone() for k, v in block.state_dict().items()}
                outs, fns = [], []
                for side in ("old", "new"):
                    sides.use(side)
                    block.load_state_dict(state)
                    y = block(x)
                    y.backward(g)
                    outs.append((y.detach(), x.grad))
                    fns.append(type(y.grad_fn).__name__)
                    x.grad = None
                for a, b in zip(*outs):
                    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * max(1.0, float(a.abs().max())))

                def run(block=block, x=x, g=g):
                    for _ in range(args.steps):
                        block(x).backward(g)
                        x.grad = None

                r = abba(sides, run, args.pairs)
                rows.append(dict(kind="block", block=name, shape=list(shape), ratio_median=statistics.median(r),
                                 ratio_min=min(r), ratio_max=max(r), output_op=dict(old=fns[0], new=fns[1])))
                print(f"  {name:<14}{'x'.join(map(str, shape)):<14}{statistics.median(r):>7.3f}  "
                      f"({min(r):.3f}-{max(r):.3f})  {fns[0]} -> {fns[1]}", flush=True)
        for host in args.hosts:
            for name in args.blocks:
                job = Job(host, name, "eager", 128)
                job.warm()

                def run(job=job):
                    for _ in range(args.steps):
                        job.step()

                r = abba(sides, run, args.pairs)
                rows.append(dict(kind="host", host=host, block=name, ratio_median=statistics.median(r),
                                 ratio_min=min(r), ratio_max=max(r)))
                print(f"  {host}+{name:<14}{'training step':<14}{statistics.median(r):>7.3f}  ({min(r):.3f}-{max(r):.3f})",
                      flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(rev=args.rev, head=head, modified=dirty, threads=args.threads,
                                             pairs=args.pairs, steps=args.steps, cpu=cpu_model(), torch=torch.__version__,
                                             allocator=alloc, rows=rows), indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
