"""Analyse a trained KGE checkpoint (see ``paddle_suite.kge.analysis``).

    # singular values of SpaceE's relation maps by relation category: PNG + CSV + JSON
    python tools/kge_analysis.py spectra -c configs/spacee_umls.yaml [-o Global.checkpoint=DIR] --out DIR
    python tools/kge_analysis.py spectra --checkpoint RUN/best --out DIR

    # entity / relation embeddings as .npy with their vocabularies
    python tools/kge_analysis.py export --checkpoint RUN/best --out DIR

The checkpoint is ``--checkpoint`` (a checkpoint directory, ``best``/``latest`` with ``-c``, or a run
directory), else ``Global.checkpoint``, else the run's ``best/``, else its newest ``checkpoints/step_*``
(``Run.resolve_checkpoint``); without ``-c`` the run's saved ``config.yaml`` is used.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddle_suite  # noqa: E402,F401  (MKL_DEBUG_CPU_TYPE before paddle)
from paddle_suite.config import ConfigError  # noqa: E402
from paddle_suite.data import DatasetNotFound  # noqa: E402
from paddle_suite.kge import analysis  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("spectra", "relation-matrix singular values by category (SpaceE)"),
                            ("export", "entity/relation embeddings with vocabularies")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("-c", "--config", help="YAML config (default: config.yaml of the checkpoint's run)")
        sub.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
        sub.add_argument("--checkpoint", help="checkpoint directory (overrides Global.checkpoint)")
        sub.add_argument("--out", required=True, help="output directory")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        config, task, model, checkpoint, entities, relations = analysis.load_run(
            args.config, args.checkpoint, args.override
        )
        if args.command == "spectra":
            if not hasattr(model, "relation_matrices"):
                raise analysis.RunError(
                    f"{config['Arch']['name']} has no relation matrices: 'spectra' needs a SpaceE checkpoint"
                )
            short = os.path.join(*os.path.normpath(str(checkpoint)).split(os.sep)[-3:])
            title = f"{config['Arch']['name']} on {task.dataset.name}: {short}"
            summary, paths = analysis.analyse_spectra(model, task.dataset.train, relations, args.out, title)
            report = {
                "checkpoint": str(checkpoint),
                "files": {k: str(v) for k, v in paths.items()},
                "by_category": {
                    c: {"relations": e["relations"],
                        **{m: round(e[m]["median_min_normalised_singular_value"], 4) for m in summary["maps"]}}
                    for c, e in summary["by_category"].items()
                },
            }
        else:
            paths = analysis.export_embeddings(model, entities, relations, args.out)
            report = {"checkpoint": str(checkpoint), "files": {k: str(v) for k, v in paths.items()}}
    except (analysis.RunError, ConfigError, DatasetNotFound, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
