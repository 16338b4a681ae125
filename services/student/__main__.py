"""`python -m services.student` = `score serve student`."""

import sys

from services.cli import main

sys.exit(main(["serve", "student", *sys.argv[1:]]))
