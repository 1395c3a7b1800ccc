"""`python scripts/docstring_corpus.py --out DIR`: runs mta/data/docstring_corpus.py."""

import sys

from mta.data.docstring_corpus import main

if __name__ == "__main__":
    sys.exit(main())
