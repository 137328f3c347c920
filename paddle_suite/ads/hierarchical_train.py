"""Pass-based CTR training on the hierarchical HBM / MEM / SSD store (Zhao et al. 2020).

Workflow per pass ``i`` (``DataLoader.pass_size`` examples of the training stream):

1. the pass's data is read, its distinct keys collected and every example's keys mapped to their
   rows among them (``PassData``), in a background thread one pass ahead (``read_ahead``); its
   working set was requested with ``store.prefetch(keys)`` while pass ``i-1`` trained
   (``Store.prefetch``), else it is loaded now (``store.load_working_set``: SSD -> MEM -> HBM);
2. the HBM table is the tensor ``hbm_table`` of the training program's scope, on the executor's
   device, set from ``ws.rows`` ([n, dim + dim]: embedding, then the per-element Adagrad
   accumulators, so optimiser state travels with the row). Training is dense indexing: per batch
   one run of a static program (``PassStep``) that gathers the batch's distinct rows
   (``batch_rows``), runs the network body (the same ``models`` body as the PS modes), updates the
   dense parameters with the ``Optimizer`` section's optimiser and the gathered rows with the
   sparse rule below, and scatters them back in place; the table is read back into ``ws.rows``
   when the pass ends;
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
are written atomically to ``<run_dir>/dense/pass-i.npz`` (``write_dense``: plain arrays, loaded
without pickle) *before* the store commits pass ``i``. The single-process trainer commits with
``wait=False``: pass ``i``'s redo records and commit point are written while pass ``i+1`` trains
(pass ``i+1``'s working set already patched with pass ``i``'s rows), and the store's next commit,
load or ``close`` waits for them; a crash before they are done is a crash before the commit point.
Dense files are pruned only below the store's durable pass.
On restart with ``L = store.last_pass``: ``dense/pass-L`` exists (written before the commit that
made ``L`` last), dense files of passes ``> L`` are leftovers of a crash between the two writes
and are deleted, and training continues with pass ``L + 1`` from ``dense/pass-L`` and the
store's rows. So the sparse and dense halves always come from the same pass. ``L = -1`` means a
fresh start. Training is deterministic (fixed data order, seeded init, no dropout), so a
resumed run reproduces the uninterrupted run (the crash test checks this row by row).

Metrics lines (exactly one line per pass in ``metrics.jsonl``, whatever the crash point): pass
``i``'s line is written atomically to ``<run_dir>/pass_metrics/pass-i.json`` (its *record*)
*before* ``commit_pass`` is called, so before its commit point can become durable; it is
appended to ``metrics.jsonl`` only once the store has pass ``i`` durably, in pass order, and the
record is removed after that. So at every instant each durable pass is in ``metrics.jsonl`` or
has a record, and each logged pass is durable (a logged pass is never redone). On restart
(``_recover_pass_lines``) the records of passes ``<= L`` missing from ``metrics.jsonl`` are
logged, in order (they follow the logged passes: logging is in pass order), and every other
record is removed (``> L``: its commit never happened, the pass is redone and logged then).
``metrics.jsonl`` is the reference: the stdout line and the VisualDL scalars are written in the
same ``log_pass`` call, a crash inside that call can leave them without the pass. One field
group is not covered: a counting store's admission counters (``pass_admitted``, ...) come out of
the commit itself; they are added to the record when ``commit_pass`` returns, and a crash between
its commit point and that rewrite logs the pass without them. A distributed job's record is
worker 0's file plus every worker's scores (``DistributedTrainer``), all written before the pushes
that its commit needs.

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
from the dense state of ``L`` (protocol details in ``store_service``). Worker 0 logs each pass's
metrics over every worker's batches (``DistributedTrainer``). Without role variables
the single-process workflow above runs (``Store.num_shards`` > 1: the same shards and two-phase
commit in one process, ``store.ShardedStore``). A distributed run's store is read offline (eval,
``store_lookup``) as a ``ShardedStore`` (``<Store.path>/layout.json`` records S).
"""
import contextlib
import itertools
import glob
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import paddle_suite  # noqa: F401  (MKL flag before paddle)
import paddle

from paddle_suite.config import ConfigError
from paddle_suite.engine.run import METRICS_FILE, Run, RunError, read_json, read_metrics
from paddle_suite.io import atomic_write
from paddle_suite.ads.common import (INFERENCE_DIR, NUM_DENSE, NUM_SLOTS, ONEDNN_OPS, SkippedLines, build_body,
                                     export_from_arrays, log_pass, pass_batches, roc_auc, training_files,
                                     use_onednn)
from paddle_suite.ads.store import sorted_unique, unique_inverse

log = logging.getLogger(__name__)
_DENSE_FILE = re.compile(r"pass-(\d+)\.npz$")
PASS_METRICS = "pass_metrics"  # <run_dir>/pass_metrics/pass-NNNNN.json: a pass's line until it is logged
_RECORD_FILE = re.compile(r"pass-(\d+)\.json$")


