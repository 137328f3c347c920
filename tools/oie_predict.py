"""SAOKE facts for sentences, from a trained Logician run.

    python tools/oie_predict.py --run output/logician_saoke < sentences.txt     # one sentence a line
    python tools/oie_predict.py --run output/logician_saoke --text "李白出生于碎叶城。" [--text ...]
    python tools/oie_predict.py --run output/logician_saoke --checkpoint latest --json < sentences.txt

``--run`` is a run directory (or any checkpoint inside one); its saved ``config.yaml`` gives the
model and decoding settings and the checkpoint's ``vocab.json`` the vocabulary. ``--checkpoint``
is ``best`` (default when the run has one), ``latest`` or a checkpoint directory
(``Run.resolve_checkpoint``). Output: each sentence, then its facts in SAOKE notation one a line,
indented, then a blank line; with ``--json`` one JSON object a line
(``{"sentence": ..., "facts": ["(..)", ...]}``). Blank input lines are sentences without facts.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddle_suite  # noqa: E402,F401  (MKL_DEBUG_CPU_TYPE before paddle)
from paddle_suite.config import ConfigError  # noqa: E402
from paddle_suite.engine.run import RunError  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Extract SAOKE facts with a trained Logician run.")
    parser.add_argument("--run", required=True, help="run directory (e.g. output/logician_saoke) or a checkpoint in it")
    parser.add_argument("--checkpoint", help="best, latest or a checkpoint directory (default: best, else newest)")
    parser.add_argument("--text", action="append", help="a sentence (repeatable); default: read stdin, one a line")
    parser.add_argument("--beam-size", type=int, help="override Metric.beam_size of the run")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    return parser.parse_args(argv)


def load_predictor(run_path, checkpoint=None):
    """(task, model) of a finished oie run: its saved config, the checkpoint's weights and vocabulary."""
    from paddle_suite.engine import load_run, restore_model
    from paddle_suite.oie.task import OIETask

    run = load_run(run_path)
    if not run.config or run.config.get("Global", {}).get("task") != "oie":
        raise ConfigError(f"{run.dir}/config.yaml is not the config of an oie run")
    task = OIETask(run.config)
    path = run.resolve_checkpoint(checkpoint)
    task.use_vocab_of(path)
    return task, restore_model(task, path)


def main(argv=None):
    args = parse_args(argv)
    sentences = args.text if args.text else [line.rstrip("\r\n") for line in sys.stdin]
    try:
        from paddle_suite.oie.saoke import serialize_fact

        task, model = load_predictor(args.run, args.checkpoint)
        if args.beam_size:
            task.config["Metric"]["beam_size"] = args.beam_size
        facts = task.predict(model, sentences)
    except (RunError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for sentence, found in zip(sentences, facts):
        if args.json:
            print(json.dumps({"sentence": sentence, "facts": [serialize_fact(f) for f in found]}, ensure_ascii=False))
        else:
            print(sentence)
            for fact in found:
                print(f"  {serialize_fact(fact)}")
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
