"""CTR network bodies (dygraph and static) and the local single-process static training."""
import json
import os

import numpy as np
import pytest

import paddle_suite  # noqa: F401
import paddle

from paddle_suite.ads import models
from paddle_suite.registry import ARCHS

from .planted import planted_split


def _planted(tmp_path, rows=61440, test_rows=8000, vocab=3000):
    return planted_split(tmp_path, rows, test_rows, vocab, seed=3)


def test_archs_registered_with_config_keys():
    from paddle_suite.config import arch_schema

    for name in ("CtrDNN", "DeepFM", "WideDeep"):
        assert set(arch_schema(name)) == {"name", "emb_dim", "hidden_sizes"}
        body = ARCHS.get(name)(num_slots=26, num_dense=13, emb_dim=4, hidden_sizes=[8])
        assert body.sparse_dim == (4 if name == "CtrDNN" else 5)


def test_deepfm_pairwise_term_matches_explicit_sum():
    paddle.disable_static()
    paddle.seed(0)
    body = models.deepfm(num_slots=5, num_dense=3, emb_dim=4, hidden_sizes=[6])
    emb = np.random.default_rng(0).normal(size=(7, 5, 5)).astype(np.float32)
    dense = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float32)
    out = body(paddle.to_tensor(emb), paddle.to_tensor(dense)).numpy()
    vec = emb[:, :, :4]
    pairwise = sum((vec[:, i] * vec[:, j]).sum(1) for i in range(5) for j in range(i + 1, 5))
    first = emb[:, :, 4].sum(1) + body.dense_linear(paddle.to_tensor(dense)).numpy()[:, 0]
    flat = np.concatenate([vec.reshape(7, -1), dense], axis=1)
    deep = body.mlp(paddle.to_tensor(flat)).numpy()[:, 0]
    np.testing.assert_allclose(out[:, 0], first + pairwise + deep, rtol=1e-5, atol=1e-5)


def test_wide_deep_is_a_linear_model_plus_the_dnn_tower():
    paddle.disable_static()
    paddle.seed(0)
    body = models.wide_deep(num_slots=5, num_dense=3, emb_dim=4, hidden_sizes=[6])
    emb = np.random.default_rng(0).normal(size=(7, 5, 5)).astype(np.float32)
    dense = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float32)
    out = body(paddle.to_tensor(emb), paddle.to_tensor(dense)).numpy()[:, 0]
    w = body.dense_linear.weight.numpy()[:, 0]
    wide = emb[:, :, 4].sum(1) + dense @ w + body.dense_linear.bias.numpy()[0]
    deep = body.mlp(paddle.to_tensor(np.concatenate([emb[:, :, :4].reshape(7, -1), dense], axis=1))).numpy()[:, 0]
    np.testing.assert_allclose(out, wide + deep, rtol=1e-5, atol=1e-5)
    # the wide weight of a key moves the logit by exactly that weight (no interaction)
    bumped = emb.copy()
    bumped[:, 2, 4] += 1.5
    np.testing.assert_allclose(body(paddle.to_tensor(bumped), paddle.to_tensor(dense)).numpy()[:, 0], out + 1.5,
                               rtol=1e-5, atol=1e-5)
    # and the deep part sees only the first emb_dim columns
    assert body.mlp[0].weight.shape == [5 * 4 + 3, 6]


def test_wide_deep_config():
    from paddle_suite.config import load_config

    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "wide_deep_ps.yaml")
    config = load_config(root, [])
    assert config["Arch"]["name"] == "WideDeep" and config["Global"]["task"] == "ctr"
    assert config["PS"]["mode"] == "async" and config["DataLoader"]["batch_size"] == 512


