"""Pass-based CTR training on the hierarchical HBM / MEM / SSD store (Zhao et al. 2020).

Workflow per pass ``i`` (``DataLoader.pass_size`` examples of the training stream):

1. the pass's data is read and its distinct keys collected; its working set was requested with
   ``store.prefetch(keys)`` while pass ``i-1`` trained (``Store.prefetch``), else it is loaded now
   (``store.load_working_set``: SSD -> MEM -> HBM);
2. the HBM table is a paddle tensor built from ``ws.rows`` ([n, dim + dim]: embedding, then the
   per-element Adagrad accumulators, so optimiser state travels with the row). Every example's
   keys are mapped once per pass to local row indices (``ws.index``), so training is dense
   indexing: per batch, gather the batch's distinct rows, run the network body (the same
   ``models`` body as the PS modes) in dygraph, update the dense parameters with the
   ``Optimizer`` section's optimiser and the gathered rows with a vectorised Adagrad (paddle ops),
   and scatter them back in place;
3. the pass is written back: dense checkpoint first, then ``store.commit_pass(ws, i)``.

Sparse update rule (the form of Fleet's ``SparseAdaGradSGDRule``, kept per element):
``G += g*g; w -= lr * g * sqrt(g0 / (g0 + G))`` with ``g0 = PS.initial_g2sum``, where ``g`` is the
gradient of the batch's *summed* loss (per-example gradients added up, so a hot key that occurs
many times in a batch moves more; our choice). Fleet's rule differs in two ways (its
``sparse_sgd_rule.cc``): the pushed gradient is divided by the key's pushed show count (an
average over its occurrences), and ``G`` is one number per row (the mean over the embedding of
the squared scaled gradients). ``PS.sparse_lr`` is therefore not interchangeable with the Fleet
modes: ``python bench/ctr_sparse_lr.py`` sweeps both (this rule: 0.05 in ``configs/``; the async
feed path: 1.0; its InMemoryDataset path needs about 30, measured, not traced).

Commit protocol (what makes resume after ``kill -9`` consistent): the commit point is the store's
``commit_pass`` (one LMDB transaction). The dense parameters and optimiser state of pass ``i``
are written atomically to ``dense/pass-i.pdparams`` *before* the store commits pass ``i``.
On restart with ``L = store.last_pass``: ``dense/pass-L`` exists (written before the commit that
made ``L`` last), dense files of passes ``> L`` are leftovers of a crash between the two writes
and are deleted, and training continues with pass ``L + 1`` from ``dense/pass-L`` and the
store's rows. So the sparse and dense halves always come from the same pass. ``L = -1`` means a
fresh start. Training is deterministic (fixed data order, seeded init, no dropout), so a
resumed run reproduces the uninterrupted run (the crash test checks this row by row).

Across machines (how the tiers ride on Fleet): started by ``fleetrun --server_num=S --worker_num=W``
or ``python -m paddle_suite.ads.launcher`` (the ``PADDLE_*`` role variables are set), the same
config runs the multi-process mode (``run``). Each **server** runs a shard server
(``store_service.ShardServer``): it owns the keys with ``store.shard_of(key, S) == s``, i.e. their
**MEM** cache and **SSD** table (``<Store.path>/shard-s-of-S``), and server 0 keeps the averaged
dense parameters. Each **worker** trains every W-th batch of every pass; its **HBM** tier is the
working set of its own batches' keys, fetched from the owning servers by a
``store_service.RemoteStore`` (prefetched while the previous pass trains). At the end of pass ``i``
each worker pushes its row *deltas* (trained minus fetched, weights and Adagrad sums) and its dense
state; each server adds the W deltas of every key (a key trained by two workers gets both
updates, as in Fleet's async/geo merge), server 0 averages the dense state and writes
``<Store.path>/dense/pass-i.pkl``, and worker 0 runs the two-phase commit over all shards; then
every worker continues from the averaged dense state, so all workers start pass ``i+1``
identical. After ``kill -9`` of the whole job, a restart resolves the two-phase commit (every
shard at the same last pass ``L``, dense files above ``L`` dropped) and resumes with pass ``L+1``
from the dense state of ``L`` (protocol details in ``store_service``). Without role variables
the single-process workflow above runs (``Store.num_shards`` > 1: the same shards and two-phase
commit in one process, ``store.ShardedStore``). A distributed run's store is read offline (eval,
``store_lookup``) as a ``ShardedStore`` (``<Store.path>/layout.json`` records S).
"""
import io
import itertools
import glob
import json
import logging
import os
import re
import time

