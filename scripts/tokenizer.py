"""`python scripts/tokenizer.py ARGS` = `mta tokenizer ARGS`: runs mta/cli/tokenizer.py."""

import sys

from mta.cli.tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
