"""`python scripts/train.py ARGS` = `mta train ARGS`: runs mta/cli/train.py."""

import sys

from mta.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
