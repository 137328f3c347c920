"""Static-graph CTR training on Fleet's parameter server (async, geo) or as one local process.

One program serves all modes (``models.build_static_program``); only the sparse lookup and the
optimiser differ:

* ``async``: ``sparse_embedding`` on a ``MemorySparseTable`` (``SparseAccessor``; the sparse
  optimiser is the accessor's rule, ``PS.sparse_optimizer`` / ``PS.sparse_lr``), dense
  parameters on the servers' dense table with the ``Optimizer`` section's optimiser.
* ``geo``: ``embedding(is_sparse=True)`` of ``PS.local_vocab`` rows (keys taken modulo
  ``local_vocab``) + SGD; workers train locally and exchange deltas every ``PS.k_steps``.
  (docs/platform.md: geo with ``sparse_embedding`` fails, and geo with Adam touches the whole table.)
* ``local``: no Fleet, the geo program with the ``Optimizer`` section's optimiser in one process.

The role comes from the environment Fleet's launchers set (``TRAINING_ROLE`` / ``PADDLE_ROLE``);
without it the job runs locally, so one config works with and without ``fleetrun``.

Data (``DataLoader.reader``):

* ``numpy`` (default, every mode): the pass stream of ``common.pass_batches`` (a pass is
  ``DataLoader.pass_size`` examples, worker ``w`` of ``W`` trains the batches with
  ``index % W == w``) through ``Executor.run`` feeds.
* ``dataset`` (async only): Fleet's ``InMemoryDataset`` with the data module's
  ``MultiSlotDataGenerator`` as pipe command (``python -m paddle_suite.ads.data --pipe``); a pass
  is ``DataLoader.files_per_pass`` files per worker, dealt round-robin, trained with
  ``train_from_dataset``. Its C++ worker scales the pushed sparse gradients differently from the
  feed path (not traced): measured on the generator's data it needs ``PS.sparse_lr`` about 30
  where the feed path learns with 1.0. Loss is summed in-graph (``models.LOSS_SUM``); loading time
  is reported apart (``load_s``) and not counted in examples/s.

Per pass, worker 0 logs loss, AUC (global over all workers, via gloo), examples/s and (with
``DataLoader.skip_malformed`` and the numpy reader) ``skipped_lines`` through the run's metrics
sink (``engine.run.MetricsSink``: VisualDL ``pass/*`` and ``metrics.jsonl``).

Checkpoints (``<run_dir>/checkpoints/pass-NNNNN``), after every ``PS.save_every_passes`` passes:

* **base** (async; the first save and every ``PS.base_every``-th): ``fleet.save_persistables(mode=0)``:
  every sparse row with its optimiser state (``000/part-<server>-<shard>.gz``) and the dense
  tables (``001/...``), written by the servers.
* **delta** (async, in between): the sparse rows of the keys trained since the previous save
  *and the interval before it* (async pushes of that interval can land after its snapshot),
  plus the complete dense tables. Fleet's own delta modes are of no use here: with
  ``SparseAccessor`` and no show/click input, ``save_persistables(mode=1|2)`` writes every row
  (checked on paddle 2.6.2). So a delta is made from a full dump by keeping the rows of the
  keys the workers report (``touched.w<rank>.npy``); it is stored in the base's file format.
  This assumes the checkpoint directory is shared by servers and workers (true on one machine;
  on a cluster, run the filter on each server's local dump).
* **full** (local and geo): the chief's whole program state (``paddle.static.save``). Geo needs
  this because ``save_persistables`` does not write the geo sparse table; every worker loads
  it before ``init_worker`` on resume, so geo's delta baseline is the loaded table.
* ``meta.json`` (the chain: base, then deltas in order) is written last, atomically, and then
  ``latest.json``; a save interrupted before ``latest.json`` is ignored. Resume (``Global.resume:
  auto``, after all processes were killed) makes the servers load the chain in order with
  ``fleet.load_model`` (rows of later files overwrite earlier ones; rows absent from a delta keep
  the base's values) and continues with the next pass. The last few async pushes in flight at a
  base snapshot can be missing from it (async training has no consistent cut).

Export: ``common.export_body``'s body-only inference program (inputs: slot embeddings ``emb``
[n, S, sparse_dim] and ``dense``; output: click probability), saved from the
chief's scope (its dense parameters are pulled from the servers continuously in async mode), plus
the sparse part: ``SparseShards`` reads a checkpoint chain's shards and returns rows for keys.
"""
import glob
import gzip
import logging
import os
import shutil
import sys
import time

