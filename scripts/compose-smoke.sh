#!/usr/bin/env bash
# The compose deployment for real: build the image, `docker-compose up` on free host ports, wait until every
# service is healthy, check the sandbox layers the student and teacher report on /ready, submit a small run
# (configs/compose-smoke.yaml) to the coordinator's REST API, wait for `succeeded`, check its report and
# metrics, and `docker-compose down -v` on any exit. Prints the time of each phase.
#
#   bash scripts/compose-smoke.sh
#
# Without access to the registry images the Dockerfile and compose file name by default (python, redis), the
# script first runs scripts/prepare-offline-build.sh (base images from Debian packages, a wheelhouse and PEP 503
# index from requirements.lock) and serves that index on loopback to a host-network build. SCORE_COMPOSE_OFFLINE
# =1 forces that, =0 forbids it. Without a usable Docker engine it says so and exits 1, or 0 with
# SCORE_SKIP_COMPOSE_SMOKE=1. When scripts/hostile_probe.py exists, it is run against the running student too.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT="${SCORE_SMOKE_PROJECT:-score-smoke}"
CONFIG="${SCORE_SMOKE_CONFIG:-configs/compose-smoke.yaml}"
HEALTH_TIMEOUT="${SCORE_SMOKE_HEALTH_TIMEOUT:-600}"
RUN_TIMEOUT="${SCORE_SMOKE_RUN_TIMEOUT:-2700}"
export SCORE_IMAGE="${SCORE_IMAGE:-score-distill:smoke}"
PYTHON_HOST="$(command -v python3.11 || command -v python3)"

phases=()
phase_start=$SECONDS
phase() {  # close the current phase under the given name
    phases+=("$(printf '%-28s %5d s' "$1" $((SECONDS - phase_start)))")
    echo "--- $1: $((SECONDS - phase_start)) s"
    phase_start=$SECONDS
}
report_phases() {
    echo "compose smoke phases:"
    for line in "${phases[@]}"; do echo "  $line"; done
    echo "  total                        $((SECONDS)) s"
}

if ! command -v docker >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1 \
        || ! docker info >/dev/null 2>&1; then
    echo "compose smoke: no usable Docker engine here (docker, docker-compose and a running dockerd are needed)" >&2
    if [ "${SCORE_SKIP_COMPOSE_SMOKE:-0}" = 1 ]; then
        echo "compose smoke: skipped (SCORE_SKIP_COMPOSE_SMOKE=1)"
        exit 0
    fi
    exit 1
fi

compose() { docker-compose -p "$PROJECT" "$@"; }
index_pid=""
cleanup() {
    status=$?
    trap - EXIT INT TERM
    if [ "$status" -ne 0 ]; then
        echo "compose smoke FAILED (exit $status); last service logs:" >&2
        compose logs --no-color --tail=60 >&2 2>/dev/null || true
    fi
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    if [ -n "$index_pid" ]; then kill "$index_pid" 2>/dev/null || true; fi
    phase "down -v"
    report_phases
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PYTHON_HOST" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- offline build inputs, when the upstream images are not here ----------------------------------------------
offline="${SCORE_COMPOSE_OFFLINE:-auto}"
if [ "$offline" = auto ]; then
    offline=0
    docker image inspect "${PYTHON_IMAGE:-python:3.11.13-slim-bookworm}" >/dev/null 2>&1 || offline=1
fi
if [ "$offline" = 1 ]; then
    OFFLINE_INDEX_PORT="$(free_port)" bash scripts/prepare-offline-build.sh
    set -a
    # shellcheck disable=SC1091
    . .build/offline/compose.env
    set +a
    port="${PIP_INDEX_URL#http://127.0.0.1:}"
    port="${port%%/*}"
    "$PYTHON_HOST" -m http.server --bind 127.0.0.1 --directory .build/offline "$port" >/dev/null 2>&1 &
    index_pid=$!
    phase "prepare offline inputs"
fi

# --- build ------------------------------------------------------------------------------------------------------
# The four services share one image (one `image:` tag, one build section): building it for one service builds
# it for all, and `up --no-build` below starts all four from it.
compose build coordinator >/tmp/score-smoke-build.$$.log 2>&1 \
    || { tail -40 /tmp/score-smoke-build.$$.log >&2; exit 1; }
rm -f /tmp/score-smoke-build.$$.log
if [ -n "$index_pid" ]; then kill "$index_pid" 2>/dev/null || true; index_pid=""; fi
echo "image $SCORE_IMAGE: $(docker image inspect --format '{{.Size}}' "$SCORE_IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
# Nothing of the build's index settings may be left in the image.
if docker image inspect --format '{{json .Config.Env}}' "$SCORE_IMAGE" | grep -qi 'INDEX_URL\|TRUSTED_HOST'; then
    echo "the image's environment keeps index settings" >&2
    exit 1
fi
if docker run --rm --entrypoint python "$SCORE_IMAGE" -c 'import pytest' >/dev/null 2>&1; then
    echo "the runtime image has test tools (pytest)" >&2
    exit 1
fi
phase "build"

# --- up, on free host ports -----------------------------------------------------------------------------------
export SCORE_COORDINATOR_PORT="$(free_port)" SCORE_STUDENT_PORT="$(free_port)" SCORE_TEACHER_PORT="$(free_port)" \
    SCORE_TRAINER_PORT="$(free_port)"
export SCORE_API_TOKEN="${SCORE_API_TOKEN:-}"
COORDINATOR="http://127.0.0.1:$SCORE_COORDINATOR_PORT"
auth=()
if [ -n "$SCORE_API_TOKEN" ]; then auth=(-H "authorization: Bearer $SCORE_API_TOKEN"); fi
compose up -d --no-build
echo "ports: coordinator $SCORE_COORDINATOR_PORT, student $SCORE_STUDENT_PORT, teacher $SCORE_TEACHER_PORT, trainer $SCORE_TRAINER_PORT"

# Healthy means every container's healthcheck passed; the coordinator starts only after the others are healthy.
deadline=$((SECONDS + HEALTH_TIMEOUT))
while :; do
    states="$(for c in $(compose ps -q); do docker inspect --format '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c"; done)"
    if [ "$(echo "$states" | grep -c ' running healthy$')" -eq 5 ]; then break; fi
    if echo "$states" | grep -q ' exited\| dead\| unhealthy$'; then echo "$states" >&2; exit 1; fi
    if [ "$SECONDS" -ge "$deadline" ]; then echo "not healthy after ${HEALTH_TIMEOUT}s:" >&2; echo "$states" >&2; exit 1; fi
    sleep 3
