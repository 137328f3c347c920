"""The ``kge`` task: link-prediction training of KGE models on the shared dense engine.

Batches (deterministic, so resume is exact): epoch ``e`` visits the training triples in the order
``np.random.default_rng([seed, e]).permutation``; batch ``b`` is the ``b``-th slice of
``DataLoader.batch_size`` triples and its negatives are drawn with
``np.random.default_rng([seed, e, b])``. With ``world_size`` ranks, rank ``r`` takes batches
``r, r + world_size, ...``; every rank runs ``ceil(num_batches / world_size)`` steps (collectives
need equal counts), a rank that runs out wrapping around to the epoch's first batches.

Each batch is reordered so the triples corrupting their head come first (``num_head_rows``), and
the model's ``forward`` scores positives and both groups' shared negatives in one call.

``DataLoader.self_negatives`` adds one negative per triple: its anchor entity (the one kept) in the
corrupted position, ``(x, r, x)``, unless that is a training triple. Uniform negatives almost
never draw it, and nothing else stops a model whose relation map is near the identity, or collapses
entities together (a singular SpaceE map), from scoring ``x`` itself as the best answer to
``(x, r, ?)`` (measured in ``bench/kge_config_notes.md``).

The loss is ``LOSSES[Loss.name]`` (``kge/losses.py``) plus the model's penalty: every regulariser,
``Loss.regularization`` included, is the model's ``regularization`` (``kge/models.py``).

Evaluation is the filtered ranking protocol of ``paddle_suite.kge.evaluation`` (both sides,
realistic ties, by relation category); ``Metric.valid_subset`` limits evaluations *during
training* to a fixed random subset of valid for speed (``tools/eval.py`` on ``test`` always uses
the whole split). ``evaluate_model`` returns an ``EvalResult`` whose extras hold the nested
``report`` (by side / category / relation), each triple's ``ranks`` (head and tail) and the
evaluated ``triples``, for paired comparisons (``bench/kge_quality.py``).
"""
import logging

import numpy as np

import paddle_suite  # noqa: F401
import paddle

from paddle_suite.config import Field, build_arch
from paddle_suite.kge import evaluation, losses
from paddle_suite.kge.data import load_dataset
from paddle_suite.kge.sampling import NegativeSampler
from paddle_suite.registry import LOSSES, TASKS
from paddle_suite.task import DenseTask, EvalResult

log = logging.getLogger("paddle_suite")


