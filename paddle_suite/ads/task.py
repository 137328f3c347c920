"""The ``ctr`` task: CTR models trained on Fleet's parameter server, locally, or pass by pass on
the hierarchical HBM/MEM/SSD store. ``PS.mode`` selects the workflow, and this module is where
that choice is made (train, evaluate, export, sparse lookup); the trainers share ``common``:

* ``async`` / ``geo``: Fleet parameter server (``fleetrun --server_num=S --worker_num=W
  tools/train.py -c configs/ctr_dnn_ps.yaml`` or ``python -m paddle_suite.ads.launcher ...``);
  started without a launcher, the same config runs as one local process (``local``).
* ``local``: one process, static graph, bounded embedding table (keys modulo ``PS.local_vocab``).
* ``hierarchical``: the paper's pass workflow (``hierarchical_train``); one process, or under
  ``fleetrun --server_num=S --worker_num=W`` / our launcher: S shard servers (MEM/SSD by key hash)
  and W workers (HBM working sets), see ``store_service``.

``evaluate`` scores ``DataLoader.test_files`` with the exported dense body plus the sparse rows
of the newest checkpoint (PS shards or the hierarchical store); ``export`` writes that body.

Training is counted in passes (``PS.max_passes``, ``PS.save_every_passes``), there is no
validation during training, and the static programs run in float32, so the dense trainer's
``Global.max_steps``, ``eval_every``, ``save_every``, ``early_stop_patience``, ``test_split`` and
``amp`` mean nothing here: a config that sets one of them stops with an error saying so.
"""
import os
import shutil

from paddle_suite.ads import models  # noqa: F401  (registers the CtrDNN / DeepFM architectures)
from paddle_suite.config import CORE_SCHEMA, ConfigError, Field
from paddle_suite.engine.run import Run, RunError
from paddle_suite.registry import TASKS
from paddle_suite.task import Task


@TASKS.register("ctr")
class CtrTask(Task):
    schema = {
        "DataLoader": {
            "train_files": Field([], (list, str), help="files or globs (Criteo TSV/CSV or slot text)"),
            "test_files": Field([], (list, str), help="held-out files for evaluate"),
            "format": Field("auto", str, choices=("auto", "criteo_tsv", "criteo_csv", "slot")),
            "batch_size": 512,
            "pass_size": Field(100000, int, help="examples per pass (checkpoint / metrics unit)"),
            "skip_malformed": Field(False, bool, help="count and skip malformed lines instead of failing"),
            "hash_seed": 0,
            "reader": Field("numpy", str, choices=("numpy", "dataset"),
                            help="numpy: our reader + Executor.run feeds; dataset: Fleet InMemoryDataset (async)"),
            "files_per_pass": Field(1, int, help="reader=dataset: files per worker in one pass"),
            "dataset_threads": Field(1, int, help="reader=dataset: InMemoryDataset threads"),
        },
        "PS": {
            "mode": Field("async", str, choices=("async", "geo", "local", "hierarchical")),
            "server_num": Field(1, int, help="servers for python -m paddle_suite.ads.launcher"),
            "worker_num": Field(1, int, help="workers for python -m paddle_suite.ads.launcher"),
            "k_steps": Field(100, int, help="geo: local steps between delta exchanges"),
            "geo_lr": Field(0.05, float, help="geo: SGD learning rate (all parameters)"),
            "geo_sparse_lr_scale": Field(1000.0, float, help="geo: learning-rate multiplier of the sparse table"),
            "local_vocab": Field(1 << 20, int, help="local/geo: rows of the bounded table (keys modulo)"),
            "sparse_optimizer": Field("adagrad", str, choices=("adagrad", "naive", "adam")),
            "sparse_lr": Field(0.05, float, help="learning rate of sparse rows (PS accessor / hierarchical)"),
            "initial_g2sum": Field(3.0, float, help="Adagrad: initial squared-gradient sum of a row"),
            "init_std": Field(0.01, float, help="initial scale of new sparse rows"),
            "shard_num": Field(64, int, help="MemorySparseTable shards per server"),
            "cpu_onednn": Field(True, bool, help="local / hierarchical modes on CPU: matmul / relu on oneDNN"),
            "save_every_passes": Field(1, int, help="checkpoint every N passes"),
            "base_every": Field(4, int, help="a base checkpoint every N saves, deltas in between"),
            "max_passes": Field(0, int, help="stop after this many passes (0 = all data)"),
        },
        "Store": {
            "path": Field(None, str, help="store directory (default <run_dir>/store)"),
            "mem_cap_mb": Field(256.0, float, help="MEM tier capacity"),
            "prefetch": Field(True, bool, help="load pass i+1's working set while pass i trains"),
            "num_shards": Field(1, int, help="hierarchical, one process: key-hash shards (ShardedStore); "
                                "under a PS launcher the shards are the servers"),
            "max_message_mb": Field(256.0, float, help="hierarchical PS: largest array payload of one store call "
                                    "(a shard's rows of a pass); raise it for bigger passes"),
            "admit_threshold": Field(0.0, float, help="a new key gets a trainable row once its show/click score "
                                     "reaches this (0: every key at once); see paddle_suite/ads/store.py"),
            "nonclk_coeff": Field(1.0, float, help="score = nonclk_coeff * (show - click) + click_coeff * click"),
            "click_coeff": Field(1.0, float, help="see nonclk_coeff"),
            "show_click_decay_rate": Field(0.98, float, help="shows and clicks decay by this per pass"),
            "shrink_every_passes": Field(0, int, help="shrink after every N passes (0: never)"),
            "delete_threshold": Field(0.0, float, help="shrink: remove keys whose decayed score is below this"),
            "delete_after_unseen_passes": Field(None, int, help="shrink: remove keys unseen for more than this "
                                                "many passes (null: no such rule)"),
            "background_nice": Field(10, int, help="nice steps (0-19) of the store's prefetch / write threads below "
                                     "the training thread, so training keeps its core"),
        },
    }

    def __init__(self, config):
        super().__init__(config)
        check_unused_global_keys(config)

    def train(self, args):
        mode = self.config["PS"]["mode"]
        if mode == "hierarchical":
            from paddle_suite.ads.hierarchical_train import run

            return run(self.config)  # one process, or a shard server / worker under a PS launcher
        from paddle_suite.ads.fleet_ps import PSTrainer

        return PSTrainer(self.config).run()

    def evaluate(self, args):
        return evaluate_run(self.config)

    def export(self, args):
        return export_run(self.config, getattr(args, "output", None))


