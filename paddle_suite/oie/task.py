"""The ``oie`` task: Logician (sentence -> SAOKE facts) trained by the shared dense engine.

Data (``DataLoader``): ``dataset`` picks the reader and the default folder and files:

- ``spansaoke`` (``oie/spansaoke``, Chinese): the released span data has no training split, so
  we train on ``dev_4373.txt`` minus a held-out validation part and test on ``test_4440.txt``;
- ``saoke_json`` (``oie/saoke``, Chinese): SAOKE JSON lines, e.g. one ``SAOKE_DATA.json`` with
  ``valid_holdout`` and ``test_holdout`` set;
- ``oie2016`` (``oie/oie2016/oie_corpus``, English): ``train.oie`` / ``dev.oie`` / ``test.oie``;
- ``oie_tsv``: any tab-separated tuple files under ``data_path``, in the OIE2016 layout or, with
  ``tsv_layout: carb``, without the predicate-head column (CaRB and similar benchmarks).

A split without its own file (``valid_file`` / ``test_file`` null) is held out of the training
file: a permutation seeded by ``split_seed`` (not ``Global.seed``, so runs with other training
seeds see the same split) gives the first ``test_holdout`` examples to test, the next
``valid_holdout`` to valid and the rest to training.

Training examples whose sentence is longer than ``max_source_len`` tokens or whose target is
longer than ``max_target_len`` actions are left out of training (their count is logged);
evaluation always decodes every sentence of its split whole. A target spells a sentence's facts
in the order the sentence says them (``fact_order: sentence``, :func:`paddle_suite.oie.tokens.sentence_order`):
the released files list them in no particular order, and trained on that order Logician could
not tell whether a fact was the last one and decoded about one fact a sentence (``as_read`` keeps
the files' order, to reproduce runs made before 2026-12-05).
The source vocabulary is built from
the training sentences and stored as the artifact ``vocab.json`` in every checkpoint and in
``best/``; evaluation, prediction and a resumed run read it from there.

Batches (deterministic, so resume is exact): epoch ``e`` permutes the training examples with
``default_rng([seed, e])``, sorts each window of 20 batches by target length (the decoder runs as
many steps as a batch's longest target, so this saves padded steps) and shuffles the order of the
batches with ``default_rng([seed, e, 1])``. Rank ``r`` of ``W`` takes batches ``r, r + W, ...``
(wrapping around, as the kge task does).

Loss: ``LOSSES[Loss.name]``; ``logician`` = ``nll_weight * nll + coverage_weight * coverage`` of
the model's teacher-forced terms (the coverage term is zero for a model with ``coverage: false``).

Validation decodes ``DataLoader.valid_subset`` fixed, seeded valid sentences (0 = all) with the
grammar-constrained beam search and scores them by ``Metric.names`` (``METRICS``):
``saoke_facts`` (fact precision / recall / F1 at ``similarity_threshold``, exact F1, exact match;
``f1`` selects the best model) and ``oie2016_lexical`` (the OIE2016 lexical match,
``lexical/precision`` ...); ``loss`` is the teacher-forced NLL per target token on the same
sentences, and ``gate`` (models with the dependency gate) the gate's mean weight on content attention
there: near 1, the model has learnt to ignore the dependency path. ``tools/eval.py`` decodes the
whole split (``test_subset`` limits test for quick runs).
"""
import dataclasses
import functools
import json
import logging
import os

import numpy as np

import paddle_suite  # noqa: F401  (MKL_DEBUG_CPU_TYPE before paddle)
import paddle

from paddle_suite.config import ConfigError, Field, build_arch
from paddle_suite.data import find_dataset
from paddle_suite.engine.run import Run, RunError
from paddle_suite.oie.metrics import fact_scores, lexical_scores
from paddle_suite.oie.model import make_batch
from paddle_suite.oie.parsing import PARSERS, parse_heads
from paddle_suite.oie.readers import OIE_LAYOUTS, read_oie_benchmark, read_saoke_jsonl, read_spansaoke
from paddle_suite.oie.tokens import FACT_ORDERS, Vocab, encode_target, tokenize
from paddle_suite.registry import LOSSES, METRICS, TASKS
from paddle_suite.task import DenseTask, EvalResult

log = logging.getLogger("paddle_suite")

VOCAB_FILE = "vocab.json"
BUCKET_BATCHES = 20  # batches per window sorted by target length

