"""`python scripts/bench.py ARGS` = `mta bench ARGS`: runs mta/cli/bench.py."""

import sys

from mta.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
