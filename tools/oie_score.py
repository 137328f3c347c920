"""Score predicted facts against any gold open-IE file, by path.

    python tools/oie_predict.py --run output/logician_oie2016 --json < sentences.txt > pred.jsonl
    python tools/oie_score.py --gold ../shared/data/oie/oie2016/oie_corpus/test.oie --predictions pred.jsonl
    python tools/oie_score.py --gold carb_test.tsv --gold-layout carb --predictions system.tsv --predictions-layout carb

Gold layouts (``--gold-layout``): ``oie2016`` (sentence, predicate head, predicate, arguments;
the default), ``carb`` (sentence, relation, arguments: CaRB and other English benchmarks in that
tab-separated layout), ``spansaoke`` and ``saoke_json`` (``paddle_suite/oie/readers.py``).
Predictions (``--predictions-layout``): ``jsonl`` (the default: ``tools/oie_predict.py --json``)
or one of the gold layouts, so the tuples of other systems can be scored too.

Prints fact precision / recall / F1 (maximum one-to-one matching at ``--threshold`` gestalt
similarity), exact F1 and exact match, and the OIE2016 lexical match (``paddle_suite/oie/metrics.py``);
``--json`` prints them as one JSON object. Sentences are paired as the OIE2016 benchmark pairs them
(``metrics.sentence_key``). A malformed line of either file is one ``error:`` line naming
``file:line``, exit status 2.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_suite.data import DataError  # noqa: E402
from paddle_suite.oie.metrics import DEFAULT_THRESHOLD, fact_scores, lexical_scores, pair_by_sentence  # noqa: E402
from paddle_suite.oie.readers import (OIE_LAYOUTS, read_oie_benchmark, read_predictions_jsonl,  # noqa: E402
                                      read_saoke_jsonl, read_spansaoke)

GOLD_READERS = {
    **{layout: (lambda path, layout=layout: read_oie_benchmark(path, layout)) for layout in OIE_LAYOUTS},
    "spansaoke": read_spansaoke,
    "saoke_json": read_saoke_jsonl,
}
PREDICTION_READERS = {"jsonl": read_predictions_jsonl, **GOLD_READERS}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Score predicted facts against a gold open-IE file.")
    parser.add_argument("--gold", required=True, help="gold file")
    parser.add_argument("--gold-layout", default="oie2016", choices=tuple(GOLD_READERS))
    parser.add_argument("--predictions", required=True, help="predicted facts (default: tools/oie_predict.py --json)")
    parser.add_argument("--predictions-layout", default="jsonl", choices=tuple(PREDICTION_READERS))
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"fact similarity for a match (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = parser.parse_args(argv)
    if not 0.0 < args.threshold <= 1.0:
        parser.error(f"--threshold must be in (0, 1], got {args.threshold}")
    return args


def score_files(gold_path, predictions_path, gold_layout="oie2016", predictions_layout="jsonl",
                threshold=DEFAULT_THRESHOLD):
    """Scores of ``predictions_path`` against ``gold_path`` (see the module docstring)."""
    gold = GOLD_READERS[gold_layout](gold_path)
    predicted = PREDICTION_READERS[predictions_layout](predictions_path)
    predictions, references, unpaired = pair_by_sentence(gold, predicted)
    scores = {"gold_sentences": len(references), "predicted_sentences_not_in_gold": unpaired}
    scores.update(fact_scores(predictions, references, threshold))
    scores.update({f"lexical/{k}": v for k, v in lexical_scores(predictions, references).items()})
    return scores


def main(argv=None):
    args = parse_args(argv)
    try:
        scores = score_files(args.gold, args.predictions, args.gold_layout, args.predictions_layout, args.threshold)
    except (DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(scores))
        return 0
    print(f"{args.predictions} against {args.gold} ({scores['gold_sentences']} gold sentences, "
          f"{scores['predicted_sentences_not_in_gold']} predicted sentences not in gold)")
    print(f"facts (similarity >= {args.threshold}): precision {scores['precision']:.4f}  recall {scores['recall']:.4f}"
          f"  F1 {scores['f1']:.4f}  exact F1 {scores['exact_f1']:.4f}  exact match {scores['exact_match']:.4f}")
    print(f"OIE2016 lexical match: precision {scores['lexical/precision']:.4f}  recall {scores['lexical/recall']:.4f}"
          f"  F1 {scores['lexical/f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
