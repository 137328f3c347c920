"""Training throughput and filtered-evaluation time of TransE and RotatE: paddle_suite vs PyKEEN.

Both sides run in this one process on FB15k-237 with the same embedding dimension, batch size
and number of negatives per positive, the same entity/relation ids, one thread each
(paddle sets ``OMP_NUM_THREADS=1`` on import; ``torch.set_num_threads(1)`` matches it).

What each side does per training step (``B`` positives, ``K`` negatives each):

* ours: exactly the engine's step for the ``kge`` task (``KGETask.make_batch`` -> ``train_step``
  -> ``float(loss)`` -> ``backward`` -> ``Adam.step`` -> ``clear_grad``), with the models of
  ``paddle_suite.kge.models`` (sparse embedding gradients, Adam with ``lazy_mode`` as in
  ``configs/kge_base.yaml``). Negatives: uniform, each positive corrupts its head or its tail (coin flip)
  with its own ``K`` entities (``neg_chunk_size=1``); a second row ("ours, shared negatives")
  shares each negative set between ``--chunk-size`` positives (DGL-KE / PGL-KE chunks).
  Loss: RotatE's self-adversarial loss (temperature 1), no subsampling weights, no regulariser.
* PyKEEN: ``SLCWATrainingLoop`` (its standard training loop) with ``BasicNegativeSampler``
  (``num_negs_per_pos=K``, head and tail corruption, unfiltered), ``NSSALoss`` (self-adversarial,
  temperature 1, margin = our gamma), dense ``torch.optim.Adam``. TransE: L1 distance, no entity
  normalisation (``entity_constrainer=None``, as ours); RotatE: PyKEEN's default (L2 norm of the
  complex difference, unit-modulus relations).

Fraction of the machine limit: our wall time against the time a paddle float32 matmul (oneDNN/MKL,
same thread setting, timed in the same run: ``kernels.matmul_flops_per_second``) needs for the same
number of operations (``OPS_PER_ELEMENT``: each add/sub/mul/div/abs/sign/sqrt counts as one, so a
sqrt or a division is priced like an add and the fractions flatter the matmul side for RotatE).
Neither score is a matrix product, so 100% is not reachable by these kernels; the figure says how far
the elementwise work is from the GEMM peak. ``eval_fraction_of_limit`` / ``train_fraction_of_limit``
in ``RESULT`` are geometric means over the models.

``--pykeen-eval-triples n1,n2`` times PyKEEN's evaluation on fixed random subsets of n1 and n2 of
the ranked triples (nested: the first n of one permutation) and extrapolates linearly to the whole
set, ``t(n1) + (t(n2) - t(n1)) (N - n1) / (n2 - n1)``: its ``evaluate`` has a fixed set-up (the
filter index over all known triples) that a plain ratio would multiply. Its full filtered evaluation
of FB15k-237 test took ~40 min per model; ours always ranks the whole set. Stated in the markdown.

Training throughput = positive triples / time, measured after a warm-up call, in ``--rounds``
alternating rounds (ours, PyKEEN, ours, ...) so that load from other processes hits both sides
alike; the median round is reported. Time is the CPU time of this process
(``time.process_time``): both sides run single-threaded, so on an idle machine it equals wall
time, and on a shared machine it is far less disturbed by other processes than wall time. The
speedups in ``RESULT`` use CPU time; wall-clock rates and speedups (``*_wall``) are reported too.

Evaluation: filtered ranking of head and tail of each test triple against all entities
(known = train + valid + test), realistic ties on both sides; our
``paddle_suite.kge.evaluation.evaluate`` vs PyKEEN's ``RankBasedEvaluator``, same batch size,
timed end to end including building the filter index. PyKEEN's evaluator gets an entity
``slice_size`` giving the same peak intermediate size as our models' candidate chunks
(``CANDIDATE_BUDGET``), so neither side runs out of memory on the shared machine.

``--quick`` (under 5 minutes): few steps, one round, ``--eval-triples 100`` test triples (the same
ones on both sides). The full run ranks the whole test split (unless ``--eval-triples`` is given)
and writes ``bench/results/kge_speed.json`` and ``bench/kge_speed.md``. The last line printed is
``RESULT {json}`` with ``train_speedup_vs_pykeen`` and ``eval_speedup_vs_pykeen`` (ours / PyKEEN,
geometric mean over the models; > 1 means we are faster) and the raw numbers.

PyKEEN is the ``bench`` extra: ``pip install torch==2.13.0 pykeen`` (CPU torch; checked with
pykeen 1.11.1).
"""
import argparse
import datetime
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import paddle_suite  # noqa: E402,F401  (MKL_DEBUG_CPU_TYPE before paddle)
import paddle  # noqa: E402

