"""`python scripts/import_hf.py ARGS` = `mta import-hf ARGS`: runs mta/cli/import_hf.py."""

import sys

from mta.cli.import_hf import main

if __name__ == "__main__":
    sys.exit(main())
