"""`python -m services.teacher` is `score serve teacher`."""

import sys

from services.cli import main

sys.exit(main(["serve", "teacher", *sys.argv[1:]]))