from paddle_suite.config import load_config  # noqa: E402
from paddle_suite.engine.optim import build_optimizer  # noqa: E402
from paddle_suite.io import atomic_write  # noqa: E402
from paddle_suite.kge import evaluation, kernels, models  # noqa: E402
from paddle_suite.registry import TASKS  # noqa: E402

RESULTS_JSON = REPO / "bench" / "results" / "kge_speed.json"
RESULTS_MD = REPO / "bench" / "kge_speed.md"
BASE_CONFIG = REPO / "configs" / "kge_base.yaml"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps and 100 test triples (< 5 minutes)")
    parser.add_argument("--models", default="TransE,RotatE")
    parser.add_argument("--dataset", default="FB15k-237")
    parser.add_argument("--dim", type=int, default=200, help="TransE dimension / RotatE complex dimension")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--negatives", type=int, default=256, help="negatives per positive triple")
    parser.add_argument("--chunk-size", type=int, default=64,
                        help="positives sharing one negative set in our extra 'shared negatives' row (0 = skip)")
    parser.add_argument("--gamma", type=float, default=9.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per round (default 3 quick, 15 full)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 1 quick, 3 full)")
    parser.add_argument("--eval-triples", type=int, default=None, help="test triples to rank (default 100 quick, all full)")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--pykeen-eval-triples", default="",
                        help="two sizes 'n1,n2': time PyKEEN's evaluation on fixed random subsets of n1 and n2 of the "
                             "ranked triples and extrapolate linearly to the whole set (empty = the same triples as ours)")
    parser.add_argument("--eval-threads", type=int, default=1, help="threads of our evaluation kernels (headline)")
    parser.add_argument("--extra-eval-threads", type=int, default=0,
                        help="also time our evaluation with this many threads (wall clock; 0 = skip)")
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="our training steps profiled per model (cProfile, CPU clock) for the breakdown")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (paddle runs with OMP_NUM_THREADS=1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results (full run)")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite bench/kge_speed.md from bench/results/kge_speed.json")
    args = parser.parse_args(argv)
    args.steps = args.steps or (3 if args.quick else 15)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (PyKEEN is timed between batch ends)")
    args.rounds = args.rounds or (1 if args.quick else 3)
    sizes = [int(n) for n in args.pykeen_eval_triples.split(",") if n.strip()] if args.pykeen_eval_triples else []
    if sizes and (len(sizes) != 2 or not 0 < sizes[0] < sizes[1]):
        parser.error(f"--pykeen-eval-triples must be two increasing sizes 'n1,n2', got {args.pykeen_eval_triples!r}")
    args.pykeen_eval_triples = sizes
    if args.eval_triples is None:
        args.eval_triples = 100 if args.quick else 0
    return args


