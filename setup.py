"""paddle_suite: PaddlePaddle implementations of published research systems.

The pins are a set verified to install and import together on Python 3.11 (see README):
paddle 3.x CPU wheels lack the parameter-server core, so the suite stands on paddle 2.6.2;
paddlenlp 2.8.1 needs the older huggingface_hub / aistudio-sdk / datasets APIs, and
protobuf 6+ breaks Fleet's DistributedStrategy. GPU users: install paddlepaddle-gpu==2.6.2
first, then this package with PADDLE_SUITE_GPU=1 so the CPU wheel is not required.
"""
import os

from setuptools import find_packages, setup

PADDLE = "paddlepaddle-gpu==2.6.2" if os.environ.get("PADDLE_SUITE_GPU") == "1" else "paddlepaddle==2.6.2"

setup(
    name="paddle_suite",
    version="0.1.0",
    description="PaddlePaddle-native toolkit: SpaceE KGE, hierarchical parameter server, and more",
    long_description=open(os.path.join(os.path.dirname(__file__), "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9,<3.12",
    packages=find_packages(include=["paddle_suite", "paddle_suite.*"]),
    package_data={"paddle_suite.vision": ["kernels/*.c"]},  # compiled on first use (vision/native.py)
    install_requires=[
        PADDLE,
        "paddlenlp==2.8.1",
        "huggingface_hub<0.26",
        "aistudio-sdk==0.2.6",
        "datasets<3",
        "protobuf>=3.20,<6",
        "visualdl==2.5.3",
        "numpy>=1.24,<2.5",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "lmdb>=1.4",
        # the hierarchical store's transport (raw-bytes generic handlers: no protobuf codegen);
        # 1.66 is the first with grpc.max_allowed_incoming_connections
        "grpcio>=1.66,<2",
        "numba>=0.68",  # fused KGE distance kernels (paddle_suite/kge/kernels.py); 0.68.1 checked with numpy 2.4.6
        "psutil>=5.9",  # the trainer's CPU-time record (also a visualdl dependency)
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
        # peers for bench/: PyTorch 2.13.0 CPU (installable offline here) and PyKEEN
        "bench": ["torch==2.13.0", "pykeen>=1.10", "pyhessian==0.1"],
    },
    entry_points={
        "console_scripts": [
            "paddle-suite-train=paddle_suite.cli:train",
            "paddle-suite-eval=paddle_suite.cli:evaluate",
            "paddle-suite-export=paddle_suite.cli:export",
        ]
    },
)
