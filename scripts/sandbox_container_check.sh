#!/usr/bin/env bash
# The sandbox in the container configuration compose gives the model services, for real: uid 10001, cap_drop ALL,
# no-new-privileges, deploy/seccomp-sandbox.json. Runs the whole hostile suite (tests/sandbox/hostile_runner.py)
# there, then checks that under Docker's default seccomp profile the sandbox refuses to run code and says why.
#
#   scripts/sandbox_container_check.sh            # exit status 0: every case contained, and the refusal is clean
#
# Needs a Docker engine and a Debian bookworm image with python3.11 and bubblewrap: $SANDBOX_TEST_IMAGE, or
# score-sandbox-test:bookworm, built here with debootstrap (as root, from a Debian mirror) when missing. The
# project and the venv's site-packages are mounted read-only; nothing is built into the image.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
IMAGE="${SANDBOX_TEST_IMAGE:-score-sandbox-test:bookworm}"
SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase --include=python3.11,bubblewrap,util-linux bookworm "$rootfs" \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    tar -C "$rootfs" -c . | docker import - "$IMAGE"
    rm -rf "$rootfs"
fi

run() {   # run [docker options...] -- command...
    local opts=()
    while [ "$1" != "--" ]; do opts+=("$1"); shift; done
    shift
    docker run --rm --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges "${opts[@]}" \
        -v "$ROOT:/src:ro" -v "$SITE:/deps:ro" -e PYTHONPATH=/src:/deps -e HOME=/tmp -w /src "$IMAGE" "$@"
}

echo "== hostile suite, uid 10001, cap_drop ALL, seccomp=deploy/seccomp-sandbox.json"
run --security-opt "seccomp=$ROOT/deploy/seccomp-sandbox.json" -- python3.11 -m tests.sandbox.hostile_runner \
    | tee /dev/stderr | tail -1 | python3 -c 'import json, sys; r = json.loads(sys.stdin.read()); sys.exit(r["failures"] != 0)'

echo "== Docker's default seccomp profile: code execution must be refused, with the reason"
run -- python3.11 -c '
from shared.sandbox.process import SandboxError
from shared.sandbox.report import sandbox_report
from shared.sandbox.sandbox import Sandbox
report = sandbox_report()
print(report["problem"])
assert not report["ok"] and "seccomp-sandbox.json" in report["problem"], report
try:
    Sandbox().run("print(1)")
except SandboxError as exc:
    print("refused:", str(exc)[:120])
else:
    raise SystemExit("code ran without the boundary")
'
echo "container check passed"
