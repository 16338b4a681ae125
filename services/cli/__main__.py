"""`python -m services.cli`: the same as `score`."""

import sys

from services.cli import main

sys.exit(main())
