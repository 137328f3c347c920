"""Multiply-add counts of the vision backbones (what the papers report as "FLOPs").

``paddle.flops`` would count the same ``nn.Linear`` multiply-adds, but in paddle 2.6.2 with numpy
2.x it fails while printing its table (``int()`` of a one-element array raises ``TypeError``), and
it cannot see the FFT token mixing. So this module hooks the leaf layers itself:

* ``nn.Linear``: ``in_features`` multiply-adds per output element (bias adds not counted), the
  same rule as ``paddle.flops``; patch embedding and merging are linear layers here, so they are
  included;
* ``CCSMixing``: per channel, two real FFTs of ``N = H W`` points at ``1.25 N log2 N``
  multiply-adds each (the usual ``5 N log2 N`` flops of a complex FFT, halved for real input,
  halved again to count multiply-adds) plus 4 real multiply-adds per complex spectral product.
  It is below 1% of any model's total;
* shifts, LayerNorm, GELU, softmax, pooling and residual adds: not counted (elementwise, as in
  ``paddle.flops`` and the papers' tables).
"""
import math

import paddle_suite  # noqa: F401
import paddle
import paddle.nn as nn

from paddle_suite.vision.models import CCSMixing


def _linear_macs(layer, inputs, output):
    return layer.weight.shape[0] * output.size


def _ccs_macs(layer, inputs, output):
    batch, height, width, channels = output.shape
    points = height * width
    fft = 1.25 * points * math.log2(points)
    product = 4 * height * (width // 2 + 1)
    return int(batch * channels * (2 * fft + product))


_COUNTERS = {nn.Linear: _linear_macs, CCSMixing: _ccs_macs}


def count_macs(model, image_size, in_channels=3):
    """Multiply-adds of one forward pass of ``model`` on a single ``image_size`` x ``image_size`` image."""
    total = [0]
    hooks = []

    def hook(counter):
        def record(layer, inputs, output):
            total[0] += counter(layer, inputs, output)

        return record

    for layer in model.sublayers(include_self=True):
        counter = next((c for kind, c in _COUNTERS.items() if isinstance(layer, kind)), None)
        if counter is not None:
            hooks.append(layer.register_forward_post_hook(hook(counter)))
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            model(paddle.zeros([1, in_channels, image_size, image_size]))
    finally:
        for handle in hooks:
            handle.remove()
        if was_training:
            model.train()
    return total[0]
