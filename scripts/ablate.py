"""`python scripts/ablate.py ARGS` = `mta ablate ARGS`: runs mta/cli/ablate.py."""

import sys

from mta.cli.ablate import main

if __name__ == "__main__":
    sys.exit(main())