# dataset -> (folder under the data root, reader, language, default train/valid/test files)
DATASETS = {
    "spansaoke": ("oie/spansaoke", read_spansaoke, "zh", ("dev_4373.txt", None, "test_4440.txt")),
    "saoke_json": ("oie/saoke", read_saoke_jsonl, "zh", ("SAOKE_DATA.json", None, None)),
    "oie2016": ("oie/oie2016/oie_corpus", read_oie_benchmark, "en", ("train.oie", "dev.oie", "test.oie")),
    "oie_tsv": (None, read_oie_benchmark, "en", (None, None, None)),
}
SPLITS = ("train", "valid", "test")


@LOSSES.register("logician")
class LogicianLoss:
    """``nll_weight * nll + coverage_weight * coverage`` from the model's named terms."""

    def __init__(self, loss_cfg):
        if loss_cfg["nll_weight"] <= 0 or loss_cfg["coverage_weight"] < 0:
            raise ConfigError(f"Loss.nll_weight must be > 0 and Loss.coverage_weight >= 0, got "
                              f"{loss_cfg['nll_weight']} and {loss_cfg['coverage_weight']}")
        self.weights = {"nll": loss_cfg["nll_weight"], "coverage": loss_cfg["coverage_weight"]}

    def __call__(self, terms):
        return sum(weight * terms[name] for name, weight in self.weights.items() if weight)


@METRICS.register("saoke_facts")
def saoke_fact_metrics(predictions, references, metric_cfg):
    return fact_scores(predictions, references, metric_cfg["similarity_threshold"])


@METRICS.register("oie2016_lexical")
def oie2016_lexical_metrics(predictions, references, metric_cfg):
    return {f"lexical/{k}": v for k, v in lexical_scores(predictions, references).items()}


def read_vocab(checkpoint):
    """The ``vocab.json`` stored beside a checkpoint's weights (a directory or a ``.pdparams`` file)."""
    folder = os.path.dirname(checkpoint) if str(checkpoint).endswith(".pdparams") else checkpoint
    path = os.path.join(folder, VOCAB_FILE)
    if not os.path.isfile(path):
        raise RunError(f"no {VOCAB_FILE} in {folder}: the vocabulary is stored with every checkpoint of an "
                       "oie run; give a checkpoint directory of one (…/best or …/checkpoints/step_N)")
    with open(path, encoding="utf-8") as handle:
        return Vocab.from_dict(json.load(handle))


