#!/usr/bin/env python3
"""train.py: see `python train.py --help` (the body is physdiff/cli/train.py)."""

from physdiff.cli.train import main

if __name__ == "__main__":
    main()