# ---------------------------------------------------------------------------- ours
class Ours:
    """The engine's training step and our evaluation, driven directly."""

    def __init__(self, arch, args, chunk_size=1):
        overrides = [
            f"Arch.name={arch}", f"Arch.dim={args.dim}", f"Arch.gamma={args.gamma}",
            f"DataLoader.dataset={args.dataset}", f"DataLoader.batch_size={args.batch_size}",
            f"DataLoader.num_negatives={args.negatives}", f"DataLoader.neg_chunk_size={chunk_size}",
            "DataLoader.sampler=uniform", "DataLoader.filter_negatives=false",
            "Loss.name=self_adversarial", "Loss.adversarial_temperature=1.0", "Loss.subsampling=false",
            "Loss.regularization=0.0", f"Optimizer.lr={args.lr}", "Optimizer.name=Adam",
            f"Global.seed={args.seed}",
        ]
        if arch == "TransE":
            overrides.append("Arch.p_norm=1")
        self.config = load_config(BASE_CONFIG, overrides)
        self.task = TASKS.get("kge")(self.config)
        paddle.seed(args.seed)
        self.model = self.task.build_model()
        self.model.train()
        self.optimizer, _ = build_optimizer(self.config["Optimizer"], self.model.parameters(), 1)
        self.next_batch = 0
        self.num_batches = self.task.steps_per_epoch(1)

    @property
    def dataset(self):
        return self.task.dataset

    def train(self, steps):
        """Run ``steps`` engine steps; return (wall seconds, CPU seconds, positives)."""
        positives = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            batch = self.task.make_batch(0, self.next_batch % self.num_batches)
            self.next_batch += 1
            loss, n = self.task.train_step(self.model, batch)
            if not math.isfinite(float(loss)):
                raise RuntimeError("our training diverged during the benchmark")
            loss.backward()
            self.optimizer.step()
            self.optimizer.clear_grad()
            positives += n
        return time.perf_counter() - start, time.process_time() - cpu_start, positives

    def evaluate(self, triples, batch_size, num_threads=1):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = evaluation.evaluate(
            self.model, triples, self.dataset.all_triples(), self.dataset.num_entities, batch_size=batch_size,
            num_threads=num_threads,
        )
        return (time.perf_counter() - start, time.process_time() - cpu_start,
                {k: result[k] for k in evaluation.METRIC_KEYS})


