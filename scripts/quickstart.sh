#!/usr/bin/env bash
# Run the README's quick start literally: every command of the first ```bash block under "## Quick start",
# in order, from the project root. CI runs this on a fresh clone, so the README cannot promise what fails.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t commands < <(awk '
    /^## Quick start/ { section = 1; next }
    section && /^## / { exit }
    section && /^```bash/ { block = 1; next }
    block && /^```/ { exit }
    block { sub(/[[:space:]]+#.*$/, ""); if (length($0)) print }
' README.md)

if [ "${#commands[@]}" -eq 0 ]; then
    echo "no commands found in the README's quick start" >&2
    exit 1
fi
for command in "${commands[@]}"; do
    echo "==> $command"
    bash -c "$command"
done
