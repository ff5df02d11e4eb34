"""Command line: ``python -m conformance`` (also the ``state-dict-conformance`` script)."""

import sys

from conformance.cli import main

if __name__ == "__main__":
    sys.exit(main())
