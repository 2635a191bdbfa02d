"""Entry point: ``python -m jobs`` (and the ``kubetrain-jobs`` console script)."""

import sys

from jobs.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
