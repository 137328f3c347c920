"""Training throughput of our CTR DNN (single process, and the hierarchical pass mode) vs a PyTorch
EmbeddingBag DNN of the same shape, on the same generated data, in one invocation.

Data: ``paddle_suite.ads.generator`` (power-law keys, planted model), read once with our reader
(``paddle_suite.ads.data``); every side trains one epoch over the same in-memory batches in the
same order and is then scored on the same held-out rows (AUC, to show each side learns).

Sides (``configs/ctr_dnn_ps.yaml``'s network: 26 slots x ``emb_dim`` + 13 dense -> MLP
``hidden_sizes`` -> 1; batch ``DataLoader.batch_size``):

* ``ours_static``: the local mode of ``fleet_ps`` (static program, ``embedding(is_sparse=True)``
  over keys modulo ``PS.local_vocab``, Adam with ``lazy_mode`` - only the batch's rows update),
  one ``Executor.run`` per batch. Each batch's distinct keys are looked up once and gathered per
  (example, slot) (``models.build_static_program``): on this data a batch of 512 x 26 keys has
  ~7,400 distinct ones, and paddle's sparse-gradient merge and lazy Adam cost per row. The MLP's
  matmul / relu ops run on oneDNN kernels (``PS.cpu_onednn``), the dense parameters share one
  ``merged_adam`` op, and the unused duplicate batch-AUC op of ``paddle.static.auc`` is dropped.
  (Measurements that led here: ``bench/ctr_speed_history.md``.)
* ``ours_hierarchical``: ``hierarchical_train``'s own pass pipeline (``train_passes``): pass data
  built one pass ahead in a background thread, working sets loaded (store on local disk, MEM tier
  capped at ``--mem-cap-mb``) and prefetched, one static-program run per batch (``PassStep``:
  dense indexing into the HBM table, Adam for the dense part + row-wise Adagrad, oneDNN matmul /
  relu), dense checkpoint + ``commit_pass`` per pass. No key folding: full 64-bit keys. The clock
  runs from building pass 0's data until the last commit's background work (MEM update, SSD-table
  writes) has finished (``store.read_rows([])`` waits for it), i.e. everything the run wrote is
  done.
  (Measurements that led here: ``bench/ctr_speed_history.md``.)
* ``torch``: ``nn.EmbeddingBag(local_vocab, emb_dim, mode="sum", sparse=True)`` with one bag per
  (example, slot), the same MLP, ``SparseAdam`` for the table and ``Adam`` for the dense part
  (the same lazy-Adam semantics as ``ours_static``), keys modulo the same ``local_vocab``: the
  peer of ``ours_static`` (``speedup_vs_torch``).
* ``torch_pass``: the peer of ``ours_hierarchical`` (``hierarchical_speedup_vs_torch``), equal
  work: the same passes built by the same ``read_ahead`` / ``PassData`` code (sort + rank of the
  pass's keys in one background thread, inside the clock), every 64-bit key mapped to its own row
  (``TorchKeyTable``: sorted key array + ``searchsorted`` per pass, new rows initialised, inside
  the clock; no folding), the same per-batch ``batch_rows`` remap, the same sparse rule
  (``G += g*g; w -= lr * g * sqrt(g0 / (g0 + G))`` per element, ``g`` = gradient of the summed
  batch loss, lr ``HIER_SPARSE_LR`` = 0.05 as ``configs/ctr_hierarchical.yaml``, ``g0 =
  PS.initial_g2sum``), the same dense ``Adam``, the same pass metrics (every batch's loss and
  logits fetched; the pass's mean loss and progressive AUC, as ``train_pass`` computes them),
  the working set written back after each pass.
  It keeps the table in RAM (no MEM cap, no disk, no durability), so it does less than ours.

Threads: paddle sets ``OMP_NUM_THREADS=1`` on import and ``torch.set_num_threads(1)`` matches it
(one compute thread each; recorded in the results). Both pass sides also run one pass-reader
thread; ours additionally the store's prefetch / MEM-apply / SSD-write threads (its disk tier), which run
``Store.background_nice`` (10) nice steps below the training thread.
MKL: this bench does not set ``MKL_DEBUG_CPU_TYPE``; ``paddle_suite`` sets it to 5 only on AMD
CPUs (on an AVX-512 Intel CPU it would force AVX2 code); the value in force is recorded.
Examples/s = training examples / wall time of the epoch (the first ``--warmup`` batches excluded
for the static and torch sides; the pass sides as described above). Every side is built afresh
and timed once per round, rounds interleaved in one invocation so that load from other processes
hits every side alike; the median over ``--rounds`` is reported, with the per-round ratios and the
1-minute load average before and after each round.

Outputs: ``bench/results/ctr_speed.json`` (``--quick``: ``ctr_speed_quick.json``) with the ratios,
each side's examples/s, machine, date, load and the command, and ``bench/ctr_speed.md`` rendered
from the results files present (atomic writes).

``--quick`` (< 5 minutes): 200k training rows, 5 rounds. The last line is ``RESULT {json}`` with
``speedup_vs_torch`` = ours_static / torch and ``hierarchical_speedup_vs_torch`` =
ours_hierarchical / torch_pass (medians of examples/s).
PyTorch is the ``bench`` extra: ``pip install torch==2.13.0`` (CPU wheel).
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import paddle_suite  # noqa: E402,F401  (MKL_DEBUG_CPU_TYPE before paddle)
import paddle  # noqa: E402

from paddle_suite.config import load_config  # noqa: E402
from paddle_suite.ads.data import CtrBatch, read_ctr  # noqa: E402
from paddle_suite.ads.common import roc_auc  # noqa: E402

CONFIG = REPO / "configs" / "ctr_dnn_ps.yaml"
HIER_SPARSE_LR = 0.05  # configs/ctr_hierarchical.yaml's PS.sparse_lr (our Adagrad rule)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200k training rows (< 5 minutes)")
    parser.add_argument("--rows", type=int, default=None, help="training rows (default 200k quick, 2M full)")
    parser.add_argument("--test-rows", type=int, default=50000)
    parser.add_argument("--vocab", type=float, default=1e6, help="generator vocabulary per slot")
    parser.add_argument("--mem-cap-mb", type=float, default=64.0, help="hierarchical MEM tier cap")
    parser.add_argument("--pass-size", type=int, default=100000, help="hierarchical pass size (examples)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first batches (static / torch)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating rounds (static, torch, hierarchical, ...); median reported (5 quick, 3 full)")
    parser.add_argument("--workdir", default=None, help="data and store directory (default: a temp dir)")
    parser.add_argument("-o", "--override", action="append", default=[], help="config override, e.g. Arch.emb_dim=16")
    return parser.parse_args(argv)


def make_data(workdir, rows, test_rows, vocab):
    from paddle_suite.ads.generator import CtrSpec, generate

    path = os.path.join(workdir, "ctr.txt")
    meta = generate(CtrSpec(rows + test_rows, vocab=vocab, zipf=1.1, seed=11, weight_std=1.0), path, progress=False)
    data, _ = read_ctr(path)
    train = CtrBatch(*(a[:rows] for a in data))
    test = CtrBatch(*(a[rows:] for a in data))
    return train, test, meta


def batches_of(data, size):
    return [CtrBatch(*(a[i:i + size] for a in data)) for i in range(0, len(data), size)]


def timed_epoch(step, batches, warmup):
    for batch in batches[:warmup]:
        step(batch)
    started = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    seconds = time.perf_counter() - started
    return sum(len(b) for b in batches[warmup:]) / seconds


# ------------------------------------------------------------------------------------------ sides
def run_static(config, train_batches, test, warmup):
    from paddle_suite.ads import models
    from paddle_suite.ads.common import ExportedBody, export_body
    from paddle_suite.ads.fleet_ps import local_session

    program, exe, scope = local_session(config)
    with paddle.static.scope_guard(scope):
        exe.run(program.startup)
        loss = program.vars["loss"]
        speed = timed_epoch(lambda b: exe.run(program.main, feed=program.feed(b), fetch_list=[loss]),
                            train_batches, warmup)
        # score through the export path (a clone of the training program would still train)
        table = np.array(scope.find_var(models.SPARSE_TABLE).get_tensor())
        export_dir = tempfile.mkdtemp(prefix="ctr_speed_export_")
        export_body(config, exe, scope, export_dir)
    paddle.disable_static()
    keys = (test.sparse % np.uint64(table.shape[0])).astype(np.int64)
    prob = ExportedBody(export_dir)(table[keys], test.dense)
    shutil.rmtree(export_dir, ignore_errors=True)
    return speed, roc_auc(test.labels, prob)


def run_hierarchical(config, train, test, workdir, pass_size, mem_cap_mb):
    from paddle_suite.ads.hierarchical_train import HierarchicalTrainer, open_store

    config = json.loads(json.dumps(config))
    config["PS"]["mode"] = "hierarchical"
    config["PS"]["sparse_lr"] = HIER_SPARSE_LR
    config["Global"]["output_dir"] = os.path.join(workdir, "output")
    config["Store"]["path"] = os.path.join(workdir, "store")
    config["Store"]["mem_cap_mb"] = mem_cap_mb
    shutil.rmtree(config["Store"]["path"], ignore_errors=True)
    shutil.rmtree(config["Global"]["output_dir"], ignore_errors=True)
    trainer = HierarchicalTrainer(config)
    trainer.build_model()
    os.makedirs(trainer.dense_dir, exist_ok=True)
    store = open_store(config, trainer.sparse_dim)
    train_seconds = 0.0
    train_pass = trainer.train_pass

    def timed_train_pass(data, ws):
        nonlocal train_seconds
        t0 = time.perf_counter()
        metrics = train_pass(data, ws)
        train_seconds += time.perf_counter() - t0
        return metrics

    trainer.train_pass = timed_train_pass
    # the trainer's own pipeline: pass data built one pass ahead, working sets prefetched, dense
    # checkpoint + store commit per pass; the clock includes building pass 0 and its first load
    started = time.perf_counter()
    passes = ((i, batches_of(CtrBatch(*(a[lo:lo + pass_size] for a in train)), 10 ** 9))
              for i, lo in enumerate(range(0, len(train), pass_size)))
    trainer.train_passes(store, passes)
    store.read_rows(np.zeros(0, np.uint64))  # waits for the last commit's MEM update and SSD-table writes
    seconds = time.perf_counter() - started
    stats_time = {"train_s": train_seconds, "total_s": seconds}
    emb = store.read_rows(test.sparse.reshape(-1))[:, : trainer.sparse_dim]
    stats = dict(store.stats(), **stats_time)
    store.close()
    logit = trainer.step.predict(emb.reshape(len(test), 26, -1), test.dense)
    return len(train) / seconds, roc_auc(test.labels, logit), stats


def run_torch(config, train_batches, test, warmup):
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    arch, vocab = config["Arch"], int(config["PS"]["local_vocab"])
    dim, hidden = int(arch["emb_dim"]), [int(h) for h in arch["hidden_sizes"]]

    class TorchDNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.EmbeddingBag(vocab, dim, mode="sum", sparse=True)
            torch.nn.init.normal_(self.emb.weight, 0.0, float(config["PS"]["init_std"]))
            layers, width = [], 26 * dim + 13
            for h in hidden:
                layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
                width = h
            self.mlp = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))

        def forward(self, ids, dense):
            n = dense.shape[0]
            offsets = torch.arange(0, n * 26, dtype=torch.int64)  # one bag per (example, slot)
            emb = self.emb(ids.reshape(-1), offsets).reshape(n, 26 * dim)
            return self.mlp(torch.cat([emb, dense], dim=1)).squeeze(1)

    model = TorchDNN()
    lr = float(config["Optimizer"]["lr"])
    if config["Optimizer"]["name"] == "Adagrad":  # torch's Adagrad takes sparse gradients
        sparse_opt = torch.optim.Adagrad(list(model.emb.parameters()), lr=lr)
        dense_opt = torch.optim.Adagrad(list(model.mlp.parameters()), lr=lr)
    elif config["Optimizer"]["name"] == "Adam":
        sparse_opt = torch.optim.SparseAdam(list(model.emb.parameters()), lr=lr)
        dense_opt = torch.optim.Adam(list(model.mlp.parameters()), lr=lr)
    else:
        raise ValueError("the torch side mirrors Optimizer.name Adam (lazy) or Adagrad only")
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def to_inputs(batch):
        ids = torch.from_numpy((batch.sparse % np.uint64(vocab)).astype(np.int64))
        return ids, torch.from_numpy(np.ascontiguousarray(batch.dense))

    def step(batch):
        ids, dense = to_inputs(batch)
        loss = loss_fn(model(ids, dense), torch.from_numpy(batch.labels.astype(np.float32)))
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        sparse_opt.step()
        dense_opt.step()
        return loss.item()

    speed = timed_epoch(step, train_batches, warmup)
    with torch.no_grad():
        prob = torch.sigmoid(model(*to_inputs(test))).numpy()
    return speed, roc_auc(test.labels, prob)



class TorchKeyTable:
    """The torch pass side's table: every 64-bit key kept (no folding), in RAM: a sorted key array,
    each key's row in ``rows`` ([capacity, 2 * dim]: weights, then the per-element Adagrad sums,
    the layout of our store's rows). New keys get rows initialised like the store's
    (normal, ``init_std``; Adagrad sums 0)."""

    def __init__(self, dim, init_std, seed):
        self.dim, self.init_std = dim, init_std
        self.rng = np.random.default_rng(seed)
        self.keys = np.zeros(0, np.uint64)
        self.slot_of_key = np.zeros(0, np.int64)
        self.rows = np.zeros((1 << 16, 2 * dim), np.float32)
        self.used = 0

    def working_set(self, distinct):
        """Rows of the sorted distinct ``distinct`` keys (a copy: the pass's working set) and their slots."""
        pos = np.searchsorted(self.keys, distinct)
        found = pos < self.keys.size
        found[found] = self.keys[pos[found]] == distinct[found]
        new = np.flatnonzero(~found)
        slots = np.empty(distinct.size, np.int64)
        slots[found] = self.slot_of_key[pos[found]]
        slots[new] = np.arange(self.used, self.used + new.size)
        if self.used + new.size > len(self.rows):  # grow by doubling (amortised copies)
            grown = np.zeros((max(2 * len(self.rows), self.used + new.size), 2 * self.dim), np.float32)
            grown[:self.used] = self.rows[:self.used]
            self.rows = grown
        self.rows[slots[new], :self.dim] = self.rng.normal(0.0, self.init_std, (new.size, self.dim))
        self.rows[slots[new], self.dim:] = 0.0
        self.used += new.size
        self.keys = np.insert(self.keys, pos[new], distinct[new])  # stays sorted: ``distinct`` is
        self.slot_of_key = np.insert(self.slot_of_key, pos[new], slots[new])
        return slots, self.rows[slots]

    def commit(self, slots, rows):
        self.rows[slots] = rows

    def lookup(self, keys):
        """Weights of ``keys`` (any shape); never-trained keys get zeros."""
        flat = keys.ravel()
        pos = np.minimum(np.searchsorted(self.keys, flat), max(self.keys.size - 1, 0))
        found = self.keys[pos] == flat if self.keys.size else np.zeros(flat.size, bool)
        out = np.zeros((flat.size, self.dim), np.float32)
        out[found] = self.rows[self.slot_of_key[pos[found]], :self.dim]
        return out.reshape(*keys.shape, self.dim)


def torch_mlp(config):
    import torch

    arch = config["Arch"]
    dim, hidden = int(arch["emb_dim"]), [int(h) for h in arch["hidden_sizes"]]
    layers, width = [], 26 * dim + 13
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))