# ---------------------------------------------------------------------------- PyKEEN
class PyKEEN:
    """PyKEEN's model, standard sLCWA training loop and rank-based evaluator."""

    def __init__(self, arch, args, dataset):
        import torch
        from pykeen.losses import NSSALoss
        from pykeen.models import RotatE, TransE
        from pykeen.triples import CoreTriplesFactory

        self.torch = torch
        self.arch = arch
        self.args = args
        self.dataset = dataset
        self.factory_cls = CoreTriplesFactory
        self.train_triples = torch.as_tensor(dataset.train)
        full = self._factory(self.train_triples)
        loss = NSSALoss(margin=args.gamma, adversarial_temperature=1.0)
        if arch == "TransE":
            self.model = TransE(triples_factory=full, embedding_dim=args.dim, scoring_fct_norm=1,
                                entity_constrainer=None, loss=loss, random_seed=args.seed)
        elif arch == "RotatE":
            self.model = RotatE(triples_factory=full, embedding_dim=args.dim, loss=loss, random_seed=args.seed)
        else:
            raise ValueError(f"no PyKEEN counterpart configured for {arch}")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.order = np.random.default_rng(args.seed).permutation(len(dataset.train))
        self.next_row = 0
        self.loop = None
        self.trained = False
        self.epochs = 0

    def _factory(self, mapped):
        return self.factory_cls.create(
            mapped, num_entities=self.dataset.num_entities, num_relations=self.dataset.num_relations
        )

    def train(self, steps):
        """Train ``steps`` full batches (one epoch over that many fresh triples).

        Returns (wall seconds, CPU seconds, positives).

        Timed from the end of the first batch to the end of the last (``steps - 1`` batches, data
        loading and negative sampling of each included), so PyKEEN's once-per-``train()`` set-up,
        which a real epoch amortises over hundreds of batches, does not count against it.
        """
        from pykeen.training import SLCWATrainingLoop
        from pykeen.training.callbacks import TrainingCallback

        if steps < 2:
            raise ValueError("PyKEEN timing needs at least 2 steps per call")
        ends = []

        class BatchClock(TrainingCallback):
            def post_batch(self, epoch, batch, **kwargs):
                ends.append((time.perf_counter(), time.process_time()))

        n = steps * self.args.batch_size
        rows = self.order[np.arange(self.next_row, self.next_row + n) % len(self.order)]
        self.next_row += n
        factory = self._factory(self.train_triples[rows])
        if self.loop is None:
            self.loop = SLCWATrainingLoop(
                model=self.model, triples_factory=factory, optimizer=self.optimizer,
                negative_sampler="basic", negative_sampler_kwargs=dict(num_negs_per_pos=self.args.negatives),
            )
        losses = self.loop.train(
            triples_factory=factory, num_epochs=self.epochs + 1, batch_size=self.args.batch_size, use_tqdm=False,
            use_tqdm_batch=False, continue_training=self.trained, callbacks=[BatchClock()],
        )
        self.trained = True
        self.epochs += 1  # PyKEEN's num_epochs counts from the first call when continuing
        if len(ends) != steps:
            raise RuntimeError(f"PyKEEN ran {len(ends)} batches, expected {steps}")
        if losses and not math.isfinite(losses[-1]):
            raise RuntimeError("PyKEEN training diverged during the benchmark")
        return ends[-1][0] - ends[0][0], ends[-1][1] - ends[0][1], (steps - 1) * self.args.batch_size

    def evaluate(self, triples, batch_size):
        from pykeen.evaluation import RankBasedEvaluator

        torch = self.torch
        # same peak intermediate ([batch, entity slice, dim]) as our models' candidate chunks
        width = 2 * self.args.dim if self.arch == "RotatE" else self.args.dim  # RotatE: complex = 2 floats
        slice_size = max(1, models.CANDIDATE_BUDGET // (batch_size * width))
        evaluator = RankBasedEvaluator(filtered=True)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = evaluator.evaluate(
            self.model, torch.as_tensor(triples), batch_size=batch_size, slice_size=slice_size, use_tqdm=False,
            additional_filter_triples=[torch.as_tensor(self.dataset.train), torch.as_tensor(self.dataset.valid),
                                       torch.as_tensor(self.dataset.test)],
        )
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        metrics = {
            "mrr": result.get_metric("both.realistic.inverse_harmonic_mean_rank"),
            "mr": result.get_metric("both.realistic.arithmetic_mean_rank"),
        }
        for k in (1, 3, 10):
            metrics[f"hits@{k}"] = result.get_metric(f"both.realistic.hits_at_{k}")
        return seconds, cpu_seconds, {k: float(v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------- run
def machine_info(threads):
    import torch
    from pykeen.version import get_version

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "paddle": paddle.__version__,
        "torch": torch.__version__,
        "pykeen": get_version(),
        "numpy": np.__version__,
        "paddle_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "torch_threads": threads,
        "load_average_at_start": os.getloadavg(),
    }


#: operations per (query or positive, candidate, dimension) element, each add/sub/mul/div/abs/sign/sqrt
#: counted as one: TransE-L1 forward |q - c| summed (sub, abs, add); its backward recomputes the sign
#: and accumulates both gradients (sub, sign, mul, 2 adds). RotatE per complex dimension: forward 2 sub,
#: 2 mul, 2 add, sqrt, add; backward the same 7 plus 2 div, 2 mul, 4 adds.
OPS_PER_ELEMENT = {"TransE": {"forward": 3, "backward": 5}, "RotatE": {"forward": 8, "backward": 15}}


#: where a training step's CPU time goes: profile entries (substring of "file:line(function)") per part
PROFILE_PARTS = (
    ("distance kernels, forward", ("kernels.py", "_forward")),
    ("distance kernels, backward", ("kernels.py", "_backward")),
    ("paddle autograd engine (other ops' gradients, embedding SelectedRows)", ("run_backward",)),
    ("embedding lookups", ("ops.embedding>",)),
    ("Adam update", ("ops.adam_>",)),
    ("batch + negative sampling (numpy)", ("task.py", "make_batch")),
)


def profile_step(ours, steps):
    """CPU milliseconds per training step by part (``PROFILE_PARTS``; the rest is "other")."""
    import cProfile
    import pstats

    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    ours.train(steps)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(entry[2] for entry in stats.values())  # tottime: each second counted once
    parts = {name: 0.0 for name, _ in PROFILE_PARTS}
    for (filename, line, function), entry in stats.items():
        label = f"{filename}:{line}({function})"
        own = entry[2]
        if function == "make_batch":  # count the sampling below it too
            own = entry[3]
        for name, needles in PROFILE_PARTS:
            if all(needle in label for needle in needles):
                parts[name] += own
                break
    other = total - sum(parts.values())
    parts = {name: 1000 * value / steps for name, value in parts.items()}
    parts["other (Python, loss ops, copies)"] = 1000 * max(other, 0.0) / steps
    parts["total"] = 1000 * total / steps
    return parts


def geometric_mean(values):
    return float(math.exp(sum(math.log(v) for v in values) / len(values))) if values else float("nan")


def bench_model(arch, args, log):
    ours = Ours(arch, args)
    theirs = PyKEEN(arch, args, ours.dataset)
    shared = Ours(arch, args, chunk_size=args.chunk_size) if args.chunk_size > 1 else None
    sides = [("ours", ours), ("pykeen", theirs)] + ([("ours_shared_negatives", shared)] if shared else [])

    for name, side in sides:  # warm-up: first-call allocations, lazy imports (PyKEEN is timed from 2 steps)
        side.train(2 if isinstance(side, PyKEEN) else 1)
    rates = {name: {"cpu": [], "wall": []} for name, _ in sides}
    for round_index in range(args.rounds):
        for name, side in sides:
            wall, cpu, positives = side.train(args.steps)
            rates[name]["cpu"].append(positives / cpu)
            rates[name]["wall"].append(positives / wall)
            log(f"{arch} round {round_index + 1}/{args.rounds} {name}: {positives / cpu:,.0f} positives/CPU-s, "
                f"{positives / wall:,.0f} positives/wall-s ({cpu / (positives / args.batch_size) * 1000:.0f} CPU-ms/step)")
    train = {clock: {name: statistics.median(r[clock]) for name, r in rates.items()} for clock in ("cpu", "wall")}

    test = ours.dataset.test
    if args.eval_triples and args.eval_triples < len(test):
        test = test[np.sort(np.random.default_rng(args.seed).choice(len(test), args.eval_triples, replace=False))]
    evals = {}
    wall, cpu, metrics = ours.evaluate(test, args.eval_batch_size, args.eval_threads)
    evals["ours"] = {"cpu": cpu, "wall": wall, "metrics": metrics}
    sizes = [n for n in args.pykeen_eval_triples if n < len(test)]
    if len(sizes) == 2:
        # PyKEEN's evaluate has a fixed set-up (its filter index over all known triples, ~10 s), so a
        # plain ratio would multiply it: fit time = setup + per_triple * n on two subset sizes
        order = np.random.default_rng([args.seed, 1]).permutation(len(test))
        timed = [theirs.evaluate(test[np.sort(order[:n])], args.eval_batch_size) for n in sizes]
        (n1, n2), ((w1, c1, _), (w2, c2, metrics)) = sizes, timed
        extrapolate = lambda t1, t2: t1 + (t2 - t1) * (len(test) - n1) / (n2 - n1)  # noqa: E731
        evals["pykeen"] = {"cpu": extrapolate(c1, c2), "wall": extrapolate(w1, w2), "metrics": metrics,
                           "subsets": {"triples": sizes, "cpu": [c1, c2], "wall": [w1, w2]}}
        log(f"{arch} evaluation pykeen on {n1} / {n2} triples: {c1:.1f} / {c2:.1f} CPU-s")
    else:
        wall, cpu, metrics = theirs.evaluate(test, args.eval_batch_size)
        evals["pykeen"] = {"cpu": cpu, "wall": wall, "metrics": metrics}
    for name, e in evals.items():
        note = " (extrapolated from the subsets)" if "subsets" in e else ""
        log(f"{arch} evaluation {name}: {e['cpu']:.1f} CPU-s, {e['wall']:.1f} wall-s for {len(test)} test triples"
            f"{note} (mrr {e['metrics']['mrr']:.4f}{', on the larger subset' if note else ''})")

    extra = None
    if args.extra_eval_threads:
        wall, cpu, _ = ours.evaluate(test, args.eval_batch_size, args.extra_eval_threads)
        extra = {"threads": args.extra_eval_threads, "wall": wall, "cpu": cpu,
                 "speedup_vs_pykeen_wall": evals["pykeen"]["wall"] / wall}
        log(f"{arch} evaluation ours with {args.extra_eval_threads} threads: {wall:.1f} wall-s, {cpu:.1f} CPU-s")
    breakdown = profile_step(ours, args.profile_steps) if args.profile_steps else None

    # the machine limit: a paddle matmul doing the same number of operations, timed now
    flops_per_second = kernels.matmul_flops_per_second()
    width = args.dim
    ops = OPS_PER_ELEMENT[arch]
    eval_ops = 2 * len(test) * ours.dataset.num_entities * width * ops["forward"]
    train_ops_per_positive = args.negatives * width * (ops["forward"] + ops["backward"])
    eval_fraction = eval_ops / flops_per_second / evals["ours"]["wall"]
    train_fraction = train["wall"]["ours"] * train_ops_per_positive / flops_per_second
    log(f"{arch} machine limit: matmul {flops_per_second / 1e9:.1f} GFLOP/s; evaluation at "
        f"{eval_fraction:.1%} of it, training at {train_fraction:.1%}")
    return {
        "train_positives_per_cpu_s": train["cpu"],
        "train_positives_per_wall_s": train["wall"],
        "train_rounds": rates,
        "train_speedup_vs_pykeen": train["cpu"]["ours"] / train["cpu"]["pykeen"],
        "train_speedup_vs_pykeen_wall": train["wall"]["ours"] / train["wall"]["pykeen"],
        "train_speedup_shared_negatives_vs_pykeen": (
            train["cpu"]["ours_shared_negatives"] / train["cpu"]["pykeen"] if shared else None
        ),
        "eval_cpu_seconds": {name: e["cpu"] for name, e in evals.items()},
        "eval_wall_seconds": {name: e["wall"] for name, e in evals.items()},
        "eval_metrics": {name: e["metrics"] for name, e in evals.items()},
        "eval_triples": int(len(test)),
        "eval_speedup_vs_pykeen": evals["pykeen"]["cpu"] / evals["ours"]["cpu"],
        "eval_speedup_vs_pykeen_wall": evals["pykeen"]["wall"] / evals["ours"]["wall"],
        "pykeen_eval_subsets": evals["pykeen"].get("subsets"),
        "eval_extra_threads": extra,
        "train_step_cpu_ms_by_part": breakdown,
        "matmul_flops_per_second": flops_per_second,
        "eval_operations": eval_ops,
        "train_operations_per_positive": train_ops_per_positive,
        "eval_fraction_of_limit": eval_fraction,
        "train_fraction_of_limit": train_fraction,
    }


NOTES = """
## What the kernels do and where the time still goes

Evaluation. TransE-L1's and RotatE's scores are not matrix products (each dimension's |.| is taken before
the sum), so the issue's GEMM rewrites (``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``, complex products) apply only
to the models that already use them (SpaceE with the Frobenius norm, TransE-L2, DistMult, ComplEx). For
TransE-L1 and RotatE, ``paddle_suite/kge/kernels.py`` scores a block of queries against an entity table
packed once per evaluation as ``[N / 64, D, 64]``: SIMD over 64 entities, each lane keeping numpy's eight
pairwise accumulators, so every score equals the former numpy formulation bit for bit (and so do the
ranks, ties included: ``tests/kge/test_kernels.py``). Ranking counts ``>`` and ``==`` in one pass over the
block; the filter stays the CSR index of known answers whose share is subtracted (no ``[B, N]`` mask is
written). What keeps TransE-L1 at about a sixth of the GEMM peak: numba arrays are not promoted to
registers, so each element also loads and stores its accumulator from an L1-resident scratch (~3e9
elements/s on one core). RotatE's higher fraction comes from pricing its square root as one operation.

Training. Before (the 2026-11-28 run of this benchmark, on another machine, an AMD EPYC: TransE 1,694 and
RotatE 828 positives/CPU-s, 2.26x PyKEEN; compare ratios across runs, not rates), a step built ``[1024, 256, 200]`` numpy temporaries, copied the gathered candidate block (210-420 MB) with
``Tensor.numpy()`` and ``paddle.to_tensor`` in both directions, gathered ``[C, K, D]`` candidate rows
and handed the optimizer a sparse gradient of 262,144 rows (one per negative draw) to merge. Now the
fused kernels read the inputs through zero-copy DLPack views, store nothing between forward and backward,
score against the batch's distinct negative entities (one lookup and one gradient row each) and write the
gradient into the tensor autograd receives. The breakdown table shows what remains: the kernels
themselves (forward: the pairwise sums run scalar; backward: a sequential scatter into the distinct rows),
paddle's autograd for the other ops (queries, rotation, loss, lookups) and Python around them (the
profiled total exceeds the timed step by cProfile's own overhead).

Threads. ``Metric.num_threads`` (``evaluate(num_threads=...)``) runs the evaluation kernels on several
cores (the ``prange`` over entity blocks; ranks identical, tested). On a machine shared with other jobs
(see the load average above) the second core may not be free, and the two-thread timing then says
nothing about the scaling on an idle machine.
"""


def markdown(result):
    s, m = result["settings"], result["machine"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_start"])
    lines = [
        "# KGE speed: paddle_suite vs PyKEEN",
        "",
        f"Generated by `{result['command']}` on {result['date']} ({result['seconds'] / 60:.0f} min).",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, shared with other work (load average {load} "
        f"at start); paddle {m['paddle']} (OMP_NUM_THREADS={m['paddle_threads']}), torch {m['torch']} with "
        f"{m['torch_threads']} thread(s), PyKEEN {m['pykeen']}.",
        "",
        f"{s['dataset']}, dim {s['dim']}, batch {s['batch_size']}, {s['negatives']} negatives per positive, "
        f"{s['steps']} timed steps x {s['rounds']} alternating rounds (median), filtered evaluation (realistic "
        f"ties, both sides) of {s['eval_triples']} test triples with batch {s['eval_batch_size']}. Rates are per "
        "CPU-second of the benchmark process (robust to other load on the machine; equal to wall time on an idle "
        "machine for these single-threaded runs); wall-clock figures are in the JSON. See the docstring of "
        "bench/kge_speed.py for what each side runs.",
    ]
    subsets = [(arch, r["pykeen_eval_subsets"]) for arch, r in result["models"].items() if r.get("pykeen_eval_subsets")]
    if subsets:
        lines.append(
            "PyKEEN's evaluation time is extrapolated (`--pykeen-eval-triples`; its full filtered evaluation took ~40 "
            "min per model): it was timed on fixed random subsets of the test triples and fitted as set-up + "
            "per-triple x n, then evaluated at the whole split (" + "; ".join(
                f"{arch}: {x['cpu'][0]:.1f} / {x['cpu'][1]:.1f} CPU-s for {x['triples'][0]} / {x['triples'][1]} triples"
                for arch, x in subsets) + "). Ours ranks every test triple; PyKEEN's MRR in the JSON is on the larger "
            "subset."
        )
    lines += [
        "",
        f"| model | ours (positives/s) | ours, shared negatives (chunk {s['chunk_size']}) | PyKEEN (positives/s) "
        "| train speedup | ours eval (s) | PyKEEN eval (s) | eval speedup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, r in result["models"].items():
        t = r["train_positives_per_cpu_s"]
        shared = f"{t['ours_shared_negatives']:,.0f}" if "ours_shared_negatives" in t else "-"
        lines.append(
            f"| {arch} | {t['ours']:,.0f} | {shared} | {t['pykeen']:,.0f} | {r['train_speedup_vs_pykeen']:.2f}x | "
            f"{r['eval_cpu_seconds']['ours']:.1f} | {r['eval_cpu_seconds']['pykeen']:.1f} | "
            f"{r['eval_speedup_vs_pykeen']:.2f}x |"
        )
    lines += ["", "| model | matmul limit (GFLOP/s) | eval ops | eval fraction of limit | train ops / positive "
              "| train fraction of limit |", "|---|---:|---:|---:|---:|---:|"]
    for arch, r in result["models"].items():
        lines.append(
            f"| {arch} | {r['matmul_flops_per_second'] / 1e9:.1f} | {r['eval_operations']:.3g} | "
            f"{r['eval_fraction_of_limit']:.1%} | {r['train_operations_per_positive']:,} | "
            f"{r['train_fraction_of_limit']:.1%} |"
        )
    extras = [(arch, r["eval_extra_threads"]) for arch, r in result["models"].items() if r.get("eval_extra_threads")]
    if extras:
        lines += ["", "Our evaluation with both cores (`--extra-eval-threads`), wall clock: " + "; ".join(
            f"{arch} {e['wall']:.1f} s with {e['threads']} threads ({e['speedup_vs_pykeen_wall']:.1f}x PyKEEN's "
            "one-thread wall time)" for arch, e in extras) + "."]
    profiles = [(arch, r["train_step_cpu_ms_by_part"]) for arch, r in result["models"].items()
                if r.get("train_step_cpu_ms_by_part")]
    if profiles:
        names = list(profiles[0][1])
        lines += ["", f"Where a training step's CPU time goes (ours, per-positive negatives, cProfile over "
                  f"{s['profile_steps']} steps, ms per step):", "",
                  "| part | " + " | ".join(arch for arch, _ in profiles) + " |",
                  "|---|" + "---:|" * len(profiles)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{p[name]:.0f}" for _, p in profiles) + " |")
    shared = result["train_speedup_shared_negatives_vs_pykeen"]
    lines += [
        "",
        f"Geometric mean over models: training {result['train_speedup_vs_pykeen']:.2f}x with identical per-positive "
        "negatives" + (f", {shared:.2f}x with shared negatives" if shared else "")
        + f"; evaluation {result['eval_speedup_vs_pykeen']:.2f}x. Speedup = ours / PyKEEN (> 1: we are faster). "
        f"Fractions of the matmul limit (geometric means): evaluation {result['eval_fraction_of_limit']:.1%}, "
        f"training {result['train_fraction_of_limit']:.1%}.",
        NOTES,
    ]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        with open(RESULTS_JSON) as handle:
            result = json.load(handle)
        with atomic_write(RESULTS_MD) as handle:
            handle.write(markdown(result))
        print(f"wrote {RESULTS_MD.relative_to(REPO)} from {RESULTS_JSON.relative_to(REPO)}")
        return
    logging.getLogger("pykeen").setLevel(logging.WARNING)
    logging.getLogger("paddle_suite").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    started = time.time()

    def log(message):
        print(f"[{time.time() - started:6.0f}s] {message}", flush=True)

    result = {
        "command": " ".join(["python", "bench/kge_speed.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(args.threads),
        "settings": {k: getattr(args, k) for k in ("dataset", "dim", "batch_size", "negatives", "chunk_size", "gamma",
                                                    "lr", "steps", "rounds", "eval_batch_size", "quick",
                                                    "pykeen_eval_triples", "eval_threads",
                                                    "extra_eval_threads", "profile_steps")},
        "models": {},
    }
    for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
        result["models"][arch] = bench_model(arch, args, log)
    per_model = result["models"].values()
    result["settings"]["eval_triples"] = next(iter(per_model))["eval_triples"] if per_model else 0
    result["train_speedup_vs_pykeen"] = geometric_mean([r["train_speedup_vs_pykeen"] for r in per_model])
    result["train_speedup_vs_pykeen_wall"] = geometric_mean([r["train_speedup_vs_pykeen_wall"] for r in per_model])
    shared = [r["train_speedup_shared_negatives_vs_pykeen"] for r in per_model]
    result["train_speedup_shared_negatives_vs_pykeen"] = geometric_mean(shared) if all(shared) else None
    result["eval_speedup_vs_pykeen"] = geometric_mean([r["eval_speedup_vs_pykeen"] for r in per_model])
    result["eval_speedup_vs_pykeen_wall"] = geometric_mean([r["eval_speedup_vs_pykeen_wall"] for r in per_model])
    for key in ("eval_fraction_of_limit", "train_fraction_of_limit"):
        result[key] = geometric_mean([r[key] for r in per_model])
    result["seconds"] = time.time() - started

    if not args.quick and not args.no_save:
        with atomic_write(RESULTS_JSON) as handle:
            json.dump(result, handle, indent=2)
        with atomic_write(RESULTS_MD) as handle:
            handle.write(markdown(result))
        log(f"wrote {RESULTS_JSON.relative_to(REPO)} and {RESULTS_MD.relative_to(REPO)}")
    print("RESULT " + json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