import numpy as np
import scipy.stats  # noqa: F401  (roc_auc's import, done up front so no pass pays for it)

import paddle_suite  # noqa: F401  (MKL flag before paddle)
import paddle

from paddle_suite.io import atomic_write
from paddle_suite.ads.fleet_ps import (MetricsLog, NUM_DENSE, NUM_SLOTS, build_body, export_body, pass_batches,
                                       roc_auc, run_directory, training_files)

log = logging.getLogger(__name__)
_DENSE_FILE = re.compile(r"pass-(\d+)\.pdparams$")


def store_path(config):
    return config["Store"]["path"] or os.path.join(run_directory(config), "store")


def open_store(config, sparse_dim):
    from paddle_suite.ads.store import HierarchicalStore, ShardedStore

    kwargs = store_settings(config, sparse_dim)
    num_shards = int(config["Store"]["num_shards"])
    layout = os.path.join(store_path(config), "layout.json")
    if os.path.exists(layout):  # written by a distributed run's server 0: S shard directories
        with open(layout) as handle:
            stored = int(json.load(handle)["num_shards"])
        if num_shards > 1 and num_shards != stored:
            raise ValueError(f"{layout} says the store has {stored} shards but Store.num_shards={num_shards}; "
                             f"set Store.num_shards={stored} or 1")
        num_shards = stored
    if num_shards > 1:
        return ShardedStore(store_path(config), num_shards, **kwargs)
    return HierarchicalStore(store_path(config), **kwargs)


def store_settings(config, sparse_dim):
    s, ps = config["Store"], config["PS"]
    return dict(dim=sparse_dim, state_dim=sparse_dim, mem_cap_mb=float(s["mem_cap_mb"]),
                init_std=float(ps["init_std"]), seed=int(config["Global"]["seed"]), state_init=0.0)


def run(config):
    """Entry of ``PS.mode: hierarchical``: a shard server, a distributed worker or one process,
    by the ``PADDLE_*`` role variables fleetrun / our launcher set."""
    role = os.environ.get("TRAINING_ROLE") or os.environ.get("PADDLE_ROLE")
    endpoints = os.environ.get("PADDLE_PSERVERS_IP_PORT_LIST")
    if not role or not endpoints:
        return HierarchicalTrainer(config).train()
    num_workers = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if role == "PSERVER":
        from paddle_suite.ads.store_service import serve_from_env

        paddle.disable_static()
        with paddle.utils.unique_name.guard():
            sparse_dim = build_body(config).sparse_dim
        return serve_from_env(store_path(config), num_workers,
                              keep_dense=int(config["Global"]["keep_checkpoints"]),
                              **store_settings(config, sparse_dim))
    if role != "TRAINER":
        raise ValueError(f"TRAINING_ROLE={role!r}: expected PSERVER or TRAINER")
    return DistributedTrainer(config, int(os.environ.get("PADDLE_TRAINER_ID", "0")), num_workers,
                              endpoints.split(",")).train()


def with_store_stats(metrics, store, ws):
    """Add the store's per-tier hit rates, MEM size and the working-set size to a pass's metrics."""
    stats = store.stats()
    metrics.update({f"hit_{k}": float(v) for k, v in stats["hit_rate"].items()})
    metrics["mem_mb"] = stats["mem_bytes"] / 2 ** 20
    metrics["working_set_rows"] = int(len(ws))
    return metrics


