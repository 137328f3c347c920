"""The kge task: deterministic batches (exact resume), rank split, loss step, evaluation, end-to-end run."""
import argparse
from pathlib import Path

import numpy as np
import pytest
import yaml

import paddle_suite  # noqa: F401
import paddle

from paddle_suite.config import load_config
from paddle_suite.kge import evaluation
from paddle_suite.kge.task import KGETask

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def make_graph(folder, seed=0, entities=30, relations=3, count=300):
    """A random graph whose relations are functions (tail = (a_r * head + b_r) mod n): learnable."""
    rng = np.random.default_rng(seed)
    heads = rng.integers(0, entities, count)
    rels = rng.integers(0, relations, count)
    tails = (heads * (rels + 2) + 7 * rels + 1) % entities
    lines = [f"e{h}\tr{r}\te{t}\n" for h, r, t in zip(heads, rels, tails)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("".join(lines[:240]))
    (folder / "valid.txt").write_text("".join(lines[240:270]))
    (folder / "test.txt").write_text("".join(lines[270:]))
    return folder


def config(tmp_path, **sections):
    data = make_graph(tmp_path / "graph")
    values = {
        "_BASE_": str(CONFIGS / "kge_base.yaml"),
        "Global": {"output_dir": str(tmp_path / "out"), "epochs": 2, "progress": False, "log_every": 1000},
        "Arch": {"name": "SpaceE", "k": 4, "m": 4, "gamma": 4.0},
        "DataLoader": {"dataset": "toy", "data_path": str(data), "batch_size": 32, "num_negatives": 8, "neg_chunk_size": 4},
        "Optimizer": {"lr": 0.02},
    }
    for section, keys in sections.items():
        values.setdefault(section, {}).update(keys)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(values))
    return load_config(path)


def same_batch(a, b):
    for key in a:
        if a[key] is None or isinstance(a[key], int):
            assert a[key] == b[key]
        else:
            np.testing.assert_array_equal(a[key], b[key])


