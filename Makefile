# The two entry points a new user needs: `make demo` (the main job) and `make test`.
.PHONY: setup test test-fast bench demo demo-quick

setup:
	bash scripts/setup.sh

# Tests run in TEST_WORKERS processes (pytest-xdist), longest first (tests/conftest.py): much of the suite waits on
# service processes starting, Redis outages and timeouts, which a second worker fills. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

# Everything from nothing, then the whole suite (slow end-to-end tests included).
test: setup
	.venv/bin/python -m pytest -q -n $(TEST_WORKERS) --dist load

# Without the slow end-to-end tests.
test-fast: setup
	.venv/bin/python -m pytest -q -n $(TEST_WORKERS) --dist load -m "not slow"

bench: setup
	.venv/bin/python bench/student_batching.py

# The whole SCoRe pipeline on the built-in suite with tiny models: embedded Redis and the four services on loopback.
demo: setup
	.venv/bin/score demo

# The same on a handful of tasks (minutes).
demo-quick: setup
	.venv/bin/score demo --quick