import numpy as np

import paddle_suite  # noqa: F401  (MKL flag before paddle)
import paddle

from paddle_suite.config import ConfigError
from paddle_suite.engine.run import Run, RunError, read_json, write_json
from paddle_suite.ads import models
from paddle_suite.ads.common import (INFERENCE_DIR, ONEDNN_OPS, SkippedLines, auc_from_stats, build_body,
                                     dataset_passes, export_body, log_pass, pass_batches, training_files,
                                     use_onednn)
from paddle_suite.ads.store import sorted_unique

log = logging.getLogger(__name__)

PS_MODES = ("async", "geo", "local")
_SPARSE_RULES = {"adagrad": "SparseAdaGradSGDRule", "naive": "SparseNaiveSGDRule", "adam": "SparseAdamSGDRule"}


# ------------------------------------------------------------------------------------------ roles
def fleet_role():
    """``"server"``, ``"worker"`` or None (no launcher: run as one local process)."""
    role = os.environ.get("TRAINING_ROLE") or os.environ.get("PADDLE_ROLE")
    if not role:
        return None
    return "server" if role.upper() == "PSERVER" else "worker"


# ------------------------------------------------------------------------------------------ programs
def sparse_table_config(ps_cfg):
    """``DistributedStrategy.sparse_table_configs`` for the one sparse table."""
    prefix = f"table_parameters.{models.SPARSE_TABLE}."
    rule = _SPARSE_RULES[ps_cfg["sparse_optimizer"]]
    cfg = {
        prefix + "table_class": "MemorySparseTable",
        prefix + "shard_num": int(ps_cfg["shard_num"]),
        prefix + "accessor.accessor_class": "SparseAccessor",
        prefix + "accessor.embedx_threshold": 0,
    }
    short = rule.replace("Sparse", "").replace("SGDRule", "").lower()  # adagrad | naive | adam
    for part in ("embed_sgd_param", "embedx_sgd_param"):
        cfg[f"{prefix}accessor.{part}.name"] = rule
        cfg[f"{prefix}accessor.{part}.{short}.learning_rate"] = float(ps_cfg["sparse_lr"])
        cfg[f"{prefix}accessor.{part}.{short}.initial_range"] = float(ps_cfg["init_std"])
        if short == "adagrad":
            cfg[f"{prefix}accessor.{part}.adagrad.initial_g2sum"] = float(ps_cfg["initial_g2sum"])
    return cfg


def _minimize_local(opt_cfg, optimizer, loss):
    """``optimizer.minimize(loss)``, except that with Adam (and no clipping) the dense parameters get
    one ``merged_adam`` op (``use_multi_tensor``) instead of one op each (~0.5 ms a batch of 8
    ops); the sparse table keeps its own (lazy) Adam, as the merged op cannot take a sparse gradient."""
    if opt_cfg["name"] != "Adam" or opt_cfg["grad_clip"] > 0:  # a global-norm clip spans both groups
        optimizer.minimize(loss)
        return
    from paddle_suite.engine.optim import build_optimizer

    params_grads = paddle.static.append_backward(loss)
    sparse = [pg for pg in params_grads if pg[0].name == models.SPARSE_TABLE]
    dense = [pg for pg in params_grads if pg[0].name != models.SPARSE_TABLE]
    optimizer.apply_gradients(sparse)
    build_optimizer(dict(opt_cfg, multi_tensor=True), None, 0)[0].apply_gradients(dense)


