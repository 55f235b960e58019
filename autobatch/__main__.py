"""``python -m autobatch``: the same command line as the ``autobatch`` console script."""

import sys

from autobatch.cli import main

sys.exit(main())
