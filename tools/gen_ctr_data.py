"""Write synthetic CTR data (Criteo TSV/CSV or PaddleRec slot text) with power-law features and a
planted model; prints the Bayes-optimal AUC and writes ``<out>.meta.json``.

    python tools/gen_ctr_data.py --out data/ctr_syn/train.txt --rows 1e7 --vocab 4e6 --zipf 1.05
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_suite.ads.generator import main  # noqa: E402

if __name__ == "__main__":
    main()
