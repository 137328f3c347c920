"""Evaluate a checkpoint: python tools/eval.py -c CONFIG [-o Global.checkpoint=DIR] [--split test]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_suite.cli import evaluate  # noqa: E402

if __name__ == "__main__":
    evaluate()
