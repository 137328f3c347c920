"""Top-k link prediction with entity names from a trained KGE checkpoint.

(Open IE: ``tools/oie_predict.py --run RUN`` prints the SAOKE facts of sentences.)

    python tools/predict.py -c configs/spacee_umls.yaml -o Global.checkpoint=RUN/best \\
        --head NAME --relation NAME [--topk 10] [--filter]      # ranked tails
    python tools/predict.py --checkpoint RUN/checkpoints/step_00000020 \\
        --relation NAME --tail NAME                             # ranked heads

The checkpoint is ``--checkpoint`` (a checkpoint directory, ``best``/``latest`` with ``-c``, or a run
directory), else ``Global.checkpoint``, else the run's ``best/``, else its newest ``checkpoints/step_*``
(``Run.resolve_checkpoint``). Without ``-c`` the run's saved ``config.yaml`` (beside
``checkpoints/`` and ``best/``) is used. Entity and relation names are read from the checkpoint's
``entities.txt`` / ``relations.txt`` (one name per line, in id order). ``--filter`` drops answers
that are already known true triples (train + valid + test); without it they are marked ``known``.
"""
import argparse
import difflib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import paddle_suite  # noqa: E402,F401  (MKL_DEBUG_CPU_TYPE before paddle)
import paddle  # noqa: E402

from paddle_suite.config import ConfigError  # noqa: E402
from paddle_suite.data import DatasetNotFound  # noqa: E402
from paddle_suite.kge.analysis import RunError, load_run  # noqa: E402
from paddle_suite.kge.evaluation import FilterIndex  # noqa: E402


class PredictError(ValueError):
    """A user error: unknown name or mismatched model."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Top-k tails of (head, relation, ?) or heads of (?, relation, tail) "
                                     "from a KGE run (for SAOKE facts of sentences use tools/oie_predict.py).")
    parser.add_argument("-c", "--config", help="YAML config (default: config.yaml of the checkpoint's run)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    parser.add_argument("--checkpoint", help="checkpoint directory (overrides Global.checkpoint)")
    parser.add_argument("--head", help="head entity name (query tails)")
    parser.add_argument("--relation", required=True, help="relation name")
    parser.add_argument("--tail", help="tail entity name (query heads)")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--filter", action="store_true", help="drop answers that form a known true triple")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if (args.head is None) == (args.tail is None):
        parser.error("give exactly one of --head (to rank tails) or --tail (to rank heads), with --relation")
    if args.topk < 1:
        parser.error("--topk must be >= 1")
    return args


def lookup(name, names, kind, path_hint):
    index = {n: i for i, n in enumerate(names)}
    if name in index:
        return index[name]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(repr(c) for c in close)}." if close else ""
    raise PredictError(f"unknown {kind} {name!r} (not in {path_hint}).{hint}")


def predict(model, entities, relations, relation, head=None, tail=None, topk=10, known_triples=None, drop_known=False):
    """Ranked answers ``[(rank, name, score, known)]`` for ``(head, relation, ?)`` or ``(?, relation, tail)``."""
    side = "tail" if tail is None else "head"
    r = lookup(relation, relations, "relation", "relations.txt")
    anchor = lookup(head if side == "tail" else tail, entities, "entity", "entities.txt")
    with paddle.no_grad():
        model.eval()
        ids_r, ids_e = paddle.to_tensor([r], dtype="int64"), paddle.to_tensor([anchor], dtype="int64")
        scores = (model.score_tails(ids_e, ids_r) if side == "tail" else model.score_heads(ids_r, ids_e)).numpy()[0]
    if len(scores) != len(entities):
        raise PredictError(f"model scores {len(scores)} entities but entities.txt lists {len(entities)}")
    known = np.zeros(len(entities), dtype=bool)
    if known_triples is not None and len(known_triples):
        _, answers = FilterIndex(known_triples, len(entities)).answers(side, np.array([anchor]), np.array([r]))
        known[answers] = True
    candidates = np.flatnonzero(~known) if drop_known else np.arange(len(entities))
    order = candidates[np.argsort(-scores[candidates], kind="stable")][:topk]
    return [(i + 1, entities[e], float(scores[e]), bool(known[e])) for i, e in enumerate(order)]


def main(argv=None):
    args = parse_args(argv)
    try:
        _, task, model, checkpoint, entities, relations = load_run(args.config, args.checkpoint, args.override)
        ranked = predict(model, entities, relations, args.relation, args.head, args.tail, args.topk,
                         task.dataset.all_triples(), args.filter)
    except (PredictError, RunError, ConfigError, DatasetNotFound, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    query = f"({args.head}, {args.relation}, ?)" if args.tail is None else f"(?, {args.relation}, {args.tail})"
    if args.json:
        print(json.dumps({"query": query, "checkpoint": str(checkpoint), "filtered": args.filter,
                          "answers": [{"rank": k, "name": n, "score": s, "known": kn} for k, n, s, kn in ranked]}))
    else:
        print(f"{query}  checkpoint {checkpoint}{'  (known answers dropped)' if args.filter else ''}")
        for rank, name, score, known in ranked:
            print(f"{rank:>4}  {score:>10.4f}  {name}{'  (known)' if known else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
