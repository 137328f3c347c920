"""paddle_suite: PaddlePaddle implementations of published research systems.

Importing the package sets ``MKL_DEBUG_CPU_TYPE=5`` unless the user set it: the MKL bundled
with paddle 2.6.2 otherwise takes a slow code path on AMD CPUs (about 3x slower matmuls).
It must happen before paddle is imported, so import ``paddle_suite`` first.
"""
import os

os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")

__version__ = "0.1.0"