def run_torch_pass(config, train, test, pass_size):
    """The hierarchical side's work in torch: the same passes built by the same ``read_ahead`` /
    ``PassData`` (pass keys sorted and ranked in a background thread), every 64-bit key mapped to
    its own row (``TorchKeyTable``, in RAM: no disk tier, no durability), per batch the same
    ``batch_rows`` remap, the same row-wise Adagrad on the batch's rows
    (``G += g*g; w -= sparse_lr * g * sqrt(g0 / (g0 + G))``, ``g`` = gradient of the summed batch
    loss, ``g0 = PS.initial_g2sum``) and the same dense Adam (``Optimizer``), the same pass
    metrics (each batch's loss and logits fetched, the pass's mean loss and progressive AUC); the
    working set is written back into the table after each pass. The clock runs from building pass 0's data to the
    last pass's write-back."""
    import torch
    from paddle_suite.ads.hierarchical_train import batch_rows, read_ahead

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ps = config["PS"]
    dim = int(config["Arch"]["emb_dim"])
    lr, g0 = float(HIER_SPARSE_LR), float(ps["initial_g2sum"])
    if config["Optimizer"]["name"] != "Adam":
        raise ValueError("the torch pass side mirrors Optimizer.name Adam only")
    mlp = torch_mlp(config)
    dense_opt = torch.optim.Adam(mlp.parameters(), lr=float(config["Optimizer"]["lr"]))
    table = TorchKeyTable(dim, float(ps["init_std"]), int(config["Global"]["seed"]))
    batch = int(config["DataLoader"]["batch_size"])

    def step(ws, index, inverse, dense, labels):
        rows = ws[index]  # a copy of the batch's distinct rows
        weights = rows[:, :dim].requires_grad_(True)
        emb = torch.nn.functional.embedding(inverse, weights).reshape(len(labels), 26 * dim)
        logit = mlp(torch.cat([emb, dense], dim=1)).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, labels)
        dense_opt.zero_grad()
        loss.backward()
        dense_opt.step()
        with torch.no_grad():
            grad = weights.grad * len(labels)  # the summed batch loss's gradient
            g2sum = rows[:, dim:] + grad * grad
            ws[index] = torch.cat([weights - lr * grad * torch.sqrt(g0 / (g2sum + g0)), g2sum], dim=1)
        return loss.item(), logit.detach().numpy()

    started = time.perf_counter()
    train_seconds, pass_metrics = 0.0, []
    passes = ((i, batches_of(CtrBatch(*(a[lo:lo + pass_size] for a in train)), 10 ** 9))
              for i, lo in enumerate(range(0, len(train), pass_size)))
    for data in read_ahead(passes):
        slots, rows = table.working_set(data.distinct)
        t0 = time.perf_counter()
        ws = torch.from_numpy(rows)
        scratch = np.empty(len(rows), dtype=np.int64)
        local, labels = data.local, torch.from_numpy(data.labels.astype(np.float32))
        loss_sum, logits = 0.0, []
        for lo in range(0, len(data), batch):
            hi = min(lo + batch, len(data))
            distinct, inverse = batch_rows(local[lo:hi], scratch)
            loss, logit = step(ws, torch.from_numpy(distinct.astype(np.int64)), torch.from_numpy(inverse),
                               torch.from_numpy(np.ascontiguousarray(data.dense[lo:hi])), labels[lo:hi])
            loss_sum += loss * (hi - lo)
            logits.append(logit)
        # the pass metrics ours computes (train_pass): mean loss, progressive AUC
        pass_metrics.append({"loss": loss_sum / len(data), "auc": roc_auc(data.labels, np.concatenate(logits))})
        train_seconds += time.perf_counter() - t0
        table.commit(slots, rows)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        emb = torch.from_numpy(table.lookup(test.sparse).reshape(len(test), 26 * dim))
        prob = torch.sigmoid(mlp(torch.cat([emb, torch.from_numpy(test.dense)], dim=1)).squeeze(1)).numpy()
    return len(train) / seconds, roc_auc(test.labels, prob), {"train_s": train_seconds, "total_s": seconds}