def test_batches_are_a_pure_function_of_seed_epoch_and_position(tmp_path):
    task = KGETask(config(tmp_path))
    epoch = list(task.train_batches(1))
    assert len(epoch) == task.steps_per_epoch() == 8  # 240 triples / 32
    for a, b in zip(epoch[3:], task.train_batches(1, start=3)):  # resume mid-epoch
        same_batch(a, b)
    seen = np.concatenate([b["triples"] for b in epoch])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, task.dataset.train.tolist()))
    other = list(task.train_batches(2))
    assert not np.array_equal(epoch[0]["triples"], other[0]["triples"])
    batch = epoch[0]
    k = task.config["DataLoader"]["num_negatives"]
    assert batch["valid"].shape == (32, k) and batch["weights"].shape == (32,)
    n_head = batch["num_head_rows"]
    assert batch["head_negatives"].shape == (-(-n_head // 4), k)
    assert batch["tail_negatives"].shape == (-(-(32 - n_head) // 4), k)


def test_ranks_take_every_world_size_th_batch(tmp_path):
    task = KGETask(config(tmp_path, DataLoader={"batch_size": 80}))  # 3 batches over 2 ranks
    full = list(task.train_batches(0))
    rank0, rank1 = list(task.train_batches(0, 0, 0, 2)), list(task.train_batches(0, 0, 1, 2))
    assert task.steps_per_epoch(2) == len(rank0) == len(rank1) == 2
    same_batch(rank0[0], full[0]), same_batch(rank1[0], full[1]), same_batch(rank0[1], full[2])
    same_batch(rank1[1], full[0])  # the shorter rank wraps around to keep step counts equal


def test_train_step_and_evaluation(tmp_path):
    task = KGETask(config(tmp_path, Loss={"regularization": 0.001}))
    paddle.seed(0)
    model = task.build_model()
    loss, count = task.train_step(model, next(task.train_batches(0)))
    assert count == 32 and np.isfinite(float(loss))
    loss.backward()
    assert model.entity_embedding.weight.grad is not None
    result = task.evaluate_model(model, "valid")
    for key in ("mrr", "mr", "hits@1", "hits@10", "head/mrr", "tail/mrr"):
        assert key in result.metrics and isinstance(result.metrics[key], float)
    assert result.split == "valid" and "by_side" in result.extras["report"]
    ranks, triples = result.extras["ranks"], result.extras["triples"]
    assert len(ranks["head"]) == len(ranks["tail"]) == len(triples) == len(task.dataset.valid)
    # the ranks are the metrics' source: their mean reciprocal is the reported MRR
    mrr = np.mean(1.0 / np.concatenate([ranks["head"], ranks["tail"]]))
    assert result.metrics["mrr"] == pytest.approx(mrr)
    names = task.artifacts()["entities.txt"].splitlines()
    assert names == task.dataset.entities and len(task.artifacts()["relations.txt"].splitlines()) == 3


def test_spacee_gets_the_training_triples_sides_from_the_task(tmp_path):
    task = KGETask(config(tmp_path, Arch={"orthogonal_weight": 1.0, "many_side_orthogonal_weight": 0.25}))
    many_heads, many_tails, _ = evaluation.relation_sides(task.dataset.train, task.dataset.num_relations)
    assert many_heads.any() or many_tails.any()  # the toy graph has "many" sides to weigh
    weights = task.build_model().map_weights.numpy()
    np.testing.assert_array_equal(weights, np.where(np.stack([many_heads, many_tails], 1), 0.25, 1.0))


def test_self_negatives_add_the_anchor_as_a_negative(tmp_path):
    cfg = config(tmp_path, DataLoader={"self_negatives": True})
    first = (tmp_path / "graph" / "train.txt").read_text().splitlines()[0].split("\t")
    with open(tmp_path / "graph" / "train.txt", "a") as handle:  # (x, r, x) in train: never a self-negative
        handle.write(f"{first[0]}\t{first[1]}\t{first[0]}\n")
    task = KGETask(cfg)
    loop = task.dataset.train[-1]
    assert loop[0] == loop[2]
    loops = {(h, r) for h, r, t in task.dataset.train.tolist() if h == t}
    k = task.config["DataLoader"]["num_negatives"]
    excluded = 0
    for batch in task.train_batches(0):
        assert batch["valid"].shape == (len(batch["triples"]), k + 1)
        n_head, triples = batch["num_head_rows"], batch["triples"]
        anchor = np.where(np.arange(len(triples)) < n_head, triples[:, 2], triples[:, 0])
        is_loop = np.array([(a, r) in loops for a, r in zip(anchor.tolist(), triples[:, 1].tolist())])
        np.testing.assert_array_equal(batch["valid"][:, k], ~is_loop)
        excluded += int(((anchor == loop[0]) & (triples[:, 1] == loop[1])).sum())
    assert excluded >= 1  # the loop triple itself, whichever side it corrupts
    batch = next(task.train_batches(0))
    n_head, triples = batch["num_head_rows"], batch["triples"]
    anchor = np.where(np.arange(32) < n_head, triples[:, 2], triples[:, 0])
    paddle.seed(0)
    model = task.build_model()
    ids = [paddle.to_tensor(triples[:, i]) for i in range(3)]
    negs = [paddle.to_tensor(batch[n]) for n in ("head_negatives", "tail_negatives")]
    _, negative, _ = model(*ids, *negs, n_head, True)
    assert negative.shape == [32, k + 1]
    expected = model.score(paddle.to_tensor(anchor), ids[1], paddle.to_tensor(anchor)).numpy()
    np.testing.assert_allclose(negative.numpy()[:, k], expected, rtol=1e-5)
    loss, _ = task.train_step(model, batch)
    assert np.isfinite(float(loss))


@pytest.mark.slow
def test_end_to_end_training_learns(tmp_path):
    cfg = config(tmp_path, Global={"epochs": 40})
    task = KGETask(cfg)
    result = task.train(argparse.Namespace(no_progress=True, config=None, overrides=[]))
    # 30 entities: a random ranking has MRR about 0.13
    assert result["best"] > 0.5, result["best_metrics"]
    assert (Path(result["run_dir"]) / "best").is_dir()


def test_missing_dataset_fails_at_task_creation(tmp_path):
    cfg = config(tmp_path)
    cfg["DataLoader"]["data_path"] = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="absent"):
        KGETask(cfg)


def test_every_regulariser_is_in_the_models_penalty(tmp_path):
    """Loss.regularization joins SpaceE's own penalties in the model's forward (one place), in that order."""
    from paddle_suite.kge.losses import embedding_regularization

    task = KGETask(config(tmp_path, Loss={"regularization": 0.01, "regularization_p": 3},
                          Arch={"orthogonal_weight": 0.5}))
    paddle.seed(0)
    model = task.build_model()
    h, r, t = (paddle.to_tensor(task.dataset.train[:16, i]) for i in range(3))
    embedding = embedding_regularization(
        [model.entity_embedding(h), model.relation_embedding(r), model.entity_embedding(t)], 0.01, 3)
    model.set_embedding_regularization(0.0)
    maps_only = float(model.regularization(h, r, t))
    model.set_embedding_regularization(0.01, 3)
    assert float(model.regularization(h, r, t)) == pytest.approx(maps_only + float(embedding), rel=1e-6)
    assert maps_only > 0 and float(embedding) > 0


def test_eval_threads_knob_gives_the_same_metrics_and_rejects_zero(tmp_path):
    """``Metric.num_threads`` reaches the evaluation kernels without changing any rank; 0 is refused by name."""
    results = []
    for threads in (1, 2):
        cfg = config(tmp_path, Metric={"num_threads": threads})
        cfg["Arch"] = {"name": "RotatE", "dim": 8, "gamma": 4.0}  # a model with the kernel scorer
        task = KGETask(cfg)
        paddle.seed(0)
        model = task.build_model()
        results.append(task.evaluate_model(model, "test"))
    assert results[0].metrics == results[1].metrics
    for side in ("head", "tail"):
        np.testing.assert_array_equal(results[0].extras["ranks"][side], results[1].extras["ranks"][side])
    with pytest.raises(ValueError, match="Metric.num_threads must be >= 1"):
        KGETask(config(tmp_path, Metric={"num_threads": 0}))