class PassData:
    """One pass's examples as arrays, plus its distinct keys."""

    def __init__(self, pass_id, batches):
        self.pass_id = pass_id
        self.labels = np.concatenate([b.labels for b in batches]) if batches else np.zeros(0, np.int64)
        self.dense = np.concatenate([b.dense for b in batches]) if batches else np.zeros((0, NUM_DENSE), np.float32)
        self.keys = np.concatenate([b.sparse for b in batches]) if batches else np.zeros((0, NUM_SLOTS), np.uint64)
        self.distinct = np.unique(self.keys)

    def __len__(self):
        return len(self.labels)


def hbm_table(rows):
    """The working set's rows as one dense paddle tensor on the current device. On a CPU device the
    tensor shares ``rows``' memory (no second working-set-sized copy; in-place updates land in
    ``rows``); on an accelerator it is a device copy, read back after the pass."""
    if paddle.get_device() == "cpu" and rows.flags.c_contiguous and rows.dtype == np.float32:
        return paddle.Tensor(rows, paddle.CPUPlace(), False, True)  # (value, place, persistable, zero_copy)
    return paddle.to_tensor(rows)


def table_shares_rows(table, rows):
    return table.place.is_cpu_place() and table.data_ptr() == rows.ctypes.data


class SparseAdagrad:
    """In-place Adagrad on rows of the HBM table (Fleet's SparseAdaGradSGDRule, per element)."""

    def __init__(self, lr, initial_g2sum, dim):
        self.lr, self.g0, self.dim = float(lr), float(initial_g2sum), dim

    @paddle.no_grad()
    def apply(self, table, index, rows, grad):
        """``rows`` = gathered rows [u, 2*dim] (values before the step), ``grad`` [u, dim].

        Under ``no_grad``: recorded on the autograd tape, every in-place scatter would chain a node
        to the table that lives until the pass ends (measured: +3.6 MB resident per batch)."""
        weights, g2sum = rows[:, : self.dim], rows[:, self.dim:]
        g2sum = g2sum + grad * grad
        weights = weights - self.lr * grad * paddle.sqrt(self.g0 / (self.g0 + g2sum))
        paddle.scatter_(table, index, paddle.concat([weights, g2sum], axis=1), overwrite=True)