class CtrStaticProgram:
    """The built program of one mode: ``main``, ``startup``, ``vars`` (see build_static_program)."""

    def __init__(self, config, mode):
        from paddle.distributed import fleet
        from paddle_suite.engine.optim import build_optimizer

        if mode not in PS_MODES:
            raise ValueError(f"PS.mode must be one of {PS_MODES} for Fleet/local training, got '{mode}'")
        paddle.enable_static()
        ps_cfg = config["PS"]
        self.mode = mode
        self.local_vocab = int(ps_cfg["local_vocab"])
        main, startup = paddle.static.Program(), paddle.static.Program()
        main.random_seed = startup.random_seed = int(config["Global"]["seed"])
        with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
            self.body = build_body(config)
            lookup = "ps" if mode == "async" else "local"
            self.vars = models.build_static_program(
                self.body, lookup, vocab_size=self.local_vocab, init_std=float(ps_cfg["init_std"]),
                lr_scale=float(ps_cfg["geo_sparse_lr_scale"]) if mode == "geo" else 1.0,
                slot_inputs=config["DataLoader"]["reader"] == "dataset",
            )
            if mode == "geo":
                optimizer = paddle.optimizer.SGD(float(ps_cfg["geo_lr"]))
            else:
                optimizer, _ = build_optimizer(config["Optimizer"], None, 0)
            if mode == "local":
                _minimize_local(config["Optimizer"], optimizer, self.vars["loss"])
            else:
                strategy = fleet.DistributedStrategy()
                strategy.a_sync = True
                if mode == "geo":
                    strategy.a_sync_configs = {"k_steps": int(ps_cfg["k_steps"])}
                else:
                    strategy.sparse_table_configs = {models.SPARSE_TABLE: sparse_table_config(ps_cfg)}
                fleet.distributed_optimizer(optimizer, strategy).minimize(self.vars["loss"])
            # Fleet's minimize replaces the programs with transpiled clones.
            self.main = self.vars["loss"].block.program
            self.startup = paddle.static.default_startup_program()
        if mode == "local" and ps_cfg["cpu_onednn"] and config["Global"]["device"] == "cpu":
            use_onednn(self.main, ONEDNN_OPS)

    def feed(self, batch):
        """Feed dict of a ``CtrBatch`` (uint64 keys keep their bits as int64 on the PS)."""
        feed = {
            "label": batch.labels.reshape(-1, 1).astype(np.int64),
            "dense": np.ascontiguousarray(batch.dense, dtype=np.float32),
        }
        if self.mode == "async":
            feed["keys"] = batch.sparse.view(np.int64).reshape(len(batch), -1, 1)
        else:  # bounded local table: fold the 64-bit key space; feed distinct rows + positions
            unique, index = np.unique((batch.sparse % np.uint64(self.local_vocab)).astype(np.int64),
                                      return_inverse=True)
            feed["keys_unique"] = unique.reshape(-1, 1, 1)
            feed["key_index"] = index.reshape(-1)
        return feed



# ------------------------------------------------------------------------------------------ data
def pipe_command(config, status_dir=None):
    """Shell command the dataset runs on each file: our generator, any CTR format -> MultiSlot.
    ``status_dir``: where each run of the pipe records its file's rows / skipped lines / error."""
    import shlex

    dl = config["DataLoader"]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    command = [sys.executable, "-m", "paddle_suite.ads.data", "--pipe", "--fmt", dl["format"],
               "--hash-seed", str(dl["hash_seed"])]
    if dl["skip_malformed"]:
        command.append("--skip-malformed")
    if status_dir:
        command += ["--status-dir", status_dir]
    return f"PYTHONPATH={shlex.quote(repo)}${{PYTHONPATH:+:$PYTHONPATH}} " + " ".join(shlex.quote(c) for c in command)


# ------------------------------------------------------------------------------------------ checkpoints
LATEST = "latest.json"  # the meta of the newest complete checkpoint, in <run_dir>/checkpoints


def latest_checkpoint(checkpoints_dir):
    """The meta dict of the newest complete checkpoint in a run's ``checkpoints_dir``, or None."""
    return read_json(os.path.join(checkpoints_dir, LATEST))


