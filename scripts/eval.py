"""`python scripts/eval.py ARGS` = `mta eval ARGS`: runs mta/cli/eval.py."""

import sys

from mta.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
