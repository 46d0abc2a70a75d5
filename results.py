"""The comparison table of the paper as one Hydra multirun: `python results.py preset=small` (or `dcgmm-results ...`). See docs/results.md."""

import sys

from dcgmm.results.launch import main

if __name__ == "__main__":
    sys.exit(main())
