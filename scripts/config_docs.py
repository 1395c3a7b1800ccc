"""`python scripts/config_docs.py ARGS` runs mta/cli/config_docs.py (a checkout's docs tool)."""

import sys

from mta.cli.config_docs import main

if __name__ == "__main__":
    sys.exit(main())
