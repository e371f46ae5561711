"""python -m orchestrator.scaling ...: how many nodes pay off (the model: orchestrator/tools/scaling.py)."""

import sys

from orchestrator.tools.scaling import main

if __name__ == "__main__":
    sys.exit(main())
