"""Vision MLP backbones (S²-MLP, CCS-MLP, S²-MLPv2, MLP-Mixer); importing registers them in ``ARCHS``."""
from paddle_suite.vision import models  # noqa: F401  (registers the architectures)
from paddle_suite.vision.models import CIFAR_VARIANTS, IMAGENET_VARIANTS, MLPBackbone  # noqa: F401