# ------------------------------------------------------------------------------------------ training
class PSTrainer:
    """Runs this process's role: PS server, PS worker, or the local single process."""

    def __init__(self, config):
        self.config = config
        self.out = Run(config)
        self.run_dir = self.out.dir
        self.role = fleet_role()
        mode = config["PS"]["mode"]
        if self.role is None and mode != "local":
            log.info("no Fleet role in the environment: running PS.mode=%s as one local process", mode)
            mode = "local"
        if self.role is not None and mode == "local":
            raise ConfigError("PS.mode=local cannot run under a Fleet launcher; use PS.mode=async or geo")
        if config["DataLoader"]["reader"] == "dataset" and mode != "async":
            raise ConfigError(
                f"DataLoader.reader=dataset needs PS.mode=async (got {mode}, "
                f"{'no Fleet launcher' if self.role is None else 'geo'}): local and geo tables fold keys "
                "modulo PS.local_vocab in Python; use DataLoader.reader=numpy"
            )
        self.mode = mode

    # -- entry
    def run(self):
        from paddle.distributed import fleet

        paddle.enable_static()  # before fleet.init, which otherwise starts a collective env
        if self.role is not None:
            if os.environ.get("PADDLE_WITH_GLOO") not in ("1", "2"):
                # fleetrun passes PADDLE_WITH_GLOO=0 unless the user exported it; without gloo,
                # barriers and all_reduce are no-ops and workers may read uninitialised dense
                # parameters (docs/platform.md). fleetrun also sets the rendezvous variables gloo needs.
                os.environ["PADDLE_WITH_GLOO"] = "1"
            fleet.init()
        self.program = CtrStaticProgram(self.config, self.mode)
        if self.role == "server":
            resume = self._resume_meta()
            fleet.init_server()
            log.info("server %d ready (resume from %s)", fleet.server_index(), resume and resume["pass"])
            fleet.run_server()
            return None
        return self._run_trainer(fleet)

    def _resume_meta(self):
        choice = self.config["Global"]["resume"]
        if choice == "none":
            return None
        if choice == "auto":
            return latest_checkpoint(self.out.checkpoints_dir)
        meta = read_json(os.path.join(choice, "meta.json"))  # a pass-NNNNN directory
        if meta is None:
            raise RunError(f"Global.resume={choice}: no meta.json there; give a checkpoint directory "
                           f"{self.out.checkpoints_dir}/pass-NNNNN, 'auto' or 'none'")
        return meta

    def _run_trainer(self, fleet):
        distributed = self.role is not None
        rank = fleet.worker_index() if distributed else 0
        world = fleet.worker_num() if distributed else 1
        self.is_chief = rank == 0
        if self.is_chief:
            self.out.create()
        else:
            os.makedirs(self.run_dir, exist_ok=True)
        exe = paddle.static.Executor(paddle.CPUPlace())
        self.exe = exe
        exe.run(self.program.startup)
        resume = self._resume_meta()
        if resume is not None:
            self._check_resume(resume)
        if resume is not None and resume["kind"] == "full":
            # local / geo: every worker loads the chief's saved program state before init_worker,
            # so geo's delta baseline is the loaded table, not the random init
            path = os.path.join(self.out.checkpoints_dir, resume["chain"][-1], "model")
            paddle.static.load(self.program.main, path, exe)
        self.pull_dense = None
        if distributed:
            fleet.init_worker()
            if self.mode == "async":
                self.pull_dense = dense_puller(fleet)
        start_pass = 0
        if resume is not None:
            if resume["kind"] != "full":
                self._load_ps_chain(fleet, resume)
            if self.is_chief:
                print(f"resumed from {resume['chain'][-1]} (pass {resume['pass']})", flush=True)
            start_pass = resume["pass"] + 1
        sink = self.out.metrics(self.is_chief)
        skipped = SkippedLines()
        self.worker_skipped_lines = 0  # reader=dataset: lines this worker's pipes skipped so far
        self.touched = []  # distinct keys trained per pass since the save before the last one
        files = training_files(self.config)
        v = self.program.vars
        scope = paddle.static.global_scope()
        max_passes = int(self.config["PS"]["max_passes"])
        last = None
        use_dataset = self.config["DataLoader"]["reader"] == "dataset"
        passes = (dataset_passes(self.config, files, rank, world, start_pass) if use_dataset
                  else pass_batches(self.config, files, rank, world, start_pass, skipped))
        count_skipped = self.config["DataLoader"]["skip_malformed"] and not use_dataset
        for pass_id, part in passes:
            if max_passes and pass_id >= max_passes:
                break
            models.reset_pass_metrics(scope, v["auc_states"])
            started = time.time()
            load_seconds = 0.0
            if use_dataset:
                seen, load_seconds = self._train_dataset_pass(part)
                loss_sum = float(np.array(scope.find_var(models.LOSS_SUM).get_tensor()).reshape(-1)[0])
                self.touched = None  # keys not seen by Python: every checkpoint is a base
            else:
                loss_sum, seen, keys = self._train_numpy_pass(part, v)
                self.touched.append(keys)
            elapsed = time.time() - started - load_seconds  # training time; dataset loading is reported apart
            metrics = self._pass_metrics(fleet, distributed, scope, loss_sum, seen, elapsed)
            if use_dataset:
                metrics["load_s"] = load_seconds
                if self.config["DataLoader"]["skip_malformed"]:  # each worker reads its own files
                    metrics["skipped_lines_this_worker"] = self.worker_skipped_lines
            if count_skipped:  # every worker reads the whole stream: its count is the job's
                metrics["skipped_lines"] = skipped.through_pass[pass_id]
            log_pass(sink, pass_id, metrics)
            last = {"pass": pass_id, **metrics}
            every = max(1, int(self.config["PS"]["save_every_passes"]))
            if (pass_id + 1) % every == 0:
                self.save_checkpoint(fleet, pass_id, distributed)
        if last is not None and self.is_chief:
            self.export_dense(self.out.path(INFERENCE_DIR))
        if distributed:
            fleet.util.barrier()
            fleet.stop_worker()
        sink.close()
        return last

    def _train_numpy_pass(self, batches, v):
        loss_sum, seen, pass_keys = 0.0, 0, []
        for batch in batches:
            pass_keys.append(sorted_unique(batch.sparse))  # (np.unique hashes: ~1.3 ms a batch)
            if self.pull_dense is not None:
                self.pull_dense()  # the servers' current dense parameters (see dense_puller)
            (loss,) = self.exe.run(self.program.main, feed=self.program.feed(batch), fetch_list=[v["loss"]])
            loss_sum += float(np.asarray(loss).reshape(-1)[0]) * len(batch)
            seen += len(batch)
        keys = sorted_unique(np.concatenate(pass_keys)) if pass_keys else np.zeros(0, np.uint64)
        return loss_sum, seen, keys

    def _train_dataset_pass(self, files):
        """One pass through Fleet's InMemoryDataset fed by the data module's generator (pipe)."""
        if not files:  # this worker has no file in the pass; it still joins the pass's barriers
            return 0, 0.0
        from paddle_suite.ads.data import collect_pipe_status

        dl = self.config["DataLoader"]
        # paddle ignores the pipe's exit status: its status records make a bad file fail the job
        status_dir = self.out.path("pipe_status", f"pid-{os.getpid()}")
        dataset = paddle.distributed.InMemoryDataset()
        dataset.init(batch_size=int(dl["batch_size"]), thread_num=int(dl["dataset_threads"]),
                     use_var=self.program.vars["use_vars"], pipe_command=pipe_command(self.config, status_dir))
        dataset.set_filelist(files)
        started = time.time()
        dataset.load_into_memory()
        self.worker_skipped_lines += collect_pipe_status(status_dir, files)["skipped"]
        load_seconds = time.time() - started
        seen = int(dataset.get_memory_data_size())
        # train_from_dataset always writes <id>_train_desc.prototxt into the working directory
        previous = os.getcwd()
        os.chdir(self.run_dir)
        try:
            self.exe.train_from_dataset(program=self.program.main, dataset=dataset, debug=False)
        finally:
            os.chdir(previous)
        dataset.release_memory()
        return seen, load_seconds

    def _pass_metrics(self, fleet, distributed, scope, loss_sum, seen, elapsed):
        stat_pos, stat_neg = (np.array(scope.find_var(s.name).get_tensor()) for s in self.program.vars["auc_states"][:2])
        if distributed:
            from paddle.distributed.fleet import metrics as fleet_metrics

            auc = fleet_metrics.auc(stat_pos, stat_neg)
            totals = fleet.util.all_reduce(np.array([loss_sum, seen, elapsed]), "sum")
            worlds = fleet.worker_num()
            loss_sum, seen, elapsed = totals[0], totals[1], totals[2] / worlds  # mean wall time
        else:
            auc = auc_from_stats(stat_pos, stat_neg)
        return {
            "loss": float(loss_sum / max(seen, 1)),
            "auc": float(auc),
            "examples": int(seen),
            "examples_per_s": float(seen / max(elapsed, 1e-9)),
        }

    # -- save / load
    def save_checkpoint(self, fleet, pass_id, distributed):
        root = self.out.checkpoints_dir
        target = os.path.join(root, f"pass-{pass_id:05d}")
        previous = latest_checkpoint(self.out.checkpoints_dir) if self.is_chief else None
        base_every = max(1, int(self.config["PS"]["base_every"]))
        if not distributed or self.mode == "geo":
            # geo: fleet.save_persistables does not write the geo sparse table, so the chief's
            # local program state (table + dense, synchronised every k_steps) is the checkpoint
            kind = "full"
        elif (self.touched is None or previous is None or previous.get("kind") == "full"
              or len(previous["chain"]) >= base_every):
            kind = "base"
        else:
            kind = "delta"
        if kind == "full":
            if self.is_chief:
                shutil.rmtree(target, ignore_errors=True)
                paddle.static.save(self.program.main, os.path.join(target, "model"))
        else:
            kind = _broadcast_kind(fleet, kind)  # only the chief knows the chain
            if self.is_chief:
                shutil.rmtree(target, ignore_errors=True)
                os.makedirs(target)
            fleet.util.barrier()
            # keys of this interval and the one before: async pushes of the previous interval
            # may have landed after the previous snapshot
            if self.touched is not None:
                touched = sorted_unique(np.concatenate(self.touched)) if self.touched else np.zeros(0, np.uint64)
                np.save(os.path.join(target, f"touched.w{fleet.worker_index()}.npy"), touched)
                self.touched = self.touched[-1:]
            dump = target if kind == "base" else os.path.join(target, ".full")
            fleet.save_persistables(self.exe, dump, mode=0)  # barriers inside; the chief asks the servers
            if kind == "delta" and self.is_chief:
                touched_files = glob.glob(os.path.join(target, "touched.w*.npy"))
                keys = sorted_unique(np.concatenate([np.load(f) for f in touched_files]))
                write_delta(dump, target, keys)
                shutil.rmtree(dump)
        if not self.is_chief:
            return
        name = os.path.basename(target)  # chains hold names relative to checkpoints/
        chain = [name] if kind in ("base", "full") else previous["chain"] + [name]
        meta = {"pass": pass_id, "kind": kind, "chain": chain, "mode": self.mode,
                "sparse_dim": self.program.body.sparse_dim, "sparse_optimizer": self.config["PS"]["sparse_optimizer"]}
        write_json(os.path.join(target, "meta.json"), meta)
        write_json(os.path.join(root, LATEST), meta)
        self._prune(root, chain)

    def _prune(self, root, chain):
        """Keep the newest chain plus the chains of ``Global.keep_checkpoints - 1`` older bases."""
        keep = max(1, int(self.config["Global"]["keep_checkpoints"]))
        metas = {}
        for meta_path in sorted(glob.glob(os.path.join(root, "pass-*", "meta.json"))):
            metas[os.path.dirname(meta_path)] = read_json(meta_path)
        bases = [m["chain"][0] for m in metas.values() if m["kind"] in ("base", "full")]
        keep_bases = set(bases[-keep:]) | {chain[0]}
        for directory, meta in metas.items():
            if meta["chain"][0] not in keep_bases:
                shutil.rmtree(directory, ignore_errors=True)

    def _check_resume(self, meta):
        if meta.get("mode", self.mode) != self.mode:
            raise ConfigError(
                f"checkpoint {meta['chain'][-1]} was written in PS.mode={meta['mode']}, this run is "
                f"PS.mode={self.mode}; set Global.resume=none or use a new Global.run_name"
            )

    def _load_ps_chain(self, fleet, meta):
        """Async PS: the servers load the base, then each delta (rows in later files win)."""
        root = self.out.checkpoints_dir
        for name in meta["chain"]:
            fleet.load_model(os.path.join(root, name), mode=0)  # the chief asks every server
        fleet.util.barrier()

    def export_dense(self, path):
        """Save the body-only inference program (emb, dense) -> prob with the current dense params."""
        return export_body(self.config, self.exe, paddle.static.global_scope(), path)


