"""Hessian spectrum of a classification model: python tools/hessian.py -c CONFIG [-o Section.key=value ...] [--run DIR]

See paddle_suite/hessian/tool.py for what it does and writes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_suite.hessian.tool import main  # noqa: E402

if __name__ == "__main__":
    main()
