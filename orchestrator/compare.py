"""python -m orchestrator.compare ...: which run won and what the sweep cost (orchestrator/runs/compare.py)."""

import sys

from orchestrator.runs.compare import main

if __name__ == "__main__":
    sys.exit(main())
