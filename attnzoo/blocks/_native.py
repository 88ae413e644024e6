"""Native CPU kernels (``_native.c``): built on first use with the system C compiler, loaded with ctypes.

Not a block module (the leading underscore keeps ``attnzoo.blocks`` discovery from importing it).

Why C through ctypes and not ``torch.utils.cpp_extension``: the kernels take raw float pointers and
need no ATen headers, so they build in well under a second with ``cc`` alone (a torch extension
takes about a minute on two cores and needs ninja); and they use OpenMP through the very
``libgomp.so.1`` that torch loaded (same soname), so they share torch's thread pool instead of
starting a second one that would compete with it.

Build: ``$CC`` (default ``cc``) ``-O3 -march=native -fopenmp -shared -fno-math-errno -fno-trapping-math``
(IEEE results unchanged: no -ffast-math; errno and FP traps are never used), into
``$ATTNZOO_CACHE_DIR`` (default ``$XDG_CACHE_HOME/attnzoo`` or ``~/.cache/attnzoo``) under
``kernels/<hash>.so``, the hash covering the source, the compiler command, its version and the
CPU's flags (so a cache shared between machines never loads a library built for another CPU).
The library is written to a temporary name and renamed, so concurrent processes never load a half
written file. Nothing is downloaded.

Where no compiler is found or the build fails, ``kernels()`` returns None after one warning that says
why, and every caller keeps its plain PyTorch path. ``ATTNZOO_NATIVE=0`` switches the kernels off.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["kernels", "native_enabled", "build_error", "cache_dir", "applies", "signatures", "status", "target",
           "layout_flag", "in_layout"]

_SOURCE = Path(__file__).with_name("_native.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
_ABI = 23
_lock = threading.Lock()
_state: dict = {}


def native_enabled() -> bool:
    """False when ``ATTNZOO_NATIVE`` is set to 0 / false / off / no."""
    return os.environ.get("ATTNZOO_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> Path:
    """Where built kernels are kept."""
    if os.environ.get("ATTNZOO_CACHE_DIR"):
        return Path(os.environ["ATTNZOO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "attnzoo"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(cc: list[str]) -> Path:
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), " ".join(cc + _FLAGS), version, _cpu_flags(),
                                    platform.machine()]).encode()).hexdigest()[:20]
    out = cache_dir() / "kernels" / f"attnzoo_native_{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([*cc, *_FLAGS, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cc)} exited with {proc.returncode}: {proc.stderr.strip()[-800:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


_CTYPES = {"float*": ctypes.c_void_p, "int32_t*": ctypes.c_void_p, "int64_t": ctypes.c_int64, "int": ctypes.c_int,
           "float": ctypes.c_float}


def signatures(source: str) -> dict[str, list]:
    """ctypes argument types of every exported ``void f(...)`` in the C source, read from the source itself
    (with its ``#define X_DIMS ...`` parameter macros expanded), so Python and C cannot disagree on a
    signature: a mismatch would pass garbage pointers."""
    macros = {m.group(1): m.group(2).replace("\\\n", " ")
              for m in re.finditer(r"^#define (\w+_DIMS) ((?:.*\\\n)*.*)$", source, re.M)}
    out = {}
    for m in re.finditer(r"^void (\w+)\(([^)]*)\)", source, re.M):
        params = m.group(2)
        for name, body in macros.items():
            params = re.sub(rf"\b{name}\b", body, params)
        types = []
        for param in params.split(","):
            words = param.replace("const", " ").replace("*", " * ").split()
            key = words[0] + ("*" if "*" in words else "")
            if key not in _CTYPES:
                raise RuntimeError(f"_native.c: {m.group(1)} has a parameter of unknown type {param.strip()!r}")
            types.append(_CTYPES[key])
        out[m.group(1)] = types
    return out


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.attnzoo_native_abi.restype = ctypes.c_int
    for name, types in signatures(_SOURCE.read_text()).items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = types, None
    return lib


def _load():
    cc = shlex.split(os.environ.get("CC", "cc"))
    if not cc or shutil.which(cc[0]) is None:
        raise RuntimeError(f"no C compiler: {cc[0] if cc else '$CC'!r} is not on PATH (set CC to one)")
    lib = _declare(ctypes.CDLL(str(_build(cc))))
    if lib.attnzoo_native_abi() != _ABI:
        raise RuntimeError(f"the cached library reports ABI {lib.attnzoo_native_abi()}, expected {_ABI}")
    return lib


def kernels():
    """The loaded kernel library, or None (switched off, or it could not be built: see ``build_error``)."""
    if not native_enabled():
        return None
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                try:
                    _state["lib"], _state["error"] = _load(), None
                except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                    _state["lib"], _state["error"] = None, str(err)
                    warnings.warn(f"attnzoo: native CPU kernels unavailable, using the PyTorch paths ({err}); "
                                  "set ATTNZOO_NATIVE=0 to skip the build", RuntimeWarning, stacklevel=3)
    return _state["lib"]


def applies(x: torch.Tensor) -> bool:
    """The native kernels may run on ``x``: a float32 CPU tensor in eager mode -- not while ``torch.compile``,
    ``torch.export``, TorchScript tracing or ONNX export records the graph, nor under a dispatch mode such
    as ``FlopCounterMode`` (all of them must see the aten ops: a kernel call is invisible to them, and
    FLOPs counted around one would be too few) -- with a batch of at least the thread count (the kernels
    split samples over threads), and the library built. (Under ``torch.compile`` a few whole-block ops call
    the kernels as custom ops instead: ``_compiled.target``.)"""
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and torch._C._len_torch_dispatch_stack() == 0 and x.device.type == "cpu"
            and x.dtype == torch.float32 and x.dim() == 4 and x.shape[0] >= torch.get_num_threads()
            and kernels() is not None)


def status() -> str:
    """One line for logs and run records: "on (<library>)", "off (ATTNZOO_NATIVE=0)" or "unavailable: <why>".
    Builds the kernels if they were not asked for yet."""
    if not native_enabled():
        return f"off (ATTNZOO_NATIVE={os.environ.get('ATTNZOO_NATIVE')})"
    lib = kernels()
    return f"on ({lib._name})" if lib is not None else f"unavailable: {build_error()}"


def target(x: torch.Tensor):
    """(library, layout flag) where the kernels run on ``x`` -- ``applies(x)``, non-empty, contiguous in NCHW
    (flag 0) or channels_last (flag 1) -- else None. The one entry check of every native op."""
    if not applies(x) or x.numel() == 0:
        return None
    flag = layout_flag(x)
    return None if flag is None else (kernels(), flag)


def layout_flag(x: torch.Tensor) -> int | None:
    """0 where ``x`` is contiguous in NCHW, 1 in channels_last (NCHW first where it is both), else None."""
    if x.is_contiguous():
        return 0
    if x.is_contiguous(memory_format=torch.channels_last):
        return 1
    return None


def in_layout(t: torch.Tensor, flag: int) -> torch.Tensor:
    """``t`` contiguous in the layout ``flag`` names (``layout_flag``): no copy where it already is."""
    return t.contiguous(memory_format=torch.channels_last if flag else torch.contiguous_format)


def build_error() -> str | None:
    """Why the kernels could not be built (None when they were, or were never asked for)."""
    return _state.get("error")


def _reset() -> None:
    """Forget the loaded library (tests)."""
    _state.clear()


def ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()
