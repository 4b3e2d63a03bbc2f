"""`python -m prunefuse_hf.cli` (what `accelerate launch -m prunefuse_hf.cli` runs)."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
