"""Our S²-MLP / S²-MLPv2 against the independent PyTorch twin in bench/ (skipped without torch, a bench extra)."""
import os
import sys

import numpy as np
import pytest

import paddle_suite  # noqa: F401
import paddle

from paddle_suite.registry import ARCHS
from paddle_suite.vision import models  # noqa: F401  (registers the architectures)

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import torch_s2mlp  # noqa: E402


@pytest.mark.parametrize("name", ["s2mlp_cifar", "s2mlpv2_cifar"])
def test_logits_and_gradients_match_the_torch_twin(name):
    paddle.seed(0)
    ours = ARCHS.get(name)()
    twin = torch_s2mlp.load_from_paddle(torch_s2mlp.TWINS[name](num_classes=10), ours)
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype("float32")
    labels = np.array([0, 3, 5, 9])

    loss = paddle.nn.functional.cross_entropy(ours(paddle.to_tensor(images)), paddle.to_tensor(labels))
    loss.backward()
    twin_loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(images)), torch.from_numpy(labels))
    twin_loss.backward()
    assert abs(float(loss) - float(twin_loss.detach())) < 1e-5
    twin_grads = dict(twin.named_parameters())
    for param_name, param in ours.named_parameters():
        twin_grad = twin_grads[param_name].grad.numpy()
        if twin_grad.ndim == 2 and param_name.endswith("weight"):
            twin_grad = twin_grad.T  # torch stores linear weights [out, in]
        np.testing.assert_allclose(param.grad.numpy(), twin_grad, rtol=1e-3, atol=1e-6, err_msg=param_name)