def dense_puller(fleet):
    """``pull()`` copying the servers' dense parameters into this worker's scope (async PS, feeds).

    In paddle 2.6.2 an async worker's program pushes dense gradients to the servers, but nothing
    pulls the updated parameters back when batches go through ``Executor.run``: ``init_worker``
    pulls once, and the communicator (whose receive thread would pull) is started only in geo and
    heter modes (``the_one_ps.TheOnePSRuntime._init_worker``). Without this the worker's MLP stayed
    at its initial values for the whole run (checked: the exported body equalled the
    initialisation exactly while the server's dense table and its Adam moments had moved) and only
    the sparse rows learned. The ``train_from_dataset`` path is left as it was (not checked here).
    """
    from paddle.distributed.ps.utils.public import get_the_one_recv_context

    runtime = fleet.init_worker.__self__._runtime_handle  # the module's functions are bound to its Fleet
    recv_map = get_the_one_recv_context(runtime.context, split_dense_table=runtime.is_heter_ps_mode)

    def pull():
        runtime._pull_all_dense(runtime.scopes, runtime._send_ctx, recv_map)

    return pull


def _broadcast_kind(fleet, kind):
    code = np.array([1.0 if kind == "base" else 0.0])
    if fleet.worker_index() != 0:
        code[:] = 0.0
    return "base" if fleet.util.all_reduce(code, "sum")[0] > 0.5 else "delta"



