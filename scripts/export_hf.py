"""`python scripts/export_hf.py ARGS` = `mta export-hf ARGS`: runs mta/cli/export_hf.py."""

import sys

from mta.cli.export_hf import main

if __name__ == "__main__":
    sys.exit(main())
