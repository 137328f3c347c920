"""paddle_suite: PaddlePaddle implementations of published research systems.

On AMD CPUs importing the package sets ``MKL_DEBUG_CPU_TYPE=5`` unless the user set it: the MKL
bundled with paddle 2.6.2 otherwise takes a slow code path there (about 3x slower matmuls). On
Intel CPUs with AVX-512 the same setting forces AVX2 code and slows matmuls about 1.6x, so it is
left alone. It must happen before paddle is imported, so import ``paddle_suite`` first.
"""
import os


def _amd_cpu():
    try:
        with open("/proc/cpuinfo") as handle:
            return any(line.startswith("vendor_id") and "AuthenticAMD" in line for line in handle)
    except OSError:
        return False


if _amd_cpu():
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")

__version__ = "0.1.0"