def test_dnn_body_same_in_static_and_dygraph():
    """The body is reused by the hierarchical (dygraph) and PS (static) modes: same math."""
    emb = np.random.default_rng(0).normal(size=(4, 26, 3)).astype(np.float32)
    dense = np.random.default_rng(1).normal(size=(4, 13)).astype(np.float32)
    paddle.disable_static()
    with paddle.utils.unique_name.guard():
        body = models.ctr_dnn(num_slots=26, num_dense=13, emb_dim=3, hidden_sizes=[5])
    dynamic = body(paddle.to_tensor(emb), paddle.to_tensor(dense)).numpy()
    weights = {p.name: p.numpy() for p in body.parameters()}
    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
            static_body = models.ctr_dnn(num_slots=26, num_dense=13, emb_dim=3, hidden_sizes=[5])
            e = paddle.static.data("emb", [-1, 26, 3], "float32")
            d = paddle.static.data("dense", [-1, 13], "float32")
            logit = static_body(e, d)
        scope = paddle.static.Scope()
        exe = paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            assert sorted(p.name for p in main.all_parameters()) == sorted(weights)
            for name, value in weights.items():
                scope.find_var(name).get_tensor().set(value, paddle.CPUPlace())
            (static,) = exe.run(main, feed={"emb": emb, "dense": dense}, fetch_list=[logit])
    finally:
        paddle.disable_static()
    np.testing.assert_allclose(static, dynamic, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["CtrDNN", "DeepFM", "WideDeep"])
def test_local_static_training_learns_planted_model(tmp_path, arch):
    from paddle_suite.ads.fleet_ps import PSTrainer
    from paddle_suite.ads.task import evaluate_run
    from paddle_suite.config import load_config

    train, test, meta = _planted(tmp_path)
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "ctr_dnn_ps.yaml")
    config = load_config(root, [
        f"DataLoader.train_files=[{train}]", f"DataLoader.test_files=[{test}]",
        f"Global.output_dir={tmp_path / 'out'}", "DataLoader.pass_size=20480", "PS.local_vocab=200003",
        f"Arch.name={arch}", "Arch.emb_dim=8", "Arch.hidden_sizes=[64,32]", "PS.mode=local",
    ])
    last = PSTrainer(config).run()
    assert last["pass"] == 2 and last["examples"] == 20480
    result = evaluate_run(config)
    assert result["examples"] == 8000
    # learned, and not better than the generator's Bayes-optimal AUC of these rows
    assert 0.75 < result["auc"] < meta["bayes_auc"] + 0.02, result
    lines = [json.loads(x) for x in open(tmp_path / "out" / "ctr_dnn_ps" / "metrics.jsonl")]
    assert [x["pass"] for x in lines] == [0, 1, 2]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert any(f.startswith("vdlrecords") for f in os.listdir(tmp_path / "out" / "ctr_dnn_ps" / "vdl"))


def test_local_program_reads_distinct_keys_like_a_per_key_lookup(tmp_path):
    """The local program feeds each batch's distinct keys once (``keys_unique`` + ``key_index``):
    its predictions must equal the exported body run on the table row of every (example, slot)
    key, and the step must change exactly the rows of the batch's keys."""
    from paddle_suite.ads.data import CtrBatch
    from paddle_suite.ads.common import ExportedBody, export_body
    from paddle_suite.ads.fleet_ps import local_session
    from paddle_suite.config import load_config

    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "ctr_dnn_ps.yaml")
    config = load_config(root, ["PS.mode=local", "PS.local_vocab=50", "Arch.emb_dim=3", "Arch.hidden_sizes=[4]",
                                "Optimizer.name=SGD", "Optimizer.lr=1.0"])
    rng = np.random.default_rng(0)
    batch = CtrBatch(rng.integers(0, 2, 6), rng.normal(size=(6, 13)).astype(np.float32),
                     rng.integers(0, 30, (6, 26)).astype(np.uint64))  # 156 keys, many repeated
    keys = batch.sparse.astype(np.int64)
    program, exe, scope = local_session(config)
    try:
        with paddle.static.scope_guard(scope):
            exe.run(program.startup)
            export_body(config, exe, scope, str(tmp_path / "body"))  # the parameters before the step
            feed = program.feed(batch)
            assert feed["keys_unique"].shape[0] == np.unique(keys).size < keys.size
            table = np.array(scope.find_var(models.SPARSE_TABLE).get_tensor())
            (prob,) = exe.run(program.main, feed=feed, fetch_list=[program.vars["prob"]])
            after = np.array(scope.find_var(models.SPARSE_TABLE).get_tensor())
    finally:
        paddle.disable_static()
    np.testing.assert_allclose(prob.reshape(-1), ExportedBody(str(tmp_path / "body"))(table[keys], batch.dense),
                               rtol=1e-5, atol=1e-6)
    changed = np.flatnonzero((after != table).any(axis=1))
    assert changed.tolist() == np.unique(keys).tolist()


