"""Two small shared baselines, registered in ``ARCHS``.

* ``LeNet``: LeNet-5 (LeCun et al. 1998) for 28x28 digits/clothes: conv5x5(6, padding 2) - pool -
  conv5x5(16) - pool - fc120 - fc84 - fc(num_classes). ``activation`` (``relu`` or the paper's
  ``tanh``) and ``pool`` (``max`` or the paper's subsampling read as ``avg``) are options: avg
  pooling and tanh have exact second derivatives in paddle 2.6.2, max pooling has none.
  Other input sizes work: the first linear layer is sized from ``image_size``.
* ``ResNet20``: the CIFAR ResNet of He et al. (2016, section 4.2): conv3x3(16), three stages of
  three basic blocks (16, 32, 64 channels, stride 2 at stages 2 and 3), global average pooling,
  fc. Shortcuts are option A of the paper (identity; when the shape changes, the input subsampled
  by 2 and zero-padded in channels), which gives the paper's 0.27M parameters.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddle_suite.config import Field
from paddle_suite.registry import ARCHS

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class LeNet(nn.Layer):
    def __init__(self, num_classes, in_channels=1, image_size=28, activation="relu", pool="max"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"Arch.activation={activation!r}: use one of {', '.join(_ACTIVATIONS)}")
        if pool not in ("max", "avg"):
            raise ValueError(f"Arch.pool={pool!r}: use max or avg")
        act, pooling = _ACTIVATIONS[activation], nn.MaxPool2D if pool == "max" else nn.AvgPool2D
        side = ((image_size // 2) - 4) // 2  # conv(pad 2) keeps the size, pool halves, conv5 trims 4
        if side < 1:
            raise ValueError(f"LeNet needs images of at least 12x12, got image_size={image_size}")
        self.features = nn.Sequential(
            nn.Conv2D(in_channels, 6, 5, padding=2), act(), pooling(2, 2),
            nn.Conv2D(6, 16, 5), act(), pooling(2, 2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(paddle.flatten(self.features(x), 1))


class BasicBlock(nn.Layer):
    def __init__(self, in_channels, channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2D(in_channels, channels, 3, stride=stride, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(channels)
        self.conv2 = nn.Conv2D(channels, channels, 3, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(channels)
        self.stride, self.extra_channels = stride, channels - in_channels

    def shortcut(self, x):
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:  # zero channels on both sides, as option A pads
            before = self.extra_channels // 2
            x = paddle.concat([paddle.zeros_like(x[:, :before]), x,
                               paddle.zeros_like(x[:, :self.extra_channels - before])], axis=1)
        return x

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Layer):
    def __init__(self, num_classes, in_channels=3, blocks_per_stage=3, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2D(in_channels, widths[0], 3, padding=1, bias_attr=False),
                                  nn.BatchNorm2D(widths[0]), nn.ReLU())
        layers, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks_per_stage):
                layers.append(BasicBlock(channels, width, 2 if stage > 0 and block == 0 else 1))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        out = self.stages(self.stem(x))
        return self.fc(paddle.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@ARCHS.register("LeNet")
def lenet(num_classes, in_channels, image_size,
          activation=Field("relu", str, choices=tuple(_ACTIVATIONS)), pool=Field("max", str, choices=("max", "avg"))):
    return LeNet(num_classes, in_channels, image_size, _default(activation), _default(pool))


@ARCHS.register("ResNet20")
def resnet20(num_classes, in_channels):
    return ResNet20(num_classes, in_channels)


def _default(value):
    """A factory called directly (not through a config) receives its ``Field`` defaults."""
    return value.default if isinstance(value, Field) else value