def _plain_number(value):
    """json.dump's fallback for a numpy scalar in a metrics record."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a pass metrics value must be a number, not {type(value).__name__}: {value!r}")


def store_path(config):
    return config["Store"]["path"] or Run(config).path("store")


def open_store(config, sparse_dim):
    from paddle_suite.ads.store import HierarchicalStore, ShardedStore

    kwargs = store_settings(config, sparse_dim)
    num_shards = int(config["Store"]["num_shards"])
    layout = os.path.join(store_path(config), "layout.json")
    recorded = read_json(layout)  # written by a distributed run's server 0: S shard directories
    if recorded is not None:
        stored = int(recorded["num_shards"])
        if num_shards > 1 and num_shards != stored:
            raise ConfigError(f"{layout} says the store has {stored} shards but Store.num_shards={num_shards}; "
                             f"set Store.num_shards={stored} or 1")
        num_shards = stored
    if num_shards > 1:
        return ShardedStore(store_path(config), num_shards, **kwargs)
    return HierarchicalStore(store_path(config), **kwargs)


def store_settings(config, sparse_dim):
    s, ps = config["Store"], config["PS"]
    return dict(dim=sparse_dim, state_dim=sparse_dim, mem_cap_mb=float(s["mem_cap_mb"]),
                init_std=float(ps["init_std"]), seed=int(config["Global"]["seed"]), state_init=0.0,
                admit_threshold=float(s["admit_threshold"]), nonclk_coeff=float(s["nonclk_coeff"]),
                click_coeff=float(s["click_coeff"]), show_click_decay_rate=float(s["show_click_decay_rate"]),
                delete_threshold=float(s["delete_threshold"]),
                delete_after_unseen_passes=s["delete_after_unseen_passes"],
                shrink_every_passes=int(s["shrink_every_passes"]), background_nice=int(s["background_nice"]),
                pending_state=float("inf"))  # our Adagrad step lr*g*sqrt(g0/(g0+G)) is 0: pending rows stay 0


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
                              max_message_mb=float(config["Store"]["max_message_mb"]),
                              **store_settings(config, sparse_dim))
    if role != "TRAINER":
        raise ValueError(f"TRAINING_ROLE={role!r}: expected PSERVER or TRAINER")
    return DistributedTrainer(config, int(os.environ.get("PADDLE_TRAINER_ID", "0")), num_workers,
                              endpoints.split(",")).train()


def tier_stats(store, ws):
    """The store's per-tier hit rates, MEM size and the working-set size, for a pass's metrics line.
    Taken before the pass's commit, once the previous commit settled (``store.flush``, which
    ``commit_pass`` waits for first anyway): MEM as the pass's commit finds it."""
    stats = store.stats()
    metrics = {f"hit_{k}": float(v) for k, v in stats["hit_rate"].items()}
    metrics["mem_mb"] = float(stats["mem_bytes"] / 2 ** 20)
    metrics["working_set_rows"] = int(len(ws))
    return metrics


def commit_counters(store):
    """A counting store's admission / shrink counters of the commit that just returned
    (``Store.admit_threshold``, ``Store.shrink_every_passes``); {} when the store counts nothing."""
    stats = store.stats()
    if not stats.get("counter_rows"):
        return {}
    return {name: int(stats[name]) for name in ("pass_admitted", "pass_pending", "pass_evicted", "pass_dropped",
                                                 "counter_rows")}


class PassData:
    """One pass's examples as arrays, its sorted distinct keys, and every key's position among them
    (``local`` [n, S] int32: the rows of the pass's working set, whose keys are exactly
    ``distinct``). The raw keys are then dropped (``keys`` rebuilds them from the two): the
    pipeline holds three passes of data (training, prefetched, being read). With a ``pool``,
    ``local`` is computed there after construction (``distinct`` is a plain sort: the working set
    can start loading while the positions are ranked)."""

    def __init__(self, pass_id, batches, pool=None):
        self.pass_id = pass_id
        self.labels = np.concatenate([b.labels for b in batches]) if batches else np.zeros(0, np.int64)
        self.dense = np.concatenate([b.dense for b in batches]) if batches else np.zeros((0, NUM_DENSE), np.float32)
        self._keys = np.concatenate([b.sparse for b in batches]) if batches else np.zeros((0, NUM_SLOTS), np.uint64)
        self.distinct = sorted_unique(self._keys)
        self._local = pool.submit(self._rank) if pool is not None else self._rank()

    def _rank(self):
        distinct, local = unique_inverse(self._keys, dtype=np.int32)
        assert distinct.size == self.distinct.size
        local = local.reshape(self._keys.shape)
        self._keys = None
        return local

    @property
    def local(self):
        if not isinstance(self._local, np.ndarray):
            self._local = self._local.result()
        return self._local

    @property
    def keys(self):
        keys = self._keys
        return keys if keys is not None else self.distinct[self.local]

    def __len__(self):
        return len(self.labels)


