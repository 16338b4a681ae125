# The two entry points a new user needs: `make demo` (the main job) and `make test`.
.PHONY: setup test test-fast bench demo demo-quick teacher-model

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

# The fine-tuned built-in teacher (`builtin:teacher-sft`, about 35 minutes on 2 cores, then cached in SCORE_HOME):
# built on first use otherwise; tests/teacher/test_teacher_sft_floor.py runs only once it is built.
teacher-model: setup
	.venv/bin/python -c 'from shared.observability import configure_logging; configure_logging(service="build"); \
	from shared.models.builtin import ensure_builtin_model; print(ensure_builtin_model("teacher-sft"))'

bench: setup
	.venv/bin/python bench/student_batching.py

# The whole SCoRe pipeline on the built-in suite with tiny models: embedded Redis and the four services on loopback.
demo: setup
	.venv/bin/score demo

# The same on a handful of tasks (minutes).
demo-quick: setup
	.venv/bin/score demo --quick
