"""What every ``ctr`` training mode shares: network body, data streaming, metrics, export, evaluation.

Both trainers (``fleet_ps``: Fleet PS / local static programs; ``hierarchical_train``: the pass
trainer on the HBM / MEM / SSD store) import this module and never each other; ``task`` chooses
between them. The run directory, config snapshot and metrics sink are the engine's
(``paddle_suite.engine.run``): pass metrics are logged with prefix ``pass`` at step = pass id.

Data: the training files are one stream of ``DataLoader.batch_size`` batches (all epochs, files
in sorted order); a pass is ``DataLoader.pass_size`` examples of it; worker ``w`` of ``W`` trains
the pass's batches with ``index % W == w``. With ``DataLoader.skip_malformed`` the lines the
readers skipped are counted (``SkippedLines``) and reported in every pass's metrics as
``skipped_lines``: the total skipped in the data read when the pass's batches were complete.
Readers parse 8 MiB blocks and the end of a pass is seen at the next pass's first batch, so the
count can include lines up to one block into the next pass; the last pass's count is the total.
"""
import glob
import json
import os
import shutil

import numpy as np

import paddle_suite  # noqa: F401  (MKL flag before paddle)
import paddle

from paddle_suite.config import ConfigError
from paddle_suite.engine.run import Run, RunError, write_json
from paddle_suite.registry import ARCHS
from paddle_suite.ads import models  # noqa: F401  (registers the CtrDNN / DeepFM architectures)

NUM_SLOTS, NUM_DENSE = 26, 13
INFERENCE_DIR = "inference"  # <run_dir>/inference: the exported dense body


# ------------------------------------------------------------------------------------------ model
def build_body(config):
    arch = dict(config["Arch"])
    factory = ARCHS.get(arch.pop("name"))
    return factory(num_slots=NUM_SLOTS, num_dense=NUM_DENSE, **arch)


#: ops of the MLP that run faster on oneDNN kernels on CPU (matmul and relu: ~1 ms of
#: ~9.5 ms a batch; bench/ctr_speed_history.md). Not all ops: FLAGS_use_mkldnn=1 fails in paddle 2.6.2 ("could not
#: reshape a memory descriptor"), elementwise_add on oneDNN is slower, concat / gather crash. Local
#: and hierarchical modes only: that is where it was measured; Fleet's worker programs keep the defaults.
ONEDNN_OPS = ("matmul_v2", "matmul_v2_grad", "relu", "relu_grad")


def use_onednn(program, op_types):
    """Mark the ``op_types`` ops of ``program`` to run on oneDNN kernels (the per-op ``use_mkldnn``).

    Grad ops are marked only when they output every input's gradient: paddle 2.6.2's oneDNN
    matmul_v2_grad segfaults when one is not wanted (DeepFM's linear term on the fed dense input)."""
    for block in program.blocks:
        for op in block.ops:
            if op.type not in op_types:
                continue
            if op.type.endswith("_grad") and not all(op.output(name) for name in op.output_names):
                continue
            op._set_attr("use_mkldnn", True)


# ------------------------------------------------------------------------------------------ data
class SkippedLines:
    """Malformed lines the training readers skipped (``DataLoader.skip_malformed``): ``total`` so far
    and ``through_pass[pass_id]``, the total when that pass's batches were complete."""

    def __init__(self):
        self.total = 0
        self.through_pass = {}


def training_files(config):
    paths = config["DataLoader"]["train_files"]
    if isinstance(paths, str):
        paths = [paths]
    files = sorted({f for p in paths for f in (glob.glob(p) or [p])})
    missing = [f for f in files if not os.path.isfile(f)]
    if missing or not files:
        raise FileNotFoundError(
            f"DataLoader.train_files: no such file(s) {missing or paths}; generate data with "
            "tools/gen_ctr_data.py or point DataLoader.train_files at Criteo TSV/CSV or slot files"
        )
    return files


