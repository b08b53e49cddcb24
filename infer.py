#!/usr/bin/env python3
"""infer.py: see `python infer.py --help` (the body is physdiff/cli/infer.py)."""

from physdiff.cli.infer import main

if __name__ == "__main__":
    main()
