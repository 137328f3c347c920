import paddle
import pytest

from paddle_suite.classification import models


def count(model):
    return sum(int(p.size) for p in model.parameters())


def test_resnet20_has_the_papers_size_and_shapes():
    model = models.resnet20(num_classes=10, in_channels=3)
    assert 0.26e6 < count(model) < 0.28e6  # "0.27M" in He et al. (2016), table 6
    model.eval()
    assert model(paddle.randn([2, 3, 32, 32])).shape == [2, 10]
    assert models.resnet20(num_classes=100, in_channels=1)(paddle.randn([2, 1, 28, 28])).shape == [2, 100]


def test_lenet_shapes_and_options():
    assert models.lenet(10, 1, 28)(paddle.randn([3, 1, 28, 28])).shape == [3, 10]
    assert models.lenet(10, 3, 32, activation="tanh", pool="avg")(paddle.randn([3, 3, 32, 32])).shape == [3, 10]
    assert count(models.lenet(10, 1, 28)) == 61_706  # the classic LeNet-5 with padding 2
    with pytest.raises(ValueError, match="Arch.pool"):
        models.LeNet(10, pool="median")