class HierarchicalTrainer:
    def __init__(self, config):
        self.config = config
        self.run_dir = run_directory(config)
        self.dense_dir = os.path.join(self.run_dir, "dense")
        ps = config["PS"]
        self.batch_size = int(config["DataLoader"]["batch_size"])
        self.max_passes = int(ps["max_passes"])

    # -- model
    def build_model(self):
        paddle.disable_static()
        paddle.seed(int(self.config["Global"]["seed"]))
        from paddle_suite.engine.optim import build_optimizer

        with paddle.utils.unique_name.guard():  # same parameter names as the static programs
            self.body = build_body(self.config)
        self.optimizer, _ = build_optimizer(self.config["Optimizer"], self.body.parameters(), 0)
        self.sparse = SparseAdagrad(self.config["PS"]["sparse_lr"], self.config["PS"]["initial_g2sum"],
                                    self.body.sparse_dim)

    # -- dense checkpoints (see the commit protocol in the module docstring)
    def _dense_files(self):
        found = {}
        for path in glob.glob(os.path.join(self.dense_dir, "pass-*.pdparams")):
            match = _DENSE_FILE.search(path)
            if match:
                found[int(match.group(1))] = path
        return found

    def _save_dense(self, pass_id):
        buffer = io.BytesIO()
        paddle.save({"model": self.body.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "pass": pass_id}, buffer)
        with atomic_write(os.path.join(self.dense_dir, f"pass-{pass_id:05d}.pdparams"), "wb") as handle:
            handle.write(buffer.getvalue())

    def _prune_dense(self, last_pass):
        keep = max(1, int(self.config["Global"]["keep_checkpoints"]))
        files = self._dense_files()
        kept = sorted(p for p in files if p <= last_pass)[-keep:]
        for pass_id, path in files.items():
            if pass_id not in kept:
                os.remove(path)

    def _restore_dense(self, last_pass):
        files = self._dense_files()
        for pass_id in [p for p in files if p > last_pass]:
            log.warning("dropping %s: written before a crash, its store commit never happened", files[pass_id])
            os.remove(files[pass_id])
        if last_pass < 0:
            return
        if last_pass not in files:
            raise RuntimeError(
                f"the store at {store_path(self.config)} committed pass {last_pass} but {self.dense_dir} has no "
                f"pass-{last_pass:05d}.pdparams: the store and the dense checkpoints belong to different runs"
            )
        state = paddle.load(files[last_pass])
        self.body.set_state_dict(state["model"])
        self.optimizer.set_state_dict(state["optimizer"])

    # -- training
    def train(self):
        self.build_model()
        os.makedirs(self.dense_dir, exist_ok=True)
        store = open_store(self.config, self.body.sparse_dim)
        metrics_log = MetricsLog(self.run_dir, True)
        last = None
        try:
            start = store.last_pass + 1
            self._restore_dense(store.last_pass)
            if start:
                print(f"resuming after pass {store.last_pass} (store and dense/pass-{store.last_pass:05d})", flush=True)
            passes = (PassData(p, b) for p, b in pass_batches(self.config, training_files(self.config), 0, 1, start))
            passes = (p for p in itertools.takewhile(lambda p: not self.max_passes or p.pass_id < self.max_passes, passes)
                      if len(p))
            current = next(passes, None)
            pending = store.prefetch(current.distinct) if current is not None else None
            while current is not None:
                ws = pending.result()
                upcoming = next(passes, None)
                # pass i+1's rows come from MEM/SSD while pass i trains (patched at our commit)
                pending = store.prefetch(upcoming.distinct) if upcoming is not None and self.config["Store"]["prefetch"] else None
                metrics = self.train_pass(current, ws)
                self._save_dense(current.pass_id)  # before the commit point: see the protocol
                store.commit_pass(ws, current.pass_id)
                self._prune_dense(current.pass_id)
                metrics_log.log(current.pass_id, with_store_stats(metrics, store, ws))
                last = {"pass": current.pass_id, **metrics}
                if upcoming is not None and pending is None:
                    pending = store.prefetch(upcoming.distinct)
                current = upcoming
            if last is not None:
                self.export(os.path.join(self.run_dir, "inference"))
        finally:
            store.close()
            metrics_log.close()
        return last

    def train_pass(self, data, ws):
        if not len(data):  # a worker with no batch in this pass still joins its commit
            return {"loss": float("nan"), "auc": float("nan"), "examples": 0, "examples_per_s": 0.0}
        started = time.time()
        table = hbm_table(ws.rows)  # the HBM tier: one dense tensor on the training device
        local = ws.index(data.keys)  # [n, S] int64 rows of the HBM table
        dim = self.body.sparse_dim
        self.body.train()
        loss_sum, probs = 0.0, []
        for lo in range(0, len(data), self.batch_size):
            hi = min(lo + self.batch_size, len(data))
            distinct, inverse = np.unique(local[lo:hi], return_inverse=True)
            index = paddle.to_tensor(distinct)
            rows = paddle.gather(table, index)
            weights = rows[:, :dim].detach()
            weights.stop_gradient = False
            emb = paddle.gather(weights, paddle.to_tensor(inverse.reshape(-1))).reshape([hi - lo, NUM_SLOTS, dim])
            logit = self.body(emb, paddle.to_tensor(data.dense[lo:hi]))
            label = paddle.to_tensor(data.labels[lo:hi].astype(np.float32).reshape(-1, 1))
            losses = paddle.nn.functional.binary_cross_entropy_with_logits(logit, label, reduction="none")
            loss = paddle.mean(losses)
            loss.backward()
            self.optimizer.step()
            self.optimizer.clear_grad()
            # rows move by the gradient of the summed batch loss = n * d(mean loss)/d(row)
            self.sparse.apply(table, index, rows.detach(), weights.grad * float(hi - lo))
            loss_sum += float(loss) * (hi - lo)
            probs.append(paddle.nn.functional.sigmoid(logit).numpy().reshape(-1))
        if not table_shares_rows(table, ws.rows):
            ws.rows[:] = table.numpy()
        elapsed = time.time() - started
        return {
            "loss": loss_sum / max(len(data), 1),
            "auc": roc_auc(data.labels, np.concatenate(probs)),  # progressive: before each batch's update
            "examples": int(len(data)),
            "examples_per_s": len(data) / max(elapsed, 1e-9),
        }

    def export(self, path):
        """Export the dense body (the sparse rows stay in the store: ``store_lookup``)."""
        state = {p.name: p.numpy() for p in self.body.parameters()}
        return export_from_arrays(self.config, state, path)