# ------------------------------------------------------------------------------------------ sparse shards
SPARSE_TABLE_DIR = "000"  # table id 0: the one sparse table (dense tables follow it)
_HEADER_COLS = 5  # SparseAccessor rows: slot, unseen_days, delta_score, show, click, then the values


def _read_shard(path):
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw


def _parse_rows(raw):
    """Shard text -> (keys uint64 [n], values float32 [n, cols]); cols checked to be uniform."""
    lines = raw.split(b"\n")
    lines = [line for line in lines if line]
    if not lines:
        return np.zeros(0, np.uint64), np.zeros((0, 0), np.float32)
    tokens = b" ".join(lines).split()
    cols = len(lines[0].split())
    if len(tokens) != cols * len(lines):
        raise ValueError(f"sparse shard rows have differing column counts (first row has {cols})")
    table = np.array(tokens, dtype=object).reshape(len(lines), cols)
    keys = table[:, 0].astype(np.uint64)
    values = table[:, 1:].astype(np.float32)
    return keys, values


def _line_keys(buf):
    """Vectorised parse of a shard buffer (uint8): line byte ranges and the leading uint64 keys."""
    ends = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)[: ends.size]  # an empty shard has no line
    spaces = np.flatnonzero(buf == 32)
    key_end = spaces[np.searchsorted(spaces, starts)]
    length = key_end - starts
    keys = np.zeros(starts.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(length.max()) if length.size else 0):  # <= 20 digit positions
            active = j < length
            digit = buf[np.minimum(starts + j, buf.size - 1)].astype(np.uint64) - np.uint64(48)
            keys = np.where(active, keys * np.uint64(10) + digit, keys)
    return starts, ends, keys


