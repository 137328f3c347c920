"""Vision backbones: parameter counts and FLOPs vs the papers, shapes, training, drop path, export."""
import numpy as np
import pytest

import paddle_suite  # noqa: F401
import paddle

from paddle_suite.config import build_arch
from paddle_suite.registry import ARCHS
from paddle_suite.vision import models
from paddle_suite.vision.flops import count_macs

# (parameters, GFLOPs = multiply-adds) the papers report at 224x224, 1000 classes
PAPER = {
    "s2mlp_wide": (71e6, 14.0),  # S²-MLP, Table (wide)
    "s2mlpv2_small": (25e6, 6.9),  # S²-MLPv2-Small/7
    "s2mlpv2_medium": (55e6, 16.3),  # S²-MLPv2-Medium/7 (abstract: 55M)
}


def n_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def lazy(name, **kwargs):
    with paddle.LazyGuard():  # shapes only: no 70M-parameter initialisation
        return ARCHS.get(name)(**kwargs)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_parameter_count_within_2_percent_of_paper(name):
    assert abs(n_params(lazy(name)) / PAPER[name][0] - 1) < 0.02


def test_s2mlp_deep_matches_its_stated_architecture_and_the_papers_flops():
    # 36 blocks of dim 384: four FCs (384^2 twice, 384 x 1536 twice) + two LayerNorms each;
    # patch FC (16*16*3 -> 384) + LayerNorm; final LayerNorm; head. The paper's 51M is not
    # reachable with this architecture (see models.py); its 10.5 GFLOPs is checked below.
    d, e = 384, 4
    block = 2 * (d * d + d) + (d * e * d + e * d) + (e * d * d + d) + 2 * 2 * d
    expected = 36 * block + (768 * d + d + 2 * d) + 2 * d + (d * 1000 + 1000)
    assert n_params(lazy("s2mlp_deep")) == expected


@pytest.mark.parametrize("name", ["s2mlp_deep", "s2mlpv2_small", "s2mlpv2_medium"])
def test_flops_within_2_percent_of_paper(name):
    paper_gflops = {"s2mlp_deep": 10.5, **{k: v[1] for k, v in PAPER.items()}}[name]
    assert abs(count_macs(ARCHS.get(name)(), 224) / 1e9 / paper_gflops - 1) < 0.02


def test_ccs_variant_sizes_as_documented():
    # no paper numbers for these sizes (our choice, see models.py): pin what the docstring states
    for name, (params, gflops) in {"ccsmlp_small": (29.14e6, 5.65), "ccsmlp_medium": (51.44e6, 9.99)}.items():
        assert abs(n_params(lazy(name)) / params - 1) < 0.001
    assert abs(count_macs(ARCHS.get("ccsmlp_small")(), 224) / 1e9 / 5.65 - 1) < 0.01


def test_variants_list_every_registered_vision_arch():
    # bench/vision_models.py reports models.VARIANTS; the results contract asks for every registered variant
    registered = {name for name in ARCHS.names() if ARCHS.get(name).__module__ == models.__name__}
    assert registered == set(models.VARIANTS) and len(models.VARIANTS) == len(set(models.VARIANTS))


def test_cifar_variants_are_parameter_matched():
    counts = {name: n_params(lazy(name)) for name in models.CIFAR_VARIANTS}
    assert 1.0e6 < min(counts.values()) and max(counts.values()) / min(counts.values()) < 1.10, counts


@pytest.mark.parametrize("name", models.IMAGENET_VARIANTS)
def test_imagenet_variant_forward_shape(name):
    # full architecture at a smaller input (same blocks; grid 2x2 or 4x4): shapes and finiteness
    size = 56 if name.startswith("s2mlpv2") else 32
    model = ARCHS.get(name)(num_classes=7, image_size=size)
    model.eval()
    with paddle.no_grad():
        out = model(paddle.randn([2, 3, size, size]))
    assert out.shape == [2, 7] and bool(paddle.isfinite(out).all())


@pytest.mark.parametrize("name", models.CIFAR_VARIANTS)
def test_cifar_variant_trains(name):
    paddle.seed(0)
    model = ARCHS.get(name)(num_classes=4)
    images, labels = paddle.randn([8, 3, 32, 32]), paddle.to_tensor([0, 1, 2, 3] * 2)
    optimizer = paddle.optimizer.AdamW(2e-3, parameters=model.parameters())
    losses = []
    for _ in range(12):
        loss = paddle.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is None or bool(paddle.isfinite(p.grad).all()) for p in model.parameters())


def test_build_from_config_and_bad_sizes():
    model = build_arch({"Arch": {"name": "mixer_cifar", "drop_path_rate": 0.1}}, num_classes=100)
    assert model.head.weight.shape == [128, 100]
    with pytest.raises(ValueError, match="not divisible by the total patch size 14"):
        ARCHS.get("s2mlpv2_small")(image_size=224 + 7)
    with pytest.raises(ValueError, match="divisible by groups 5"):
        ARCHS.get("ccsmlp_cifar")(groups=5)
    ccs = ARCHS.get("ccsmlp_cifar")()
    with pytest.raises(ValueError, match="built for a 8x8 token grid, got 16x16"):
        ccs(paddle.zeros([1, 3, 64, 64]))


def test_drop_path_rates_and_behaviour():
    model = ARCHS.get("s2mlp_cifar")(drop_path_rate=0.2)
    rates = [layer.drop_path.rate for layer in model.layers if hasattr(layer, "drop_path")]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.2) < 1e-9 and rates == sorted(rates)
    drop = models.DropPath(0.5)
    x = paddle.ones([4000, 3])
    drop.train()
    y = drop(x).numpy()
    assert set(np.unique(y)) == {0.0, 2.0} and np.all(y == y[:, :1])  # whole samples dropped, rest rescaled
    assert 0.45 < (y[:, 0] == 0).mean() < 0.55
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy())


def test_export_matches_dygraph(tmp_path):
    from paddle.inference import Config, create_predictor

    paddle.seed(1)
    model = ARCHS.get("s2mlpv2_cifar")()
    model.eval()
    images = paddle.randn([3, 3, 32, 32])
    want = model(images).numpy()
    static = paddle.jit.to_static(
        model, input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32")], full_graph=True
    )
    prefix = str(tmp_path / "s2mlpv2_cifar")
    paddle.jit.save(static, prefix)
    predictor = create_predictor(Config(prefix + ".pdmodel", prefix + ".pdiparams"))
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.copy_from_cpu(images.numpy())
    predictor.run()
    got = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_linear_matches_paddle_linear_with_gradients():
    rng = np.random.default_rng(5)
    x_np, w_np, b_np = (rng.standard_normal(shape).astype("float32") for shape in ((2, 3, 4, 6), (6, 5), (5,)))
    upstream = paddle.to_tensor(rng.standard_normal((2, 3, 4, 5)).astype("float32"))
    layer = models.Linear(6, 5)
    layer.weight.set_value(w_np)
    layer.bias.set_value(b_np)
    x = paddle.to_tensor(x_np, stop_gradient=False)
    out = layer(x)
    (out * upstream).sum().backward()
    got = [out.numpy(), x.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy()]

    x, weight, bias = (paddle.to_tensor(a, stop_gradient=False) for a in (x_np, w_np, b_np))
    out = paddle.nn.functional.linear(x, weight, bias)
    (out * upstream).sum().backward()
    want = [out.numpy(), x.grad.numpy(), weight.grad.numpy(), bias.grad.numpy()]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