@TASKS.register("kge")
class KGETask(DenseTask):
    best_metric = "mrr"
    best_mode = "max"

    schema = {
        "DataLoader": {
            "dataset": Field(help="dataset folder name under kg/, e.g. FB15k-237, WN18RR, umls"),
            "data_path": Field(None, str, help="folder with train.txt/valid.txt/test.txt (overrides the search)"),
            "batch_size": 1024,
            "num_negatives": 256,
            "neg_chunk_size": Field(1, int, help="triples sharing one set of negatives; 1 = per-triple negatives"),
            "sampler": Field("uniform", str, choices=("uniform", "bernoulli")),
            "filter_negatives": Field(False, bool, help="exclude negatives that are training triples from the loss"),
            "self_negatives": Field(False, bool, help="also corrupt each triple into (x, r, x), x its anchor entity "
                                    "(see kge/task.py); skipped where that is a training triple"),
            "unseen_eval_triples": Field("keep", str, choices=("keep", "drop")),
            "eval_batch_size": 256,
        },
        "Loss": {
            "name": Field("self_adversarial", str, choices=("self_adversarial", "margin")),
            "adversarial_temperature": Field(1.0, float, help="alpha of RotatE's self-adversarial weights; 0 = uniform"),
            "margin": Field(1.0, float, help="margin of the margin ranking loss"),
            "subsampling": Field(True, bool, help="RotatE's frequency-based subsampling weights"),
            "regularization": Field(0.0, float, help="weight of the |x|^p penalty on the batch's embeddings"),
            "regularization_p": Field(3, int),
        },
        "Metric": {
            "by_category": Field(True, bool, help="also report 1-1 / 1-N / N-1 / N-N metrics"),
            "by_relation": Field(False, bool, help="also report metrics per relation (relation:<name>/mrr ...)"),
            "valid_subset": Field(0, int, help="evaluate on this many random valid triples during training; 0 = all"),
            "show_progress": Field(False, bool, help="tqdm bar over evaluation batches"),
            "num_threads": Field(1, int, help="threads of the evaluation's scoring/ranking kernels (numba); "
                                 "1 = one core, as paddle's CPU ops"),
        },
    }

    def __init__(self, config):
        super().__init__(config)
        data_cfg = config["DataLoader"]
        if data_cfg["batch_size"] < 1 or data_cfg["eval_batch_size"] < 1:
            raise ValueError("DataLoader.batch_size and DataLoader.eval_batch_size must be >= 1")
        if config["Metric"]["num_threads"] < 1:
            raise ValueError(f"Metric.num_threads must be >= 1 (threads of the evaluation kernels), "
                             f"got {config['Metric']['num_threads']}")
        self.dataset = load_dataset(
            data_cfg["dataset"], data_cfg["data_path"], config["Global"].get("data_root"), data_cfg["unseen_eval_triples"]
        )
        log.info("%s", self.dataset.summary())
        for line in self.dataset.unseen_report():
            log.warning("%s", line)
        self.seed = int(config["Global"]["seed"])
        self.sampler = NegativeSampler(
            self.dataset.train,
            self.dataset.num_entities,
            self.dataset.num_relations,
            data_cfg["num_negatives"],
            data_cfg["neg_chunk_size"],
            data_cfg["sampler"],
            data_cfg["filter_negatives"],
        )
        self.subsampling = losses.subsampling_weights(self.dataset.train) if config["Loss"]["subsampling"] else None
        # (many_heads, many_tails, seen) per relation: SpaceE's side-aware pull and the categories
        self.relation_sides = evaluation.relation_sides(self.dataset.train, self.dataset.num_relations)
        self.categories = (
            evaluation.categories_of_sides(*self.relation_sides) if config["Metric"]["by_category"] else None
        )
        self._filter_index = None
        self._self_loops = None  # entity * num_relations + relation of training triples (x, r, x)
        self.loss = LOSSES.get(config["Loss"]["name"])(config["Loss"])

    # ------------------------------------------------------------------ model
    def build_model(self):
        model = build_arch(
            self.config,
            num_entities=self.dataset.num_entities,
            num_relations=self.dataset.num_relations,
            relation_sides=self.relation_sides[:2],
        )
        model.set_embedding_regularization(self.config["Loss"]["regularization"], self.config["Loss"]["regularization_p"])
        return model

    # ------------------------------------------------------------------ batches
    def _num_batches(self):
        return -(-len(self.dataset.train) // self.config["DataLoader"]["batch_size"])

    def steps_per_epoch(self, world_size=1):
        return -(-self._num_batches() // world_size)

    def make_batch(self, epoch, batch_index):
        """Batch ``batch_index`` of ``epoch``: a pure function of (seed, epoch, batch_index)."""
        size = self.config["DataLoader"]["batch_size"]
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset.train))
        rows = order[batch_index * size : (batch_index + 1) * size]
        groups = self.sampler.sample(self.dataset.train[rows], np.random.default_rng([self.seed, epoch, batch_index]))
        by_side = {g.side: g for g in groups}
        ordered = [by_side[s] for s in ("head", "tail") if s in by_side]
        triples = np.concatenate([g.triples for g in ordered])
        num_head_rows = len(by_side["head"].triples) if "head" in by_side else 0
        valid = np.concatenate([g.valid for g in ordered])
        if self.config["DataLoader"]["self_negatives"]:
            valid = np.concatenate([valid, self._self_negative_valid(triples, num_head_rows)[:, None]], axis=1)
        batch = {
            "triples": triples,
            "num_head_rows": num_head_rows,
            "head_negatives": by_side["head"].negatives if "head" in by_side else None,
            "tail_negatives": by_side["tail"].negatives if "tail" in by_side else None,
            "valid": valid,
            "weights": None,
        }
        if self.subsampling is not None:
            batch["weights"] = np.concatenate([self.subsampling[rows[g.rows]] for g in ordered])
        return batch

    def _self_negative_valid(self, triples, num_head_rows):
        """Rows whose self-corruption ``(x, r, x)`` (``x`` = the kept entity) is not a training triple."""
        anchor = np.where(np.arange(len(triples)) < num_head_rows, triples[:, 2], triples[:, 0]).astype(np.int64)
        rels = self.dataset.num_relations
        if self._self_loops is None:
            train = self.dataset.train
            loops = train[train[:, 0] == train[:, 2]].astype(np.int64)
            self._self_loops = np.unique(loops[:, 0] * rels + loops[:, 1])
        return ~np.isin(anchor * rels + triples[:, 1], self._self_loops)

    def train_batches(self, epoch, start=0, rank=0, world_size=1):
        num_batches = self._num_batches()
        for position in range(start, self.steps_per_epoch(world_size)):
            yield self.make_batch(epoch, (rank + position * world_size) % num_batches)

    def train_step(self, model, batch):
        triples = paddle.to_tensor(batch["triples"])
        h, r, t = triples[:, 0], triples[:, 1], triples[:, 2]
        negatives = [None if batch[k] is None else paddle.to_tensor(batch[k]) for k in ("head_negatives", "tail_negatives")]
        positive, negative, penalty = model(h, r, t, *negatives, batch["num_head_rows"],
                                            self.config["DataLoader"]["self_negatives"])
        weights = None if batch["weights"] is None else paddle.to_tensor(batch["weights"])
        valid = None if batch["valid"].all() else batch["valid"]
        loss = self.loss(positive, negative, weights, valid)
        if penalty is not None:
            loss = loss + penalty
        return loss, len(batch["triples"])

    # ------------------------------------------------------------------ evaluation
    def eval_triples(self, split):
        if split not in ("valid", "test", "train"):
            raise ValueError(f"unknown split {split!r}: use valid, test or train")
        triples = getattr(self.dataset, split)
        subset = self.config["Metric"]["valid_subset"]
        if split == "valid" and 0 < subset < len(triples):
            keep = np.sort(np.random.default_rng([self.seed, 7]).choice(len(triples), subset, replace=False))
            triples = triples[keep]
        return triples

    def evaluate_model(self, model, split="valid"):
        if self._filter_index is None:
            self._filter_index = evaluation.FilterIndex(self.dataset.all_triples(), self.dataset.num_entities)
        core = getattr(model, "_layers", model)
        triples = self.eval_triples(split)
        with paddle.no_grad():
            report = evaluation.evaluate(
                core,
                triples,
                self._filter_index,
                self.dataset.num_entities,
                categories=self.categories,
                batch_size=self.config["DataLoader"]["eval_batch_size"],
                progress=self.config["Metric"]["show_progress"],
                relation_names=self.dataset.relations if self.config["Metric"]["by_relation"] else None,
                return_ranks=True,
                num_threads=self.config["Metric"]["num_threads"],
            )
        ranks = report.pop("ranks")
        metrics = {k: float(v) for k, v in evaluation.flatten_metrics(report).items()}
        return EvalResult(metrics, {"report": report, "ranks": ranks, "triples": triples}, split)

    # ------------------------------------------------------------------ export
    def artifacts(self):
        return {
            "entities.txt": "".join(f"{name}\n" for name in self.dataset.entities),
            "relations.txt": "".join(f"{name}\n" for name in self.dataset.relations),
        }

    def input_spec(self):
        return [paddle.static.InputSpec([None], "int64", name=n) for n in ("head", "relation", "tail")]