def load_now():
    return [round(x, 2) for x in os.getloadavg()]


def thread_settings():
    """What each side computes with: torch's intra-op threads and paddle's OMP/MKL threads (paddle
    sets ``OMP_NUM_THREADS=1`` on import), and the MKL code-path flag (both frameworks' MKL read it)."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
            "MKL_DEBUG_CPU_TYPE": os.environ.get("MKL_DEBUG_CPU_TYPE"),
            "background_threads": "both pass sides: one pass-reader thread (read_ahead); ours also the store's "
                                   "prefetch / MEM-apply / SSD-write threads, at Store.background_nice below the training thread"}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return platform.processor()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return f"{model} ({'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'})"


SIDES = ("ours_static", "torch", "ours_hierarchical", "torch_pass")


def main(argv=None):
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    rows = args.rows or (200_000 if args.quick else 2_000_000)
    config = load_config(str(CONFIG), args.override)
    workdir = args.workdir or tempfile.mkdtemp(prefix="ctr_speed_")
    os.makedirs(workdir, exist_ok=True)
    load_start = load_now()
    try:
        t0 = time.time()
        train, test, meta = make_data(workdir, rows, args.test_rows, args.vocab)
        print(f"data: {rows} train / {len(test)} test rows, {meta['distinct_keys']} distinct keys, "
              f"bayes AUC {meta['bayes_auc']:.4f} ({time.time() - t0:.0f} s)", flush=True)
        train_batches = batches_of(train, int(config["DataLoader"]["batch_size"]))
        rounds = args.rounds or (5 if args.quick else 3)
        speeds, aucs, loads, seconds = {k: [] for k in SIDES}, {}, [], []
        for r in range(rounds):  # interleaved, so load from other processes hits every side alike
            load_before = load_now()
            speed = {}
            speed["ours_static"], aucs["ours_static"] = run_static(config, train_batches, test, args.warmup)
            speed["torch"], aucs["torch"] = run_torch(config, train_batches, test, args.warmup)
            speed["ours_hierarchical"], aucs["ours_hierarchical"], stats = run_hierarchical(
                config, train, test, workdir, args.pass_size, args.mem_cap_mb)
            speed["torch_pass"], aucs["torch_pass"], torch_stats = run_torch_pass(config, train, test, args.pass_size)
            seconds.append({"ours_hierarchical": {k: stats[k] for k in ("train_s", "total_s")},
                            "torch_pass": torch_stats})
            for name in SIDES:
                speeds[name].append(speed[name])
            loads.append({"round": r, "before": load_before, "after": load_now()})
            print(f"round {r}: " + "  ".join(f"{k} {speed[k]:.0f}" for k in SIDES) +
                  f" examples/s; hierarchical / torch_pass {speed['ours_hierarchical'] / speed['torch_pass']:.2f}; "
                  f"load {load_before[0]} -> {loads[-1]['after'][0]}", flush=True)
        median = {k: float(np.median(speeds[k])) for k in SIDES}
        for name in SIDES:
            print(f"{name + ':':19s}{median[name]:10.0f} examples/s   test AUC {aucs[name]:.4f}", flush=True)
        print(f"ours_hierarchical hit rates {json.dumps({k: round(v, 3) for k, v in stats['hit_rate'].items()})}, "
              f"training {stats['train_s']:.1f} s of {stats['total_s']:.1f} s (rest: store load/commit); torch_pass "
              f"training {torch_stats['train_s']:.1f} s of {torch_stats['total_s']:.1f} s", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    import torch

    result = {
        "rows": rows, "test_rows": len(test), "distinct_keys": meta["distinct_keys"], "bayes_auc": meta["bayes_auc"],
        "batch_size": int(config["DataLoader"]["batch_size"]), "arch": config["Arch"],
        "local_vocab": int(config["PS"]["local_vocab"]), "pass_size": args.pass_size, "mem_cap_mb": args.mem_cap_mb,
        "sparse_rule_pass_sides": f"row-wise Adagrad, lr {HIER_SPARSE_LR}, initial_g2sum "
                                  f"{float(config['PS']['initial_g2sum'])}, gradient of the summed batch loss",
        "examples_per_s": median, "examples_per_s_rounds": speeds, "rounds": rounds,
        "test_auc": aucs,
        "speedup_vs_torch": median["ours_static"] / median["torch"],
        "hierarchical_speedup_vs_torch": median["ours_hierarchical"] / median["torch_pass"],
        "hierarchical_speedup_vs_torch_rounds": [h / t for h, t in zip(speeds["ours_hierarchical"], speeds["torch_pass"])],
        "hierarchical_store": {"hit_rate": stats["hit_rate"]},
        "pass_sides_seconds_rounds": seconds,
        "threads": thread_settings(), "paddle": paddle.__version__, "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu(s), {cpu_model()}",
        "load_average": {"start": load_start, "end": load_now(), "rounds": loads},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), "bench/ctr_speed.py", *argv]),
    }
    write_result(result, args.quick)
    print("RESULT " + json.dumps(result), flush=True)
    return result


RESULTS = {False: REPO / "bench" / "results" / "ctr_speed.json", True: REPO / "bench" / "results" / "ctr_speed_quick.json"}
REPORT = REPO / "bench" / "ctr_speed.md"


def write_result(result, quick):
    """``bench/results/ctr_speed[_quick].json`` and ``bench/ctr_speed.md`` (from every results file
    present), atomically."""
    from paddle_suite.io import atomic_write

    with atomic_write(str(RESULTS[quick]), "w") as handle:
        json.dump(result, handle, indent=1)
    lines = ["# CTR training speed: ours vs PyTorch", "",
             "Written by `bench/ctr_speed.py` from the results files below (never by hand); definitions in its "
             "docstring. Medians over interleaved rounds (every side once per round, in the same invocation).", ""]
    for is_quick in (True, False):
        if not RESULTS[is_quick].exists():
            continue
        with open(RESULTS[is_quick]) as handle:
            r = json.load(handle)
        e, t = r["examples_per_s"], r["threads"]
        lines += [
            f"## `{r['command']}`", "",
            f"{r['date']}, {r['machine']}; paddle {r['paddle']}, torch {r['torch']}; {r['rows']:,} training rows, "
            f"{r['rounds']} rounds. Threads: torch {t['torch_threads']} (inter-op {t['torch_interop_threads']}), "
            f"paddle OMP_NUM_THREADS={t['OMP_NUM_THREADS']}; MKL_DEBUG_CPU_TYPE={t['MKL_DEBUG_CPU_TYPE']}. "
            f"Load average (1 min) at the start {r['load_average']['start'][0]}, per round "
            + ", ".join(f"{x['before'][0]}->{x['after'][0]}" for x in r["load_average"]["rounds"])
            + ", at the end " + f"{r['load_average']['end'][0]} (2 cores, shared with other jobs).", "",
            "| comparison | ours examples/s | torch examples/s | ratio (median) | ratio per round |",
            "|---|---:|---:|---:|---|",
            f"| static local (folded table, lazy Adam) vs EmbeddingBag + SparseAdam | {e['ours_static']:,.0f} | "
            f"{e['torch']:,.0f} | **{r['speedup_vs_torch']:.2f}** | "
            + ", ".join(f"{a / b:.2f}" for a, b in zip(r["examples_per_s_rounds"]["ours_static"],
                                                       r["examples_per_s_rounds"]["torch"])) + " |",
            f"| hierarchical pass mode (every key, LMDB + MEM {r['mem_cap_mb']:.0f} MB) vs torch pass peer (every key, "
            f"in RAM) | {e['ours_hierarchical']:,.0f} | {e['torch_pass']:,.0f} | "
            f"**{r['hierarchical_speedup_vs_torch']:.2f}** | "
            + ", ".join(f"{x:.2f}" for x in r["hierarchical_speedup_vs_torch_rounds"]) + " |",
            "",
            "Test AUC (last round; Bayes " + f"{r['bayes_auc']:.4f}): "
            + ", ".join(f"{k} {v:.4f}" for k, v in r["test_auc"].items())
            + f". Pass sides' sparse rule: {r['sparse_rule_pass_sides']}.", "",
        ]
        if r.get("pass_sides_seconds_rounds"):
            lines += ["Pass sides, seconds in the batch loop / on the clock per round (the rest: building working "
                      "sets, store loads and commits, or the torch table's remap and write-back): "
                      + "; ".join(f"ours {x['ours_hierarchical']['train_s']:.1f} / {x['ours_hierarchical']['total_s']:.1f}, "
                                  f"torch {x['torch_pass']['train_s']:.1f} / {x['torch_pass']['total_s']:.1f}"
                                  for x in r["pass_sides_seconds_rounds"]) + ".", ""]
    with atomic_write(str(REPORT), "w") as handle:
        handle.write("\n".join(lines))


if __name__ == "__main__":
    main()
