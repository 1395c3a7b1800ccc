"""`python -m mta COMMAND ARGS` = `mta COMMAND ARGS` (see mta/cli/__init__.py)."""

import sys

from mta.cli import main

if __name__ == "__main__":
    sys.exit(main())
