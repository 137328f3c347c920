"""Command-line entry points: ``tools/train.py``, ``tools/eval.py``, ``tools/export.py``.

Usage follows PaddleClas: ``python tools/train.py -c configs/spacee_umls.yaml -o Global.epochs=5``.
"""
import argparse
import json
import logging
import sys

import paddle_suite  # noqa: F401  (sets MKL_DEBUG_CPU_TYPE before paddle loads)
from paddle_suite.config import ConfigError, load_config
from paddle_suite.data import DataError, DatasetNotFound
from paddle_suite.engine.run import OtherRun
from paddle_suite.registry import TASKS


def _parser(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-c", "--config", required=True, help="YAML config file")
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="Section.key=value",
        help="override a config value (repeatable), e.g. -o Global.epochs=5",
    )
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    return parser


def setup_logging():
    """Our own handler: paddle's imports configure the root logger, so basicConfig would be a no-op."""
    logger = logging.getLogger("paddle_suite")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _run(args, action):
    def work():
        config = load_config(args.config, args.override)
        return action(TASKS.get(config["Global"]["task"])(config))

    return run_reporting(work)


def run_reporting(work):
    """Run ``work()`` for a command-line tool: a user's mistake (config, data, missing files, another
    run's directory) is one ``error:`` line and exit 2, a diverged run exit 3, Ctrl-C exit 130."""
    setup_logging()
    try:
        return work()
    except (ConfigError, DataError, DatasetNotFound, FileNotFoundError, OtherRun) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - reported, then non-zero exit
        from paddle_suite.engine import TrainingDiverged

        if isinstance(err, TrainingDiverged):
            print(f"error: {err}", file=sys.stderr)
            sys.exit(3)
        raise


def train(argv=None):
    args = _parser("Train a model from a config.").parse_args(argv)
    args.overrides = args.override
    result = _run(args, lambda task: task.train(args))
    if result is not None:
        print(json.dumps(result, default=str))


def evaluate(argv=None):
    parser = _parser("Evaluate a checkpoint (Global.checkpoint, else the run's best, else its newest).")
    parser.add_argument("--split", default="test", help="data split to evaluate (default: test)")
    args = parser.parse_args(argv)
    args.overrides = args.override
    result = _run(args, lambda task: task.evaluate(args))
    print(json.dumps(result, indent=2, default=str))


def export(argv=None):
    parser = _parser("Export an inference model with paddle.jit.save.")
    parser.add_argument("--output", default=None, help="path prefix (default: <run_dir>/inference/model)")
    args = parser.parse_args(argv)
    args.overrides = args.override
    path = _run(args, lambda task: task.export(args))
    print(f"exported to {path}")