def _adam_losses(program, exe, scope, batches):
    with paddle.static.scope_guard(scope):
        exe.run(program.startup)
        losses = [float(exe.run(program.main, feed=program.feed(b), fetch_list=[program.vars["loss"]])[0])
                  for b in batches]
        table = np.array(scope.find_var(models.SPARSE_TABLE).get_tensor())
    return np.array(losses), table


def test_local_program_fast_paths_keep_the_math():
    """The local program's speed-ups (``PS.cpu_onednn``: matmul/relu on oneDNN kernels; one
    ``merged_adam`` for the dense parameters next to the table's lazy Adam) must train exactly as
    the plain program does: one Adam op per parameter, default kernels."""
    from paddle_suite.ads.data import CtrBatch
    from paddle_suite.ads.common import build_body
    from paddle_suite.ads.fleet_ps import CtrStaticProgram, local_session
    from paddle_suite.config import load_config

    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "ctr_dnn_ps.yaml")
    overrides = ["PS.mode=local", "PS.local_vocab=500", "Arch.emb_dim=4", "Arch.hidden_sizes=[32,16]",
                 "Optimizer.lr=0.01"]
    rng = np.random.default_rng(1)
    batches = [CtrBatch(rng.integers(0, 2, 64), rng.normal(size=(64, 13)).astype(np.float32),
                        rng.integers(0, 2000, (64, 26)).astype(np.uint64)) for _ in range(2)] * 4
    try:
        fast = local_session(load_config(root, overrides))
        ops = [op for op in fast[0].main.global_block().ops]
        assert [op.input("Param") for op in ops if op.type == "adam"] == [[models.SPARSE_TABLE]]
        assert len([op for op in ops if op.type == "merged_adam"]) == 1
        assert all(op.attr("use_mkldnn") for op in ops if op.type in ("matmul_v2", "matmul_v2_grad", "relu"))
        fast_losses, fast_table = _adam_losses(*fast, batches)

        config = load_config(root, overrides + ["PS.cpu_onednn=false"])
        plain = CtrStaticProgram.__new__(CtrStaticProgram)  # the same network, minimized the plain way
        plain.mode, plain.local_vocab = "local", 500
        plain.main, plain.startup = paddle.static.Program(), paddle.static.Program()
        plain.main.random_seed = plain.startup.random_seed = int(config["Global"]["seed"])
        with paddle.static.program_guard(plain.main, plain.startup), paddle.utils.unique_name.guard():
            plain.vars = models.build_static_program(build_body(config), "local", vocab_size=500,
                                                     init_std=float(config["PS"]["init_std"]))
            paddle.optimizer.Adam(0.01, lazy_mode=True).minimize(plain.vars["loss"])
        assert len([op for op in plain.main.global_block().ops if op.type == "adam"]) == 7
        plain_losses, plain_table = _adam_losses(plain, paddle.static.Executor(paddle.CPUPlace()),
                                                 paddle.static.Scope(), batches)
    finally:
        paddle.disable_static()
    assert fast_losses[-1] < fast_losses[0]
    np.testing.assert_allclose(fast_losses, plain_losses, rtol=1e-4)
    np.testing.assert_allclose(fast_table, plain_table, rtol=1e-4, atol=1e-6)


def test_wide_deep_trains_in_the_hierarchical_pass_mode(tmp_path):
    """The same body in the HBM / MEM / SSD pass step (rows of emb_dim + 1 columns through the store)."""
    from paddle_suite.ads.task import evaluate_run
    from paddle_suite.ads.hierarchical_train import HierarchicalTrainer
    from paddle_suite.config import load_config

    train, test, meta = _planted(tmp_path, rows=4 * 8192)
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "wide_deep_ps.yaml")
    config = load_config(root, [
        f"DataLoader.train_files=[{train}]", f"DataLoader.test_files=[{test}]", f"Global.output_dir={tmp_path / 'out'}",
        "DataLoader.pass_size=8192", "Arch.emb_dim=8", "Arch.hidden_sizes=[64,32]", "PS.mode=hierarchical",
        "PS.sparse_lr=0.05", "Store.mem_cap_mb=2",
    ])
    last = HierarchicalTrainer(config).train()
    assert last["pass"] == 3
    result = evaluate_run(config)
    assert 0.75 < result["auc"] < meta["bayes_auc"] + 0.02, (result, meta["bayes_auc"])
