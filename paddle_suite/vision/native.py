"""Vectorised CPU kernels compiled on first use (``kernels/*.c``, plain C loaded with ctypes).

Why: two of paddle 2.6.2's CPU kernels the vision MLPs run in every block are far slower than
PyTorch's (one thread each, ``bench/vision_speed.md``):

* ``gelu``: scalar code (its backward allocates and fills two temporaries and loops over them); on
  a ``[32, 196, 1536]`` map forward 39 ms and backward 125 ms, against 12 and 14 ms for
  ``kernels/gelu.c`` (glibc's SIMD ``erff``/``expf``) and 63 ms for PyTorch's forward + backward;
* ``layer_norm``: forward + backward of ``[3136, 384]`` 28 ms (13 ms with numpy passes) against
  2.7 ms in PyTorch; ``kernels/layer_norm.c`` is one fused pass per row each way.

The library is built with the system C compiler (``$CC``, default ``cc``) for x86-64 with AVX2 and
FMA, into ``$PADDLE_SUITE_CACHE`` (default ``~/.cache/paddle_suite``)``/kernels/<source hash>/``
(written to a temporary name, then renamed). Without a compiler, AVX2, glibc >= 2.35's libmvec, or
with ``PADDLE_SUITE_NATIVE=0``, ``library()`` returns None (logged once) and callers use paddle's
own kernels, which are also the reference in ``tests/vision/test_ops.py``.
"""
import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = sorted((Path(__file__).with_name("kernels")).glob("*.c"))
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-shared"]
LIBS = ["-lmvec", "-lm"]


def _cpu_has_avx2():
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx2" in flags and "fma" in flags


def _cache_dir():
    root = os.environ.get("PADDLE_SUITE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "paddle_suite")
    return Path(root) / "kernels"


def _build(sources, compiler):
    content = b"".join(source.read_bytes() for source in sources) + " ".join([compiler, *FLAGS, *LIBS]).encode()
    target = _cache_dir() / hashlib.sha256(content).hexdigest()[:16] / "libpaddle_suite_kernels.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
        os.close(fd)
        try:
            subprocess.run([compiler, *FLAGS, *map(str, sources), "-o", partial, *LIBS], check=True,
                           capture_output=True, text=True, timeout=120)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return target


@functools.lru_cache(maxsize=None)
def library():
    """The loaded kernel library, or None when it cannot be used here (the reason is logged once)."""
    if os.environ.get("PADDLE_SUITE_NATIVE", "1") == "0":
        return None
    if not _cpu_has_avx2():
        log.info("native kernels off: this CPU has no AVX2/FMA; using paddle's kernels")
        return None
    compiler = os.environ.get("CC", "cc")
    try:
        lib = ctypes.CDLL(str(_build(SOURCES, compiler)))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", None) or err
        log.warning("native kernels off (building %s with %s failed: %s); using paddle's kernels",
                    " ".join(source.name for source in SOURCES), compiler, str(detail).strip()[-500:])
        return None
    pointer, count, real = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
    signatures = {
        "gelu_forward": [pointer, pointer, count],
        "gelu_backward": [pointer, pointer, pointer, count],
        "layer_norm_forward": [pointer, pointer, pointer, real, pointer, pointer, pointer, count, count],
        "layer_norm_backward": [pointer] * 8 + [count, count],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
    return lib
