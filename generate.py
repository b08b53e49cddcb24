#!/usr/bin/env python3
"""generate.py: see `python generate.py --help` (the body is physdiff/cli/generate.py)."""

from physdiff.cli.generate import main

if __name__ == "__main__":
    main()
