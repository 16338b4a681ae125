"""`python -m services.trainer` = `score serve trainer`."""

import sys

from services.cli import main

sys.exit(main(["serve", "trainer", *sys.argv[1:]]))
