"""Parameter counts and GFLOPs of every registered vision variant, with the papers' numbers beside them.

GFLOPs are multiply-adds / 1e9 of one forward pass on one image at the variant's default size
(224x224 ImageNet variants, 32x32 CIFAR variants), counted by ``paddle_suite.vision.flops``:
the same rule as ``paddle.flops`` for linear layers (which fails in paddle 2.6.2 with numpy 2.x),
plus the FFT token mixing of CCS. The papers' "FLOPs" are multiply-adds as well.

Prints one line per variant and ``RESULT {json}`` with ``{"<variant>": {"params": int,
"gflops": float}}`` for every variant; ``--write`` also saves ``bench/results/vision_models.json``
with the papers' numbers and the relative differences. Builds each model once (the largest has
72M parameters): about a minute on one core.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import paddle_suite  # noqa: E402,F401
import paddle  # noqa: E402

from paddle_suite.io import atomic_write  # noqa: E402
from paddle_suite.registry import ARCHS  # noqa: E402
from paddle_suite.vision import models  # noqa: E402
from paddle_suite.vision.flops import count_macs  # noqa: E402

#: (parameters in millions, GFLOPs) as published; None where the paper gives no number for our variant
PAPER = {
    "s2mlp_wide": (71.0, 14.0),
    "s2mlp_deep": (51.0, 10.5),
    "s2mlpv2_small": (25.0, 6.9),
    "s2mlpv2_medium": (55.0, 16.3),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="save bench/results/vision_models.json")
    args = parser.parse_args(argv)
    paddle.seed(0)
    result, table = {}, {}
    for name in models.VARIANTS:
        model = ARCHS.get(name)()
        size = 224 if name in models.IMAGENET_VARIANTS else 32
        params = sum(int(np.prod(p.shape)) for p in model.parameters())
        gflops = count_macs(model, size) / 1e9
        del model
        result[name] = {"params": params, "gflops": round(gflops, 4)}
        row = dict(result[name], image_size=size)
        line = f"{name:18s} {params / 1e6:7.2f}M params {gflops:7.3f} GFLOPs @ {size}"
        if name in PAPER:
            paper_params, paper_gflops = PAPER[name]
            row.update(
                paper_params_m=paper_params,
                paper_gflops=paper_gflops,
                params_rel_diff=params / (paper_params * 1e6) - 1,
                gflops_rel_diff=gflops / paper_gflops - 1,
            )
            line += f"   paper {paper_params}M ({row['params_rel_diff']:+.1%}), {paper_gflops} GFLOPs ({row['gflops_rel_diff']:+.1%})"
        table[name] = row
        print(line, flush=True)
    if args.write:
        with atomic_write(REPO / "bench" / "results" / "vision_models.json") as handle:
            handle.write(json.dumps(table, indent=2) + "\n")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