def _to_numpy(state):
    return {k: (_to_numpy(v) if isinstance(v, dict) else v.numpy() if hasattr(v, "numpy") else v)
            for k, v in state.items()}


class DistributedTrainer(HierarchicalTrainer):
    """Worker ``worker_id`` of ``num_workers`` on the shard servers at ``endpoints`` (see the module
    docstring and ``store_service``). Worker 0 logs metrics (of its own batches) and exports."""

    def __init__(self, config, worker_id, num_workers, endpoints):
        super().__init__(config)
        self.worker_id, self.num_workers, self.endpoints = worker_id, num_workers, endpoints

    def dense_state(self):
        return {"model": _to_numpy(self.body.state_dict()), "optimizer": _to_numpy(self.optimizer.state_dict())}

    def set_dense_state(self, state):
        self.body.set_state_dict(state["model"])
        if state["optimizer"]:
            self.optimizer.set_state_dict(state["optimizer"])

    def train(self):
        from paddle_suite.ads.store_service import RemoteStore

        self.build_model()
        store = RemoteStore(self.endpoints, self.worker_id, self.num_workers, self.body.sparse_dim)
        chief = self.worker_id == 0
        metrics_log = MetricsLog(self.run_dir, chief)
        last, finished = None, False
        try:
            start = store.last_pass + 1
            if start:
                self.set_dense_state(store.pull_dense(store.last_pass))
                print(f"worker {self.worker_id}: resuming after pass {store.last_pass} "
                      f"(shards and dense/pass-{store.last_pass:05d})", flush=True)
            passes = (PassData(p, b) for p, b in pass_batches(self.config, training_files(self.config),
                                                               self.worker_id, self.num_workers, start))
            passes = itertools.takewhile(lambda p: not self.max_passes or p.pass_id < self.max_passes, passes)
            current = next(passes, None)
            pending = store.prefetch(current.distinct) if current is not None else None
            while current is not None:
                ws = pending.result()
                upcoming = next(passes, None)
                # pass i+1's rows are read on the servers while pass i trains (patched at their commit)
                prefetch = upcoming is not None and self.config["Store"]["prefetch"]
                pending = store.prefetch(upcoming.distinct) if prefetch else None
                metrics = self.train_pass(current, ws)
                self.set_dense_state(store.commit_pass(ws, current.pass_id, dense=self.dense_state()))
                if chief:
                    metrics_log.log(current.pass_id, with_store_stats(metrics, store, ws))
                last = {"pass": current.pass_id, **metrics}
                if upcoming is not None and pending is None:
                    pending = store.prefetch(upcoming.distinct)
                current = upcoming
            if last is not None and chief:
                self.export(os.path.join(self.run_dir, "inference"))
            finished = True
        finally:
            store.close(done=finished)
            metrics_log.close()
        return last


def export_from_arrays(config, arrays, path):
    """Write ``fleet_ps.export_body``'s inference model from ``{parameter name: array}``."""
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


def store_lookup(config):
    """``keys -> embeddings`` from the committed rows of the run's store (read-only use)."""
    arch = json.load(open(os.path.join(run_directory(config), "inference", "arch.json")))
    sparse_dim = int(arch["sparse_dim"])
    store = open_store(config, sparse_dim)

    def lookup(keys):
        keys = np.asarray(keys, dtype=np.uint64)
        rows = store.read_rows(keys.reshape(-1))[:, :sparse_dim]
        return rows.reshape(*keys.shape, sparse_dim)

    lookup.store = store
    return lookup
