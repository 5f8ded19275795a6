"""``python -m mwnet``: the same as the ``mwnet`` command."""

import sys

from mwnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