def read_ahead(pass_batches):
    """``PassData`` of ``(pass_id, batches)`` items, each read and built in a background thread while
    the caller works on the one before (reading and parsing pass i+1 overlaps training pass i)."""
    iterator = iter(pass_batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pass-reader") as pool:
        def build():
            item = next(iterator, None)
            return None if item is None else PassData(*item, pool=pool)  # its ``local`` is queued next

        pending = pool.submit(build)
        while True:
            data = pending.result()
            if data is None:
                return
            pending = pool.submit(build)
            yield data


def _lookup_rows(weights, positions):
    """``weights[positions]`` as a ``lookup_table_v2`` op: its gradient adds the rows in a plain
    loop (``paddle.gather``'s calls MKL once per row). ``F.embedding`` would check a padding index
    against the rows' static count, which a fed batch does not have."""
    helper = paddle.base.layer_helper.LayerHelper("lookup_rows")
    out = helper.create_variable_for_type_inference(weights.dtype)
    helper.append_op(type="lookup_table_v2", inputs={"Ids": positions, "W": weights}, outputs={"Out": out},
                     attrs={"is_sparse": False, "is_distributed": False, "remote_prefetch": False, "padding_idx": -1})
    return out


class _keep_buffers:
    """Within the block the executor keeps intermediate tensors after a run (eager deletion off),
    so the next batch reuses their memory, and runs the ops in the calling thread (serial run: no
    hand-off to the executor's worker thread, whose wake-ups cost CPU the store's background
    threads need; see ``PassStep``). Scoped, not global: other programs of the process keep
    paddle's defaults."""

    FLAGS = {"FLAGS_eager_delete_tensor_gb": -1.0, "FLAGS_new_executor_serial_run": True}

    def __enter__(self):
        self.saved = paddle.get_flags(list(self.FLAGS))
        paddle.set_flags(self.FLAGS)

    def __exit__(self, *exc):
        paddle.set_flags(self.saved)


def batch_rows(local, scratch):
    """``(distinct, inverse)`` of one batch's working-set rows ``local``: its distinct rows (in no
    particular order) and each key's position among them. ``scratch`` is an int64 array as long as
    the working set, reused across batches without clearing (every slot read here is written
    here first): a few vectorised scatters instead of ``np.unique``'s sort (~1 ms a batch)."""
    flat = local.ravel()
    positions = np.arange(flat.size)
    scratch[flat] = positions  # the last occurrence of each row wins
    distinct = flat[scratch[flat] == positions]
    scratch[distinct] = np.arange(distinct.size)
    return distinct, scratch[flat]


class PassStep:
    """One training batch of the pass mode as a static program, run by an ``Executor``.

    The HBM tier is the persistable tensor ``hbm_table`` [n, 2*dim] in the program's scope, on
    the executor's device (set from ``ws.rows`` when a pass starts, read back when it ends). A run
    feeds the batch's distinct table rows (``index``), each (example, slot)'s position among them
    (``inverse``), the dense features and labels, and does everything else in the program:
    gather the rows, forward, backward, the ``Optimizer`` section's update of the dense
    parameters (one ``merged_adam`` for Adam), and the row-wise Adagrad on the gathered rows
    (``G += g*g; w -= lr * g * sqrt(g0 / (g0 + G))``, ``g`` = gradient of the summed batch loss,
    computed as ``lr * g * rsqrt(G / g0 + 1)``: the same rule in fewer ops), scattered back into
    the table in place. On the CPU the MLP's matmul / relu can run on oneDNN kernels
    (``PS.cpu_onednn``).

    Per-batch costs avoided (measured in ``bench/ctr_speed_history.md``): each (example, slot)
    reads its row with ``lookup_table_v2`` rather than ``gather``, whose gradient adds each 9-float
    row through an MKL vector call; the rsqrt form of the rule; and, during ``run``
    (``_keep_buffers``), the executor keeps intermediate tensors between batches (otherwise every
    batch frees and re-allocates ~30 buffers of up to 0.5 MB, which the C library returns to the
    OS and the kernel zeroes again on first touch) and runs the ops in the calling thread."""

    TABLE = "hbm_table"

    def __init__(self, config):
        from paddle_suite.engine.optim import build_optimizer

        paddle.enable_static()
        ps, opt_cfg = config["PS"], config["Optimizer"]
        self.place = paddle.CPUPlace() if paddle.get_device() == "cpu" else paddle.framework._current_expected_place()
        self.main, startup = paddle.static.Program(), paddle.static.Program()
        self.main.random_seed = startup.random_seed = int(config["Global"]["seed"])
        with paddle.static.program_guard(self.main, startup), paddle.utils.unique_name.guard():
            self.body = build_body(config)  # same parameter names as the Fleet / local programs
            dim = self.dim = self.body.sparse_dim
            table = self.main.global_block().create_var(name=self.TABLE, shape=[-1, 2 * dim], dtype="float32",
                                                        persistable=True, stop_gradient=True)
            index = paddle.static.data("index", [-1], "int64")
            inverse = paddle.static.data("inverse", [-1], "int64")
            dense = paddle.static.data("dense", [-1, NUM_DENSE], "float32")
            label = paddle.static.data("label", [-1, 1], "float32")
            rows = paddle.gather(table, index)
            weights = rows[:, :dim]
            weights.stop_gradient = False
            emb = paddle.reshape(_lookup_rows(weights, inverse), [-1, NUM_SLOTS, dim])
            self.logit = self.body(emb, dense)
            self.loss = paddle.nn.functional.binary_cross_entropy_with_logits(self.logit, label)
            self.infer = self.main.clone(for_test=True)
            params_grads = paddle.static.append_backward(self.loss)
            multi = opt_cfg["name"] in ("Adam", "Momentum") and opt_cfg["grad_clip"] <= 0
            build_optimizer(dict(opt_cfg, multi_tensor=multi or opt_cfg["multi_tensor"]), None, 0)[0].apply_gradients(
                params_grads)
            # the summed batch loss's gradient = n * the mean loss's
            grad = self.main.global_block().var(weights.name + "@GRAD") * paddle.cast(paddle.shape(label)[0], "float32")
            g0 = float(ps["initial_g2sum"])
            g2sum = rows[:, dim:] + grad * grad
            updated = weights - grad * paddle.rsqrt(paddle.scale(g2sum, 1.0 / g0, bias=1.0)) * float(ps["sparse_lr"])
            self.main.global_block().append_op(  # in place: paddle.scatter_ makes a copy in static mode
                type="scatter", inputs={"X": table, "Ids": index, "Updates": paddle.concat([updated, g2sum], axis=1)},
                outputs={"Out": table}, attrs={"overwrite": True})
        if isinstance(self.place, paddle.CPUPlace) and ps["cpu_onednn"]:
            use_onednn(self.main, ONEDNN_OPS)
        self.scope = paddle.static.Scope()
        self._shared = None
        self.exe = paddle.static.Executor(self.place)
        self.exe.run(startup, scope=self.scope)
        persistable = [v.name for v in self.main.list_vars() if v.persistable and v.name != self.TABLE
                       and v.type == paddle.base.core.VarDesc.VarType.LOD_TENSOR]
        self.param_names = sorted(p.name for p in self.main.all_parameters())
        self.state_names = sorted(set(persistable) - set(self.param_names))

    def set_table(self, rows):
        """Make ``rows`` [n, 2*dim] the HBM table. On the CPU the table tensor shares their memory
        (no working-set-sized copy; the updates land in ``rows``), elsewhere it is a device copy."""
        tensor = self.scope.var(self.TABLE).get_tensor()
        self._shared = None
        if isinstance(self.place, paddle.CPUPlace) and rows.flags.c_contiguous and rows.dtype == np.float32:
            with paddle.base.dygraph.guard(self.place):
                eager = paddle.Tensor(rows, self.place, False, True)  # (value, place, persistable, zero_copy)
                tensor._share_data_with(eager.value().get_tensor())
            self._shared = (rows, eager)  # both must outlive the table's use of the memory
        else:
            tensor.set(rows, self.place)

    def table_into(self, rows):
        """The table's current values into ``rows`` (nothing to do when it shares their memory)."""
        if self._shared is None or self._shared[0] is not rows:
            rows[:] = self.table()

    def table(self):
        return np.array(self.scope.find_var(self.TABLE).get_tensor())

    def run(self, index, inverse, dense, label):
        """One training step; returns (mean loss, logits [n])."""
        with _keep_buffers():
            loss, logit = self.exe.run(self.main, fetch_list=[self.loss, self.logit], scope=self.scope,
                                       feed={"index": index, "inverse": inverse, "dense": dense, "label": label})
        return float(loss), logit.reshape(-1)

    def predict(self, emb, dense):
        """Logits [n] of embeddings [n, S, dim] (rows of the store) and dense features, no update."""
        n = len(dense)
        self.set_table(np.concatenate([emb.reshape(-1, self.dim), np.zeros((n * NUM_SLOTS, self.dim), np.float32)],
                                      axis=1).astype(np.float32))
        positions = np.arange(n * NUM_SLOTS, dtype=np.int64)
        (logit,) = self.exe.run(self.infer, feed={"index": positions, "inverse": positions, "dense": dense,
                                                  "label": np.zeros((n, 1), np.float32)},
                                fetch_list=[self.logit], scope=self.scope)
        return logit.reshape(-1)

    def state(self):
        """The dense half: ``{"model": {parameter: array}, "optimizer": {accumulator: array}}``."""
        read = lambda name: np.array(self.scope.find_var(name).get_tensor())  # noqa: E731
        return {"model": {n: read(n) for n in self.param_names}, "optimizer": {n: read(n) for n in self.state_names}}

    def set_state(self, state):
        for group in ("model", "optimizer"):
            for name, value in state.get(group, {}).items():
                self.scope.var(name).get_tensor().set(np.asarray(value), self.place)


def write_dense(path, state):
    """The dense half (``PassStep.state()``) as ``.npz`` arrays ``model/<name>``, ``optimizer/<name>``,
    written atomically."""
    arrays = {f"{group}/{name}": np.asarray(value) for group in ("model", "optimizer")
              for name, value in state[group].items()}
    with atomic_write(path, "wb") as handle:
        np.savez(handle, **arrays)


def read_dense(path):
    """``{"model": {name: array}, "optimizer": {name: array}}`` of a ``write_dense`` file (no pickles)."""
    state = {"model": {}, "optimizer": {}}
    with np.load(path, allow_pickle=False) as arrays:
        for key in arrays.files:
            group, name = key.split("/", 1)
            state[group][name] = arrays[key]
    return state


class HierarchicalTrainer:
    def __init__(self, config):
        self.config = config
        self.out = Run(config)
        self.run_dir = self.out.dir
        self.dense_dir = self.out.path("dense")
        self.batch_size = int(config["DataLoader"]["batch_size"])
        self.max_passes = int(config["PS"]["max_passes"])
        self.skipped = None  # SkippedLines of the training stream, when train() reads it

    # -- model
    def build_model(self):
        self.step = PassStep(self.config)
        self.sparse_dim = self.step.dim

    # -- dense checkpoints (see the commit protocol in the module docstring)
    def _dense_files(self):
        found = {}
        for path in glob.glob(os.path.join(self.dense_dir, "pass-*.npz")):
            match = _DENSE_FILE.search(path)
            if match:
                found[int(match.group(1))] = path
        return found

    def _save_dense(self, pass_id):
        write_dense(os.path.join(self.dense_dir, f"pass-{pass_id:05d}.npz"), self.step.state())

    def _prune_dense(self, last_pass):
        """Keep the newest ``keep_checkpoints`` dense files of passes <= ``last_pass`` (the store's
        durable pass) and every newer one (their store commits may still be in progress)."""
        keep = max(1, int(self.config["Global"]["keep_checkpoints"]))
        files = self._dense_files()
        kept = sorted(p for p in files if p <= last_pass)[-keep:]
        for pass_id, path in files.items():
            if pass_id <= last_pass and pass_id not in kept:
                os.remove(path)

    def _restore_dense(self, last_pass):
        files = self._dense_files()
        for pass_id in [p for p in files if p > last_pass]:
            log.warning("dropping %s: written before a crash, its store commit never happened", files[pass_id])
            os.remove(files[pass_id])
        if last_pass < 0:
            return
        if last_pass not in files:
            legacy = os.path.join(self.dense_dir, f"pass-{last_pass:05d}.pdparams")
            if os.path.exists(legacy):
                raise RunError(f"{legacy} is a dense checkpoint of an earlier version (a pickle, which is not "
                               f"loaded: unpickling can run code); start a new run (-o Global.run_name=NAME)")
            raise RunError(
                f"the store at {store_path(self.config)} committed pass {last_pass} but {self.dense_dir} has no "
                f"pass-{last_pass:05d}.npz: the store and the dense checkpoints belong to different runs"
            )
        self.step.set_state(read_dense(files[last_pass]))

    # -- pass metrics lines (see "Metrics lines" in the module docstring)
    def _record_path(self, pass_id):
        return self.out.path(PASS_METRICS, f"pass-{pass_id:05d}.json")

    def _record_files(self):
        found = {}
        for path in glob.glob(self.out.path(PASS_METRICS, "pass-*.json")):
            match = _RECORD_FILE.search(path)
            if match:
                found[int(match.group(1))] = path
        return found

    def _save_record(self, pass_id, record):
        with atomic_write(self._record_path(pass_id)) as handle:
            json.dump(record, handle, default=_plain_number)

    @staticmethod
    def _read_record(path):
        try:
            with open(path) as handle:
                return json.load(handle)
        except ValueError as err:  # written atomically, so only a foreign or hand-edited file gets here
            raise RunError(f"{path}: not a pass metrics record ({err}); move it away to resume") from err

    def _record_pass(self, store, ws, pass_id, metrics):
        """Pass ``pass_id``'s line as far as it is known before its commit (this process's
        metrics, skipped lines, tier stats), saved as its record; call it before ``commit_pass``."""
        store.flush()  # the previous commit settled, as commit_pass would do first: same waiting
        record = dict(metrics)
        if self.skipped is not None and self.config["DataLoader"]["skip_malformed"]:
            record["skipped_lines"] = self.skipped.through_pass[pass_id]
        record.update(tier_stats(store, ws))
        self._save_record(pass_id, record)
        return record

    def _add_commit_counters(self, store, pass_id, record):
        """After ``commit_pass`` returned: a counting store's counters of that commit join the
        record (rewritten; a crash before this logs the pass without them)."""
        counters = commit_counters(store)
        if counters:
            record = {**record, **counters}
            self._save_record(pass_id, record)
        return record

    def _log_record(self, sink, pass_id, record):
        """Log durable pass ``pass_id`` from its record, then remove the record (a crash in between:
        the pass is in metrics.jsonl, so the restart removes it unlogged). Returns the line."""
        line = self.job_metrics(pass_id, record)
        log_pass(sink, pass_id, line)
        self._drop_records(pass_id)
        return {"pass": pass_id, **line}

    def _drop_records(self, pass_id):
        """Remove what the line of logged pass ``pass_id`` was built from."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._record_path(pass_id))

    def _recover_pass_lines(self, sink, last_pass):
        """At start, before training: log the durable passes (``<= last_pass``) whose line a crash
        lost, from their records, in pass order; remove every other record (passes already logged,
        or ``> last_pass``: written before a crash that came before their commit point). A durable
        pass with neither a line nor a record is reported, not hidden."""
        logged = {record["pass"] for record in read_metrics(self.run_dir, "pass")}
        for pass_id, path in sorted(self._record_files().items()):
            if pass_id > last_pass:
                log.info("dropping %s: written before a crash, its store commit never happened", path)
                os.remove(path)  # only this file: other workers may be redoing the pass's scores already
            elif pass_id in logged:
                self._drop_records(pass_id)
            else:
                log.warning("pass %d was committed but a crash came before its metrics line: logged now from %s",
                            pass_id, path)
                self._log_record(sink, pass_id, self._read_record(path))
                logged.add(pass_id)
        lost = sorted(set(range(last_pass + 1)) - logged)
        if lost:
            log.warning("%d committed passes (%s%s) have no line in %s and no record in %s to log them from",
                        len(lost), ", ".join(map(str, lost[:10])), ", ..." if len(lost) > 10 else "",
                        self.out.path(METRICS_FILE), self.out.path(PASS_METRICS))

    # -- training
    def train(self):
        self.build_model()
        self.out.create()
        os.makedirs(self.dense_dir, exist_ok=True)
        store = open_store(self.config, self.sparse_dim)
        sink = self.out.metrics()
        last = None
        try:
            start = store.last_pass + 1
            self._restore_dense(store.last_pass)
            self._recover_pass_lines(sink, store.last_pass)
            if start:
                print(f"resuming after pass {store.last_pass} (store and dense/pass-{store.last_pass:05d})", flush=True)
            self.skipped = SkippedLines()
            batches = self._pass_batches(pass_batches(self.config, training_files(self.config), 0, 1, start,
                                                      self.skipped))
            last = self.train_passes(store, batches, sink)
            if last is not None:
                self.export(self.out.path(INFERENCE_DIR))
        finally:
            store.close()
            sink.close()
        return last

    def _pass_batches(self, batches):
        return itertools.takewhile(lambda pass_batch: not self.max_passes or pass_batch[0] < self.max_passes, batches)

    def train_passes(self, store, pass_batches, sink=None):
        """Train ``(pass_id, batches)`` passes (``PassData`` built in a background thread one pass
        ahead) on ``store``; the last pass's metrics. ``sink``: the run's ``MetricsSink``, or None."""
        def commit(ws, pass_id, metrics):
            self._save_dense(pass_id)  # before the commit point: see the protocol
            record = self._record_pass(store, ws, pass_id, metrics) if sink is not None else None  # also before
            # the redo records and the commit point are written while the next pass trains
            # (``commit_pass(wait=False)``); the next commit, loads and close wait for them
            store.commit_pass(ws, pass_id, wait=False)
            if record is not None:
                record = self._add_commit_counters(store, pass_id, record)
            self._prune_dense(store.last_pass)  # the durable pass: pass_id or the one before
            return record

        last = self._run_passes(store, (p for p in read_ahead(pass_batches) if len(p)), commit, sink)
        self._prune_dense(store.last_pass)  # _run_passes flushed: the last pass is durable
        return last

    def _run_passes(self, store, passes, commit, sink):
        """The pass loop: pass i+1's working set is prefetched while pass i trains; ``commit(ws,
        pass_id, metrics)`` writes pass i back and returns its record (None: this process logs no
        metrics). Returns the last pass's logged line, else this process's metrics of it.

        Pass i+1's data is taken from ``passes`` (and its prefetch requested) in a helper thread
        beside pass i's training, and waited for before pass i commits (so the prefetch is patched
        by that commit, as before): the reader thread may still be building it when pass i's
        working set is ready (always for pass 0: it ranks pass 0's keys first), and training need
        not wait for that.

        A pass's metrics are logged once the store has it durably (``store.last_pass``; a
        deferred commit becomes durable during the next pass, the last one at ``store.flush``), so
        a logged pass is never redone after a crash; its record, saved by ``commit`` before the
        commit point, keeps the line across a crash until then (module docstring)."""
        last, unlogged, lines = None, [], []
        current = next(passes, None)
        pending = store.prefetch(current.distinct) if current is not None else None
        prefetch = bool(self.config["Store"]["prefetch"])
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pass-ahead") as helper:
            while current is not None:
                ws = pending.result()
                ahead = helper.submit(self._next_pass, store, passes, prefetch)
                metrics = self.train_pass(current, ws)
                upcoming, pending = ahead.result()
                record = commit(ws, current.pass_id, metrics)
                if record is not None:
                    unlogged.append((current.pass_id, record))
                unlogged = self._log_durable(sink, store, unlogged, lines)
                last = {"pass": current.pass_id, **metrics}
                if upcoming is not None and pending is None:
                    pending = store.prefetch(upcoming.distinct)
                current = upcoming
        if unlogged:
            store.flush()
            self._log_durable(sink, store, unlogged, lines)
        return lines[-1] if lines and last is not None and lines[-1]["pass"] == last["pass"] else last

    def _log_durable(self, sink, store, unlogged, lines):
        """Log the ``(pass_id, record)`` of passes the store has durably (their lines appended to
        ``lines``); the others are returned."""
        durable = store.last_pass
        lines.extend(self._log_record(sink, pass_id, record) for pass_id, record in unlogged if pass_id <= durable)
        return [item for item in unlogged if item[0] > durable]

    @staticmethod
    def _next_pass(store, passes, prefetch):
        """``(next PassData or None, its prefetch or None)``; pass i+1's rows come from MEM/SSD
        while pass i trains (patched at our commit)."""
        upcoming = next(passes, None)
        return upcoming, (store.prefetch(upcoming.distinct) if prefetch and upcoming is not None else None)

    def job_metrics(self, pass_id, record):
        """The line to log for a pass from its record: this process trained all of it."""
        return record

    def train_pass(self, data, ws):
        """Train one pass; its metrics. ``self.pass_scores`` keeps what metrics over several workers
        need: labels, logits (each before its batch's update), summed loss and training seconds."""
        if not len(data):  # a worker with no batch in this pass still joins its commit
            self.pass_scores = {"labels": np.zeros(0, np.int8), "logits": np.zeros(0, np.float32),
                                "loss_sum": 0.0, "seconds": 0.0}
            return {"loss": float("nan"), "auc": float("nan"), "examples": 0, "examples_per_s": 0.0}
        started = time.time()
        self.step.set_table(ws.rows)  # the HBM tier: one dense tensor on the training device
        own_keys = ws.keys is data.distinct or np.array_equal(ws.keys, data.distinct)
        local = data.local if own_keys else ws.index(data.keys)  # [n, S] int64 rows of the HBM table
        ws.count_positions(local, data.labels)  # shows / clicks for admission and shrink (no-op when off)
        scratch = np.empty(len(ws), dtype=np.int64)
        labels = data.labels.astype(np.float32).reshape(-1, 1)
        loss_sum, logits = 0.0, []
        for lo in range(0, len(data), self.batch_size):
            hi = min(lo + self.batch_size, len(data))
            distinct, inverse = batch_rows(local[lo:hi], scratch)
            loss, logit = self.step.run(distinct.astype(np.int64), inverse, data.dense[lo:hi], labels[lo:hi])
            loss_sum += loss * (hi - lo)
            logits.append(logit)
        self.step.table_into(ws.rows)
        elapsed = time.time() - started
        logits = np.concatenate(logits)
        self.pass_scores = {"labels": data.labels.astype(np.int8), "logits": logits, "loss_sum": loss_sum,
                            "seconds": elapsed}
        return {
            "loss": loss_sum / max(len(data), 1),
            "auc": roc_auc(data.labels, logits),  # progressive: before each batch's update
            "examples": int(len(data)),
            "examples_per_s": len(data) / max(elapsed, 1e-9),
        }

    def export(self, path):
        """Export the dense body (the sparse rows stay in the store: ``store_lookup``)."""
        return export_from_arrays(self.config, self.step.state()["model"], path)


PASS_SCORES = "pass_scores"  # <run_dir>/pass_scores/pass-NNNNN.w<k>.npz: worker k's scores of a pass


class DistributedTrainer(HierarchicalTrainer):
    """Worker ``worker_id`` of ``num_workers`` on the shard servers at ``endpoints`` (see the module
    docstring and ``store_service``). Worker 0 logs the metrics of the whole job and exports.

    Pass metrics cover every worker's batches: before pushing pass ``i`` each worker writes its
    labels, logits, summed loss and training seconds to ``<run_dir>/pass_scores`` (atomically);
    the servers commit pass ``i`` only after every worker pushed it, so once worker 0's commit
    returns all files are there. Worker 0 then computes loss, exact AUC and examples over all of
    them, examples/s as the job's examples over the slowest worker's training time, and
    ``workers_in_metrics``; a missing file (a run directory not shared by the workers) is logged
    as a warning and shows in that count. Scores travel as files, not RPCs, so the store protocol
    stays as it is; this needs the run directory on a filesystem all workers see (one machine or
    a shared mount). The score files and worker 0's record (its skipped lines and tier stats,
    written before its push) are the pass's record of "Metrics lines" in the module docstring:
    removed only once the line is logged, so a restarted worker 0 logs a committed pass whose
    line a crash lost from them."""

    def __init__(self, config, worker_id, num_workers, endpoints):
        super().__init__(config)
        self.worker_id, self.num_workers, self.endpoints = worker_id, num_workers, endpoints

    def dense_state(self):
        return self.step.state()

    def set_dense_state(self, state):
        self.step.set_state(state)

    def _scores_path(self, pass_id, worker):
        return self.out.path(PASS_SCORES, f"pass-{pass_id:05d}.w{worker}.npz")

    def _write_scores(self, pass_id):
        scores = self.pass_scores
        with atomic_write(self._scores_path(pass_id, self.worker_id), "wb") as handle:
            np.savez(handle, labels=scores["labels"], logits=scores["logits"],
                     loss_sum=np.float64(scores["loss_sum"]), seconds=np.float64(scores["seconds"]))

    def _drop_records(self, pass_id):
        for worker in range(self.num_workers):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._scores_path(pass_id, worker))
        super()._drop_records(pass_id)

    def _drop_scores(self, last_pass):
        """Remove score files of committed passes (left by a crash after the line was logged, or
        by workers outside ``num_workers`` of an earlier job)."""
        for path in glob.glob(self.out.path(PASS_SCORES, "pass-*.w*.npz")):
            if int(re.match(r"pass-(\d+)\.", os.path.basename(path)).group(1)) <= last_pass:
                os.remove(path)

    def job_metrics(self, pass_id, record):
        """Worker 0: the pass's line, its training metrics over every worker's scores (see the class
        docstring) and the rest of worker 0's record. The score files stay (``_drop_records``)."""
        parts, missing = [], []
        for worker in range(self.num_workers):
            path = self._scores_path(pass_id, worker)
            if not os.path.exists(path):
                missing.append(path)
                continue
            with np.load(path, allow_pickle=False) as arrays:
                parts.append({name: arrays[name] for name in arrays.files})
        if missing:
            log.warning("pass %d: no scores from %s (is the run directory shared by all workers?); the pass "
                        "metrics cover %d of %d workers", pass_id, missing, len(parts), self.num_workers)
        labels = np.concatenate([p["labels"] for p in parts] or [np.zeros(0, np.int8)])
        logits = np.concatenate([p["logits"] for p in parts] or [np.zeros(0, np.float32)])
        seconds = max([float(p["seconds"]) for p in parts], default=0.0)
        merged = {
            "loss": sum(float(p["loss_sum"]) for p in parts) / max(len(labels), 1),
            "auc": roc_auc(labels, logits) if len(labels) else float("nan"),
            "examples": int(len(labels)),
            "examples_per_s": len(labels) / max(seconds, 1e-9),
            "workers_in_metrics": len(parts),
        }
        return {**merged, **{name: value for name, value in record.items() if name not in merged}}

    def train(self):
        from paddle_suite.ads.store_service import RemoteStore

        self.build_model()
        store = RemoteStore(self.endpoints, self.worker_id, self.num_workers, self.sparse_dim,
                            max_message_mb=float(self.config["Store"]["max_message_mb"]))
        chief = self.worker_id == 0
        if chief:
            self.out.create()
        sink = self.out.metrics(chief)
        last, finished = None, False
        try:
            start = store.last_pass + 1
            if chief:
                self._recover_pass_lines(sink, store.last_pass)
                self._drop_scores(store.last_pass)
            if start:
                self.set_dense_state(store.pull_dense(store.last_pass))
                print(f"worker {self.worker_id}: resuming after pass {store.last_pass} "
                      f"(shards and dense/pass-{store.last_pass:05d})", flush=True)
            self.skipped = SkippedLines()  # every worker reads the whole stream: its count is the job's
            batches = self._pass_batches(pass_batches(self.config, training_files(self.config),
                                                      self.worker_id, self.num_workers, start, self.skipped))

            def commit(ws, pass_id, metrics):
                self._write_scores(pass_id)  # before the push: see the class docstring
                record = self._record_pass(store, ws, pass_id, metrics) if chief else None  # before it too
                self.set_dense_state(store.commit_pass(ws, pass_id, dense=self.dense_state()))
                return self._add_commit_counters(store, pass_id, record) if chief else None

            # every worker joins every commit, even with no batch in a pass
            last = self._run_passes(store, read_ahead(batches), commit, sink)
            if last is not None and chief:
                self.export(self.out.path(INFERENCE_DIR))
            finished = True
        finally:
            store.close(done=finished)
            sink.close()
        return last


def store_lookup(config):
    """``keys -> embeddings`` from the committed rows of the run's store (read-only use)."""
    arch_file = Run(config).path(INFERENCE_DIR, "arch.json")
    arch = read_json(arch_file)
    if arch is None:
        raise RunError(f"no {arch_file}: train first (the export at the end of training writes it)")
    sparse_dim = int(arch["sparse_dim"])
    store = open_store(config, sparse_dim)

    def lookup(keys):
        keys = np.asarray(keys, dtype=np.uint64)
        rows = store.read_rows(keys.reshape(-1))[:, :sparse_dim]
        return rows.reshape(*keys.shape, sparse_dim)

    lookup.store = store
    return lookup
