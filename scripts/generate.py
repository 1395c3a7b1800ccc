"""`python scripts/generate.py ARGS` = `mta generate ARGS`: runs mta/cli/generate.py."""

import sys

from mta.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
