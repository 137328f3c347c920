"""Export for inference: python tools/export.py -c CONFIG [-o Global.checkpoint=DIR] [--output PREFIX]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_suite.cli import export  # noqa: E402

if __name__ == "__main__":
    export()
