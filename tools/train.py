"""Train a model: python tools/train.py -c CONFIG [-o Section.key=value ...]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_suite.cli import train  # noqa: E402

if __name__ == "__main__":
    train()
