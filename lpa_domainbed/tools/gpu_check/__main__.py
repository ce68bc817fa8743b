"""``python -m lpa_domainbed.tools.gpu_check``."""

import sys

from lpa_domainbed.tools.gpu_check.cli import main

if __name__ == "__main__":
    sys.exit(main())