def write_delta(full_dir, delta_dir, keys):
    """Copy ``full_dir`` to ``delta_dir`` keeping only the sparse rows whose key is in ``keys``."""
    keys = np.unique(np.asarray(keys, dtype=np.uint64))  # sorted once; membership by binary search
    for table in sorted(os.listdir(full_dir)):
        src, dst = os.path.join(full_dir, table), os.path.join(delta_dir, table)
        if table != SPARSE_TABLE_DIR:
            (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)
            continue
        os.makedirs(dst, exist_ok=True)
        for shard in sorted(os.listdir(src)):
            raw = _read_shard(os.path.join(src, shard))
            if raw and not raw.endswith(b"\n"):
                raw += b"\n"
            buf = np.frombuffer(raw, dtype=np.uint8)
            starts, ends, line_keys = _line_keys(buf)
            pos = np.minimum(np.searchsorted(keys, line_keys), max(keys.size - 1, 0))
            keep = keys[pos] == line_keys if keys.size else np.zeros(line_keys.size, dtype=bool)
            # byte mask of the kept lines (newline included), via +1/-1 marks and a running sum
            marks = np.zeros(buf.size + 1, dtype=np.int8)
            np.add.at(marks, starts[keep], 1)
            np.add.at(marks, ends[keep] + 1, -1)
            text = buf[np.cumsum(marks[:-1], dtype=np.int8).astype(bool)].tobytes()
            with open(os.path.join(dst, shard), "wb") as handle:
                handle.write(gzip.compress(text, compresslevel=3) if shard.endswith(".gz") else text)


