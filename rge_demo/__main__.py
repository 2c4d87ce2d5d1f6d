"""``python -m rge_demo <command> ...``: the command line, :func:`rge_demo.cli.main`."""

import sys

from rge_demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
