# The two entry points a new user needs: `make test` and (with the coordinator) `make demo`.
.PHONY: setup test test-fast bench

setup:
	bash scripts/setup.sh

# Everything from nothing, then the whole suite (slow end-to-end tests included).
test: setup
	.venv/bin/python -m pytest -q

# Without the slow end-to-end tests.
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

bench: setup
	.venv/bin/python bench/student_batching.py