class SparseShards:
    """The sparse table of a checkpoint chain (base + deltas), looked up by key.

    >>> table = SparseShards("output/run/checkpoints")          # latest.json's chain
    >>> rows, found = table.lookup(keys)                         # [n, sparse_dim] float32, [n] bool

    Rows are the embedding values (``embed_w`` then ``embedx_w``), without optimiser state;
    keys never trained get zeros (``found`` False), as a PS pull would give a near-zero new row.
    """

    def __init__(self, checkpoints_dir, meta=None):
        meta = meta or read_json(os.path.join(checkpoints_dir, LATEST))
        if meta is None:
            raise RunError(f"no checkpoint in {checkpoints_dir} ({LATEST} missing): train first")
        self.sparse_dim = int(meta["sparse_dim"])
        state = {"adagrad": 1, "naive": 0}.get(meta["sparse_optimizer"])
        if state is None:
            raise ValueError(f"sparse lookup supports adagrad/naive sparse rules, not {meta['sparse_optimizer']}")
        embedx = _HEADER_COLS + 1 + state  # value column of the first embedx weight (key excluded)
        all_keys, all_rows = [], []
        for name in meta["chain"]:  # later checkpoints override earlier rows
            directory = os.path.join(checkpoints_dir, name, SPARSE_TABLE_DIR)
            for shard in sorted(glob.glob(os.path.join(directory, "part-*"))):
                keys, values = _parse_rows(_read_shard(shard))
                if not len(keys):
                    continue
                expected = embedx + self.sparse_dim - 1 + state
                if values.shape[1] != expected:
                    raise ValueError(f"{shard}: {values.shape[1]} value columns, expected {expected} "
                                     f"for sparse_dim={self.sparse_dim} with the {meta['sparse_optimizer']} rule")
                emb = np.concatenate(
                    [values[:, _HEADER_COLS: _HEADER_COLS + 1], values[:, embedx: embedx + self.sparse_dim - 1]], axis=1
                )
                all_keys.append(keys)
                all_rows.append(emb)
        keys = np.concatenate(all_keys) if all_keys else np.zeros(0, np.uint64)
        rows = np.concatenate(all_rows) if all_rows else np.zeros((0, self.sparse_dim), np.float32)
        # keep the last occurrence of every key (chain order)
        order = np.arange(len(keys))[::-1]
        self.keys, first = np.unique(keys[order], return_index=True)
        self.rows = rows[order[first]]

    def __len__(self):
        return len(self.keys)

    def lookup(self, keys):
        keys = np.asarray(keys, dtype=np.uint64)
        pos = np.searchsorted(self.keys, keys.reshape(-1))
        pos = np.minimum(pos, max(len(self.keys) - 1, 0))
        found = self.keys[pos] == keys.reshape(-1) if len(self.keys) else np.zeros(keys.size, bool)
        rows = np.where(found[:, None], self.rows[pos] if len(self.keys) else 0.0, 0.0).astype(np.float32)
        return rows.reshape(*keys.shape, self.sparse_dim), found.reshape(keys.shape)


# ------------------------------------------------------------------------------------------ lookup / export
def checkpoint_lookup(run):
    """``keys (n, S) uint64 -> emb (n, S, sparse_dim)`` from the run's newest checkpoint: the
    chief's table (local / geo, keys modulo its rows) or the PS shards of the chain (async)."""
    meta = latest_checkpoint(run.checkpoints_dir)
    if meta is None:
        raise RunError(f"no checkpoint in {run.checkpoints_dir}: train first")
    if meta["kind"] == "full" or meta["mode"] in ("local", "geo"):
        state = paddle.load(os.path.join(run.checkpoints_dir, meta["chain"][-1], "model.pdparams"))
        table = np.asarray(state[models.SPARSE_TABLE])
        vocab = np.uint64(table.shape[0])
        return lambda keys: table[(np.asarray(keys, np.uint64) % vocab).astype(np.int64)]
    shards = SparseShards(run.checkpoints_dir, meta)
    return lambda keys: shards.lookup(keys)[0]


def local_session(config):
    """The ``local`` static program with a CPU executor and a fresh scope (startup not yet run)."""
    paddle.enable_static()
    return CtrStaticProgram(config, "local"), paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()


def export_checkpoint(config, meta, path):
    """Export the body from a local-mode checkpoint (``meta`` of ``latest_checkpoint``) to ``path``."""
    program, exe, scope = local_session(config)
    with paddle.static.scope_guard(scope):
        exe.run(program.startup)
        paddle.static.load(program.main, os.path.join(Run(config).checkpoints_dir, meta["chain"][-1], "model"), exe)
    return export_body(config, exe, scope, path)