@TASKS.register("oie")
class OIETask(DenseTask):
    best_metric = "f1"
    best_mode = "max"

    schema = {
        "DataLoader": {
            "dataset": Field(choices=tuple(DATASETS), help="reader and default files (see paddle_suite/oie/task.py)"),
            "data_path": Field(None, str, help="folder of the files (default: search oie/<dataset> in the data roots)"),
            "language": Field(None, str, choices=("zh", "en"), help="tokenisation; null = the dataset's own"),
            "tsv_layout": Field("oie2016", str, choices=tuple(OIE_LAYOUTS),
                                help="columns of oie2016 / oie_tsv files: oie2016 (sentence, predicate head, "
                                     "predicate, args) or carb (sentence, relation, args)"),
            "train_file": Field(None, str, help="file name in the folder (or a path); null = the dataset's default"),
            "valid_file": Field(None, str, help="null = hold out valid_holdout training examples"),
            "test_file": Field(None, str, help="null = hold out test_holdout training examples"),
            "valid_holdout": Field(400, int, help="examples held out of the training file for valid"),
            "test_holdout": Field(0, int, help="examples held out of the training file for test"),
            "split_seed": Field(2024, int, help="seed of the hold-out permutation (kept apart from Global.seed)"),
            "max_source_len": Field(120, int, help="longer training sentences (tokens) are left out; 0 = none"),
            "max_target_len": Field(0, int, help="training targets longer than this (actions) are left out; 0 = none"),
            "train_subset": Field(0, int, help="train on this many fixed random examples (within the length "
                                  "limits); 0 = all"),
            "valid_subset": Field(200, int, help="decode this many fixed random valid sentences in training; 0 = all"),
            "test_subset": Field(0, int, help="decode this many fixed random test sentences (quick runs); 0 = all"),
            "vocab_min_freq": Field(1, int, help="words seen fewer times in training become <unk>"),
            "parser": Field("none", str, choices=PARSERS,
                            help="dependency arcs for the gated attention: none (the data's own heads, if any) or "
                                 "link_grammar (English; paddle_suite/oie/parsing.py)"),
            "parse_seconds": Field(2, int, help="link grammar time limit a sentence; past it, the adjacency"),
            "parse_workers": Field(0, int, help="processes parsing sentences; 0 = one a core"),
            "fact_order": Field("sentence", str, choices=FACT_ORDERS,
                                help="order of a sentence's facts in the target: sentence (as said) or as_read "
                                     "(the file's order, which the released data does not keep)"),
            "batch_size": 32,
            "eval_batch_size": Field(64, int, help="sentences decoded together"),
        },
        "Loss": {
            "name": Field("logician", str, choices=("logician",)),
            "nll_weight": 1.0,
            "coverage_weight": Field(1.0, float, help="weight of the coverage loss (models with coverage: true)"),
        },
        "Metric": {
            "names": Field(["saoke_facts"], list, help="METRICS to report: saoke_facts, oie2016_lexical"),
            "similarity_threshold": Field(0.85, float, help="fact similarity for a match (paddle_suite/oie/metrics.py)"),
            "beam_size": 4,
            "max_decode_len": Field(80, int, help="decoder steps per sentence"),
            "length_penalty": 1.0,
        },
    }

    def __init__(self, config):
        super().__init__(config)
        data_cfg, metric_cfg = config["DataLoader"], config["Metric"]
        if data_cfg["batch_size"] < 1 or data_cfg["eval_batch_size"] < 1:
            raise ConfigError("DataLoader.batch_size and DataLoader.eval_batch_size must be >= 1")
        if "saoke_facts" not in metric_cfg["names"]:
            raise ConfigError(f"Metric.names={metric_cfg['names']} must include saoke_facts (its f1 selects the best "
                              "model)")
        try:
            self.metrics = [METRICS.get(name) for name in metric_cfg["names"]]
        except KeyError as err:
            raise ConfigError(f"Metric.names: {err.args[0]}") from None
        folder, self.reader, language, self.default_files = DATASETS[data_cfg["dataset"]]
        if self.reader is read_oie_benchmark:
            self.reader = functools.partial(read_oie_benchmark, layout=data_cfg["tsv_layout"])
        self.language = data_cfg["language"] or language
        self.folder = folder
        # .get: the saved config of a run from before the parser keys existed lacks them
        self.parser = data_cfg.get("parser", "none")
        if self.parser == "link_grammar" and self.language != "en":
            raise ConfigError(f"DataLoader.parser: link_grammar parses English; DataLoader.language is "
                              f"{self.language!r}: set DataLoader.parser: none")
        if data_cfg.get("parse_seconds", 2) < 1:
            raise ConfigError(f"DataLoader.parse_seconds must be >= 1, got {data_cfg['parse_seconds']}")
        self.seed = int(config["Global"]["seed"])
        self.loss = LOSSES.get(config["Loss"]["name"])(config["Loss"])
        self._splits = None
        self._train = None  # (examples, target lengths) after the length limits
        self._vocab = None

    # ------------------------------------------------------------------ data
    def _path(self, split):
        data_cfg = self.config["DataLoader"]
        name = data_cfg[f"{split}_file"] or self.default_files[SPLITS.index(split)]
        if name is None:
            return None
        if os.path.isabs(name):
            return name
        if self.folder is None and data_cfg["data_path"] is None:
            raise ConfigError("DataLoader.dataset=oie_tsv needs DataLoader.data_path (the folder of the files) "
                              "or absolute file paths")
        folder = find_dataset(self.folder or "oie", data_cfg["data_path"], required=(name,))
        return str(folder / name)

    def splits(self):
        """``{"train": [...], "valid": [...], "test": [...]}`` of ``Example``s (read once)."""
        if self._splits is not None:
            return self._splits
        data_cfg = self.config["DataLoader"]
        paths = {split: self._path(split) for split in SPLITS}
        if paths["train"] is None:
            raise ConfigError(f"DataLoader.train_file is required for dataset {data_cfg['dataset']}")
        train = self.reader(paths["train"])
        held = {split: data_cfg[f"{split}_holdout"] if paths[split] is None else 0 for split in ("valid", "test")}
        if held["valid"] + held["test"] >= len(train):
            raise ConfigError(f"{paths['train']}: {len(train)} examples cannot give valid_holdout={held['valid']} "
                             f"and test_holdout={held['test']} and still leave training examples")
        order = np.random.default_rng(data_cfg["split_seed"]).permutation(len(train))
        cut = {"test": order[:held["test"]], "valid": order[held["test"]:held["test"] + held["valid"]],
               "train": np.sort(order[held["test"] + held["valid"]:])}
        splits = {}
        for split in SPLITS:
            if paths[split] is not None and split != "train":
                splits[split] = self.reader(paths[split])
            else:
                splits[split] = [train[i] for i in np.sort(cut[split])]
            if not splits[split]:
                raise ConfigError(f"the {split} split is empty: give DataLoader.{split}_file or a "
                                 f"DataLoader.{split}_holdout > 0")
        if self.parses:
            splits = {split: self.with_parsed_heads(examples, split) for split, examples in splits.items()}
        source = {s: paths[s] or f"held out of {paths['train']} (split_seed {data_cfg['split_seed']})" for s in SPLITS}
        log.info("oie data: %s", "; ".join(f"{s} {len(splits[s])} sentences from {source[s]}" for s in SPLITS))
        self._splits = splits
        return splits

    @property
    def parses(self):
        """Whether ``DataLoader.parser`` runs: set, and the model's graph uses arcs (auto or dependency)."""
        return self.parser != "none" and self.graph_mode in ("auto", "dependency")

    def parse(self, sentences, description="link grammar"):
        """Heads of each sentence by ``DataLoader.parser`` (None where it found no linkage in time)."""
        data_cfg = self.config["DataLoader"]
        return parse_heads([tokenize(s, self.language) for s in sentences], data_cfg["parse_seconds"],
                           data_cfg["parse_workers"] or None, description=description)

    def with_parsed_heads(self, examples, split):
        heads = self.parse([e.sentence for e in examples], f"link grammar, {split}")
        unparsed = sum(h is None for h in heads)
        if unparsed:
            log.info("oie data: the parser found no linkage of %d of %d %s sentences in %ds; they use the "
                     "sentence adjacency", unparsed, len(heads), split, self.config["DataLoader"]["parse_seconds"])
        return [dataclasses.replace(e, heads=h) for e, h in zip(examples, heads)]

    def train_examples(self):
        """Training examples within the length limits, and their target lengths (actions)."""
        if self._train is not None:
            return self._train
        data_cfg = self.config["DataLoader"]
        examples = self.splits()["train"]
        tokens = [tokenize(e.sentence, self.language) for e in examples]
        lengths = np.asarray([len(encode_target(e.facts, t, self.language).actions) for e, t in zip(examples, tokens)])
        keep = np.asarray([len(t) > 0 for t in tokens])
        if data_cfg["max_source_len"] > 0:
            keep &= np.asarray([len(t) <= data_cfg["max_source_len"] for t in tokens])
        if data_cfg["max_target_len"] > 0:
            keep &= lengths <= data_cfg["max_target_len"]
        if not keep.all():
            log.info("oie data: %d of %d training examples left out (empty, or longer than max_source_len=%d "
                     "tokens / max_target_len=%d actions)", int((~keep).sum()), len(examples),
                     data_cfg["max_source_len"], data_cfg["max_target_len"])
        if not keep.any():
            raise ConfigError("no training example is within DataLoader.max_source_len / max_target_len")
        kept = np.flatnonzero(keep)
        if 0 < data_cfg["train_subset"] < len(kept):
            kept = np.sort(np.random.default_rng([self.seed, 11]).choice(kept, data_cfg["train_subset"], replace=False))
            log.info("oie data: training on a fixed random subset of %d examples", len(kept))
        self._train = ([examples[i] for i in kept], lengths[kept])
        return self._train

    @property
    def vocab(self):
        if self._vocab is None:
            examples = self.splits()["train"]
            self._vocab = Vocab.build([tokenize(e.sentence, self.language) for e in examples],
                                      min_freq=self.config["DataLoader"]["vocab_min_freq"])
            log.info("oie vocabulary: %d words from %d training sentences", len(self._vocab), len(examples))
        return self._vocab

    def use_vocab_of(self, checkpoint):
        """Use the vocabulary stored with ``checkpoint`` (eval, predict, resume)."""
        self._vocab = read_vocab(checkpoint)

    # ------------------------------------------------------------------ model and batches
    def build_model(self):
        return build_arch(self.config, vocab_size=len(self.vocab))

    @property
    def graph_mode(self):
        return self.config["Arch"].get("graph", "auto")

    def make_batch(self, examples):
        """Teacher-forcing tensors of ``examples`` (:func:`paddle_suite.oie.model.make_batch`), and the count
        of target words the sentences lack."""
        # .get: the saved config of a run from before fact_order existed lacks the key
        return make_batch(examples, self.vocab, self.language, self.graph_mode,
                          fact_order=self.config["DataLoader"].get("fact_order", "sentence"))

    def _num_batches(self):
        return -(-len(self.train_examples()[0]) // self.config["DataLoader"]["batch_size"])

    def steps_per_epoch(self, world_size=1):
        return -(-self._num_batches() // world_size)

    def epoch_batches(self, epoch):
        """The example indices of every batch of ``epoch``: a pure function of (seed, epoch)."""
        size = self.config["DataLoader"]["batch_size"]
        lengths = self.train_examples()[1]
        order = np.random.default_rng([self.seed, epoch]).permutation(len(lengths))
        window = size * BUCKET_BATCHES
        batches = []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        shuffle = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
        return [batches[i] for i in shuffle]

    def train_batches(self, epoch, start=0, rank=0, world_size=1):
        examples = self.train_examples()[0]
        batches = self.epoch_batches(epoch)
        for position in range(start, self.steps_per_epoch(world_size)):
            rows = batches[(rank + position * world_size) % len(batches)]
            yield self.make_batch([examples[i] for i in rows])[0]

    def train_step(self, model, batch):
        _, terms = model(batch)
        return self.loss(terms), int(batch["src_ids"].shape[0])

    # ------------------------------------------------------------------ evaluation
    def eval_examples(self, split):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: use valid, test or train")
        examples = self.splits()[split]
        subset = {"valid": self.config["DataLoader"]["valid_subset"],
                  "test": self.config["DataLoader"]["test_subset"]}.get(split, 0)
        if 0 < subset < len(examples):
            keep = np.sort(np.random.default_rng([self.seed, 7]).choice(len(examples), subset, replace=False))
            examples = [examples[i] for i in keep]
        return examples

    def teacher_forced_terms(self, model, examples):
        """Per target token over ``examples`` (batches of ``eval_batch_size``): ``loss`` (the NLL) and, for a
        model with a dependency gate, ``gate`` (its mean weight on content attention)."""
        size = self.config["DataLoader"]["eval_batch_size"]
        totals, tokens = {}, 0.0
        for start in range(0, len(examples), size):
            batch, _ = self.make_batch(examples[start:start + size])
            count = float(batch["tgt_mask"].sum())
            terms = model(batch)[1]
            for name in ("nll", "gate"):
                if name in terms:
                    totals[name] = totals.get(name, 0.0) + float(terms[name]) * count
            tokens += count
        return {"loss" if name == "nll" else name: total / tokens for name, total in totals.items()}

    def predict(self, model, sentences, heads=None):
        """SAOKE facts for each sentence, decoded in length-sorted batches of ``eval_batch_size``; ``heads``
        default to those of ``DataLoader.parser``."""
        if heads is None and self.parses:
            heads = self.parse(sentences)
        metric_cfg, size = self.config["Metric"], self.config["DataLoader"]["eval_batch_size"]
        options = {"beam_size": metric_cfg["beam_size"], "max_steps": metric_cfg["max_decode_len"],
                   "length_penalty": metric_cfg["length_penalty"]}
        order = np.argsort([len(tokenize(s, self.language)) for s in sentences], kind="stable")
        facts = [None] * len(sentences)
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            decoded = model.extract_batch([sentences[i] for i in chunk], self.vocab, self.language,
                                          None if heads is None else [heads[i] for i in chunk], **options)
            for i, found in zip(chunk, decoded):
                facts[i] = found
        return facts

    def evaluate_model(self, model, split="valid"):
        core = getattr(model, "_layers", model)
        examples = self.eval_examples(split)
        metrics = self.teacher_forced_terms(core, examples)
        predictions = self.predict(core, [e.sentence for e in examples], [e.heads for e in examples]
                                   if any(e.heads is not None for e in examples) else None)
        references = [e.facts for e in examples]
        for metric in self.metrics:
            metrics.update(metric(predictions, references, self.config["Metric"]))
        return EvalResult(metrics, {"predictions": predictions, "sentences": [e.sentence for e in examples]}, split)

    # ------------------------------------------------------------------ runs
    def artifacts(self):
        return {VOCAB_FILE: json.dumps(self.vocab.to_dict(), ensure_ascii=False)}

    def train(self, args):
        resume = self.config["Global"]["resume"]
        run = Run(self.config)
        checkpoint = run.latest_checkpoint() if resume == "auto" else None if resume == "none" else resume
        if checkpoint and os.path.isfile(os.path.join(checkpoint, VOCAB_FILE)):
            self.use_vocab_of(checkpoint)
        return super().train(args)

    def evaluate(self, args):
        self.use_vocab_of(Run(self.config).resolve_checkpoint())
        return super().evaluate(args)
