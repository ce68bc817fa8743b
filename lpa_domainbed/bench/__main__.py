"""``python -m lpa_domainbed.bench``."""

import sys

from lpa_domainbed.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
