"""``python -m lpa_domainbed.tools.bench``."""

import sys

from lpa_domainbed.tools.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