def stream_batches(config, files, skipped=None):
    """Yield ``CtrBatch`` batches of the whole training stream (all epochs), in a fixed order;
    malformed lines skipped by the readers are added to ``skipped.total``."""
    from paddle_suite.ads.data import CtrFileReader

    dl = config["DataLoader"]
    for _ in range(int(config["Global"]["epochs"])):
        for path in files:
            reader = CtrFileReader(path, dl["format"], dl["skip_malformed"], dl["hash_seed"])
            counted = 0
            for batch in reader.batches(int(dl["batch_size"])):
                if skipped is not None:
                    skipped.total += reader.num_skipped - counted
                    counted = reader.num_skipped
                yield batch
            if skipped is not None:  # lines after the last batch
                skipped.total += reader.num_skipped - counted


def pass_batches(config, files, rank=0, world=1, start_pass=0, skipped=None):
    """Yield ``(pass_id, [batches of this rank])`` from ``start_pass`` on (see the module docstring)."""
    dl = config["DataLoader"]
    per_pass = max(1, int(dl["pass_size"]) // int(dl["batch_size"]))
    current, pending = 0, []
    counter = skipped if skipped is not None else SkippedLines()
    for index, batch in enumerate(stream_batches(config, files, counter)):
        pass_id = index // per_pass
        if pass_id != current:
            if current >= start_pass:
                counter.through_pass[current] = counter.total
                yield current, pending
            current, pending = pass_id, []
        if pass_id >= start_pass and index % world == rank:
            pending.append(batch)
    if current >= start_pass and (pending or world > 1):
        counter.through_pass[current] = counter.total
        yield current, pending


def dataset_passes(config, files, rank=0, world=1, start_pass=0):
    """Yield ``(pass_id, files of this rank)``: a pass is ``DataLoader.files_per_pass * world`` files
    of the stream (all epochs), dealt round-robin to the workers (Fleet's InMemoryDataset path)."""
    per_pass = max(1, int(config["DataLoader"]["files_per_pass"])) * world
    stream = [f for _ in range(int(config["Global"]["epochs"])) for f in files]
    for pass_id, lo in enumerate(range(0, len(stream), per_pass)):
        if pass_id >= start_pass:
            yield pass_id, stream[lo:lo + per_pass][rank::world]


def held_out_files(config):
    files = config["DataLoader"]["test_files"]
    files = [files] if isinstance(files, str) else list(files)
    if not files:
        raise ConfigError("DataLoader.test_files is empty: name held-out files to evaluate "
                          "(e.g. -o DataLoader.test_files=[data/ctr_synth/test.txt])")
    return files


# ------------------------------------------------------------------------------------------ metrics
def average_ranks(values):
    """1-based ranks with ties sharing their mean rank (scipy's ``rankdata``, in numpy: scipy's
    compiled modules can fail to load once paddle is imported, so the package avoids them)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse.reshape(-1)]


def roc_auc(labels, scores):
    """Exact ROC AUC (ties get half credit)."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = average_ranks(np.asarray(scores).reshape(-1))
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def auc_from_stats(stat_pos, stat_neg):
    """AUC from paddle.static.auc's histogram accumulators (same formula as fleet.metrics.auc)."""
    pos = np.asarray(stat_pos, dtype=np.float64).reshape(-1)[::-1]
    neg = np.asarray(stat_neg, dtype=np.float64).reshape(-1)[::-1]
    tp = np.cumsum(pos)
    fp = np.cumsum(neg)
    area = np.sum((fp - np.concatenate([[0.0], fp[:-1]])) * (tp + np.concatenate([[0.0], tp[:-1]])) / 2.0)
    return area / (tp[-1] * fp[-1]) if tp[-1] > 0 and fp[-1] > 0 else 0.5


def log_pass(sink, pass_id, metrics):
    """One pass's metrics: the run's ``MetricsSink`` (prefix ``pass``, step = pass id; the record
    keeps ``pass`` for readers of ``metrics.jsonl``) and the stdout line users watch. A sink
    without a directory (not the chief) logs nothing."""
    if sink.directory is None:
        return
    sink.log("pass", {"pass": pass_id, **metrics}, pass_id)
    sink.flush()
    print(f"pass {pass_id}: {json.dumps(metrics)}", flush=True)


# ------------------------------------------------------------------------------------------ export
def export_body(config, exe, scope, path):
    """Body-only inference model: inputs ``emb`` [n, S, sparse_dim], ``dense`` [n, 13] -> ``prob``.

    Parameter names match the training programs (same unique-name order), so the values are taken
    from ``scope`` (on a PS worker: the dense parameters last pulled from the servers).
    """
    infer, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(infer, startup), paddle.utils.unique_name.guard():
        body = build_body(config)
        emb = paddle.static.data("emb", shape=[-1, NUM_SLOTS, body.sparse_dim], dtype="float32")
        dense = paddle.static.data("dense", shape=[-1, NUM_DENSE], dtype="float32")
        prob = paddle.nn.functional.sigmoid(body(emb, dense))
    with paddle.static.scope_guard(scope):
        missing = [p.name for p in infer.all_parameters() if scope.find_var(p.name) is None]
        if missing:
            raise RuntimeError(f"export: parameters {missing} are not in the training scope")
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        paddle.static.save_inference_model(os.path.join(tmp, "body"), [emb, dense], [prob], exe, program=infer)
        write_json(os.path.join(tmp, "arch.json"), {"Arch": config["Arch"], "sparse_dim": body.sparse_dim})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def export_from_arrays(config, arrays, path):
    """Write ``export_body``'s inference model from ``{parameter name: array}``."""
    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        scope = paddle.static.Scope()
        place = paddle.CPUPlace()
        for name, value in arrays.items():
            scope.var(name).get_tensor().set(np.asarray(value), place)
        return export_body(config, paddle.static.Executor(place), scope, path)
    finally:
        if was_dynamic:
            paddle.disable_static()


class ExportedBody:
    """The exported dense body run with a paddle inference predictor."""

    def __init__(self, path):
        from paddle import inference

        cfg = inference.Config(os.path.join(path, "body.pdmodel"), os.path.join(path, "body.pdiparams"))
        cfg.disable_glog_info()
        self.predictor = inference.create_predictor(cfg)

    def __call__(self, emb, dense):
        names = self.predictor.get_input_names()
        for name, value in zip(names, (emb, dense)):
            self.predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(value, dtype=np.float32))
        self.predictor.run()
        return self.predictor.get_output_handle(self.predictor.get_output_names()[0]).copy_to_cpu().reshape(-1)


# ------------------------------------------------------------------------------------------ evaluation
def exported_body(config):
    """The run's exported body (``<run_dir>/inference``), or a clear error when there is none."""
    export_dir = Run(config).path(INFERENCE_DIR)
    if not os.path.isdir(export_dir):
        raise RunError(f"no export in {export_dir}: train first (or run tools/export.py)")
    return ExportedBody(export_dir)


def evaluate_exported(config, body, lookup):
    """AUC / log loss of ``DataLoader.test_files``: ``body(lookup(keys), dense)`` per 8192 examples."""
    from paddle_suite.ads.data import CtrFileReader

    dl = config["DataLoader"]
    labels, scores = [], []
    for path in held_out_files(config):
        for batch in CtrFileReader(path, dl["format"], dl["skip_malformed"], dl["hash_seed"]).batches(8192):
            scores.append(body(lookup(batch.sparse), batch.dense))
            labels.append(batch.labels)
    labels, scores = np.concatenate(labels), np.concatenate(scores)
    eps = 1e-7
    clipped = np.clip(scores, eps, 1 - eps)
    logloss = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    return {"auc": roc_auc(labels, scores), "logloss": logloss, "examples": int(len(labels))}