#: core Global keys of the dense trainer that the ctr trainers do not read, and what to use instead
UNUSED_GLOBAL_KEYS = {
    "max_steps": "use PS.max_passes",
    "eval_every": "evaluate with tools/eval.py after training: there is no validation during training",
    "save_every": "use PS.save_every_passes",
    "early_stop_patience": "use PS.max_passes: there is no validation during training",
    "test_split": "use DataLoader.test_files with tools/eval.py",
    "amp": "the CTR programs run in float32",
}


def check_unused_global_keys(config):
    """Refuse a non-default value of a Global key the ctr task never reads (rather than ignore it)."""
    for key, instead in UNUSED_GLOBAL_KEYS.items():
        default = CORE_SCHEMA["Global"][key].default
        if config["Global"][key] != default:
            raise ConfigError(f"Global.{key}={config['Global'][key]!r} is not used by Global.task: ctr; remove it "
                              f"from {config.get('_source', 'the config')} or its -o override ({instead})")


def sparse_lookup_for(config):
    """``keys (n, S) uint64 -> emb (n, S, sparse_dim)`` from the run's newest checkpoint (the
    hierarchical store's committed rows, or a Fleet / local checkpoint)."""
    if config["PS"]["mode"] == "hierarchical":
        from paddle_suite.ads.hierarchical_train import store_lookup

        return store_lookup(config)
    from paddle_suite.ads.fleet_ps import checkpoint_lookup

    return checkpoint_lookup(Run(config))


def trained_mode(config):
    """The mode the run trained in: async / geo configs run locally without a launcher."""
    if config["PS"]["mode"] == "hierarchical":
        return "hierarchical"
    from paddle_suite.ads.fleet_ps import latest_checkpoint

    latest = latest_checkpoint(Run(config).checkpoints_dir)
    return latest["mode"] if latest is not None else config["PS"]["mode"]


def evaluate_run(config):
    """AUC / log loss of ``DataLoader.test_files`` with the run's export + its sparse rows."""
    from paddle_suite.ads.common import evaluate_exported, exported_body, held_out_files

    held_out_files(config)  # a clear error before any model is loaded
    body = exported_body(config)
    lookup = sparse_lookup_for(config)
    try:
        result = evaluate_exported(config, body, lookup)
    finally:
        if getattr(lookup, "store", None) is not None:  # hierarchical: the store holds a lock
            lookup.store.close()
    return {**result, "mode": trained_mode(config)}


def export_run(config, output=None):
    """The export is written at the end of training; this re-exports it from the newest local-mode
    checkpoint, or copies the trained export to ``output``."""
    from paddle_suite.ads.common import INFERENCE_DIR

    run = Run(config)
    trained = run.path(INFERENCE_DIR)
    path = output or trained
    if config["PS"]["mode"] != "hierarchical":
        from paddle_suite.ads.fleet_ps import export_checkpoint, latest_checkpoint

        meta = latest_checkpoint(run.checkpoints_dir)
        if meta is not None and meta["mode"] == "local":
            return export_checkpoint(config, meta, path)
    if not os.path.isdir(trained):
        raise RunError(f"no export in {trained}: train first (PS and hierarchical jobs export at the end of training)")
    if output:
        shutil.copytree(trained, output, dirs_exist_ok=True)
    return path
