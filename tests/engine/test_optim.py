"""Optimizer parameter groups: no weight decay on norms and biases, per-group learning-rate multipliers."""
import copy

import numpy as np
import paddle
import pytest

from paddle_suite.config import CORE_SCHEMA, ConfigError, Field
from paddle_suite.engine.optim import build_optimizer


def opt_cfg(**changes):
    cfg = {k: (v.default if isinstance(v, Field) else copy.deepcopy(v)) for k, v in CORE_SCHEMA["Optimizer"].items()}
    cfg["schedule"] = {k: (v.default if isinstance(v, Field) else v) for k, v in cfg["schedule"].items()}
    cfg.update(changes)
    return cfg


class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.body = paddle.nn.Linear(3, 4)
        self.norm = paddle.nn.LayerNorm(4)
        self.head = paddle.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.norm(self.body(x)))


def one_step(cfg, seed=0):
    """Parameters before and after one step whose gradients are all zero except through decay."""
    paddle.seed(seed)
    net = Net()
    rng = np.random.default_rng(seed)
    for param in net.parameters():  # non-zero everywhere (biases start at 0, where decay does nothing)
        param.set_value(rng.normal(size=param.shape).astype("float32"))
    before = {k: v.numpy().copy() for k, v in net.named_parameters()}
    optimizer, _ = build_optimizer(cfg, net, total_steps=10)
    loss = net(paddle.ones([2, 3])).sum() * 0.0  # zero gradients: only weight decay moves a parameter
    loss.backward()
    optimizer.step()
    return before, {k: v.numpy() for k, v in net.named_parameters()}


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_no_weight_decay_spares_biases_and_norms(name):
    before, after = one_step(opt_cfg(name=name, lr=0.1, weight_decay=0.5, no_weight_decay=["1d"]))
    for key in before:
        moved = not np.allclose(before[key], after[key])
        assert moved == (before[key].ndim > 1), key  # only the two weight matrices decay
    # by name: the head's bias only
    before, after = one_step(opt_cfg(name=name, lr=0.1, weight_decay=0.5, no_weight_decay=["head.bias", "norm"]))
    assert np.allclose(before["head.bias"], after["head.bias"]) and np.allclose(before["norm.weight"], after["norm.weight"])
    assert not np.allclose(before["body.bias"], after["body.bias"])


def test_default_keeps_one_group_and_decays_everything():
    before, after = one_step(opt_cfg(name="SGD", lr=0.1, weight_decay=0.5))
    for key in before:
        np.testing.assert_allclose(after[key], before[key] * (1 - 0.1 * 0.5), rtol=1e-6, err_msg=key)
    optimizer, _ = build_optimizer(opt_cfg(), Net(), total_steps=1)
    assert not isinstance(optimizer._parameter_list[0], dict)  # paddle's plain list, as before groups existed


def test_lr_multiplier_scales_the_step_of_its_group_only():
    paddle.seed(0)
    nets, steps = [Net(), Net()], []
    nets[1].set_state_dict(nets[0].state_dict())
    for net, groups in zip(nets, ([], [{"match": "^head", "lr_mult": 10.0}])):
        before = {k: v.numpy().copy() for k, v in net.named_parameters()}
        optimizer, _ = build_optimizer(opt_cfg(name="SGD", lr=0.01, param_groups=groups), net, total_steps=1)
        net(paddle.ones([2, 3])).sum().backward()
        optimizer.step()
        steps.append({k: v.numpy() - before[k] for k, v in net.named_parameters()})
    plain, grouped = steps
    for key in plain:
        factor = 10.0 if key.startswith("head") else 1.0
        np.testing.assert_allclose(grouped[key], plain[key] * factor, rtol=1e-5, atol=1e-8, err_msg=key)


def test_a_pattern_that_matches_nothing_or_a_bad_group_is_an_error():
    with pytest.raises(ConfigError, match=r"\['classifier'\] match no parameter.*head.weight"):
        build_optimizer(opt_cfg(param_groups=[{"match": "classifier", "lr_mult": 2.0}]), Net(), 1)
    with pytest.raises(ConfigError, match=r"param_groups\[0\].lr_mult: expected a number >= 0"):
        build_optimizer(opt_cfg(param_groups=[{"match": "head", "lr_mult": "ten"}]), Net(), 1)
    with pytest.raises(ConfigError, match=r"param_groups\[0\]: unknown key\(s\) \['lr'\]"):
        build_optimizer(opt_cfg(param_groups=[{"match": "head", "lr": 2.0}]), Net(), 1)
