"""``python -m lpa_domainbed.tools.figures``: the command line (:func:`~.cli.main`)."""

import sys

from lpa_domainbed.tools.figures.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
