"""``python -m lpa_domainbed.figures``: the command line (:func:`~.cli.main`)."""

import sys

from lpa_domainbed.figures.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