done
echo "$states"
phase "up until healthy"

# --- the sandbox layers the model services report --------------------------------------------------------------
for service in student teacher; do
    port_var="SCORE_${service^^}_PORT"
    ready="$(curl -fsS "${auth[@]}" "http://127.0.0.1:${!port_var}/ready")"
    echo "$ready" | "$PYTHON_HOST" -c '
import json, os, sys
name, ready = sys.argv[1], json.load(sys.stdin)
sandbox = ready.get("sandbox") or {}
# {"ok", "boundary", "problem", "layers": {layer: on}, ...}; older services reported the layers map alone
layers = sandbox.get("layers") if isinstance(sandbox.get("layers"), dict) else sandbox
on = sorted(k for k, v in layers.items() if v is True)
off = sorted(k for k, v in layers.items() if v is False)
ok, boundary, problem = sandbox.get("ok"), sandbox.get("boundary"), sandbox.get("problem")  # no single quotes here
print(f"{name} /ready: sandbox ok={ok} boundary={boundary}; layers on ({len(on)}): {on}; off ({len(off)}): {off}")
required = os.environ.get("SCORE_SMOKE_REQUIRE_LAYERS", "").split()
missing = [k for k in required if not layers.get(k)]
if ready.get("status") != "ready" or not on or missing or ok is False:
    sys.exit(f"{name}: not ready, sandbox not ok ({problem}), or layers off: {missing}")
' "$service"
done
if [ -f scripts/hostile_probe.py ]; then
    probe=(.venv/bin/python scripts/hostile_probe.py --student-url "http://127.0.0.1:$SCORE_STUDENT_PORT")
    if [ -n "$SCORE_API_TOKEN" ]; then probe+=(--token "$SCORE_API_TOKEN"); fi
    "${probe[@]}"
fi
phase "sandbox checks"

# --- a run through the REST API ---------------------------------------------------------------------------------
# The config as JSON, converted by the image's own Python (the host needs no YAML library).
body="$(docker run --rm -i --entrypoint python "$SCORE_IMAGE" -c \
    'import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))' <"$CONFIG")"
run_id="$(curl -fsS "${auth[@]}" -H 'content-type: application/json' -d "$body" "$COORDINATOR/v1/runs" \
    | "$PYTHON_HOST" -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
echo "run $run_id submitted ($CONFIG)"
deadline=$((SECONDS + RUN_TIMEOUT))
last=""
while :; do
    info="$(curl -fsS "${auth[@]}" "$COORDINATOR/v1/runs/$run_id")"
    state="$(echo "$info" | "$PYTHON_HOST" -c 'import json, sys; r = json.load(sys.stdin); print(r["state"], r.get("stage") or "")')"
    if [ "$state" != "$last" ]; then echo "  $((SECONDS - phase_start)) s: $state"; last="$state"; fi
    case "$state" in
        succeeded*) break ;;
        failed*|cancelled*) echo "$info" >&2; exit 1 ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then echo "run not finished after ${RUN_TIMEOUT}s: $info" >&2; exit 1; fi
    sleep 5
done
phase "run until succeeded"

# --- its report and metrics -----------------------------------------------------------------------------------
curl -fsS "${auth[@]}" "$COORDINATOR/v1/runs/$run_id/report" | "$PYTHON_HOST" -c '
import sys
report = sys.stdin.read()
if len(report) < 200 or not report.lstrip().startswith("#"):
    sys.exit("report.md is missing or empty")
print(f"report.md: {len(report)} characters, first line {report.splitlines()[0]!r}")'
curl -fsS "${auth[@]}" "$COORDINATOR/v1/runs/$run_id/metrics" | "$PYTHON_HOST" -c '
import json, sys
metrics = json.load(sys.stdin)
evals = metrics.get("eval") or {}
if not evals:
    sys.exit(f"metrics.json has no held-out results: {sorted(metrics)}")
print(f"metrics.json: eval for {sorted(evals)}")'
phase "report and metrics"
echo "compose smoke passed"
