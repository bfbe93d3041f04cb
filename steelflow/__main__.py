"""``python -m steelflow``: the same command as ``steelflow``."""

import sys

from steelflow.cli import main

sys.exit(main())
