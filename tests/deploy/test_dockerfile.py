"""The Dockerfile and .dockerignore, read as text (no Docker engine needed); the image's HEALTHCHECK command is
run for real against a live /health endpoint."""

from __future__ import annotations

import fnmatch
import http.server
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# What the build copies: excluding any of these would break the image.
BUILD_INPUTS = ("requirements.lock", "pyproject.toml", "README.md", "shared/settings.py", "services/cli/__init__.py",
                "configs/demo.yaml", "scripts/check_lock.py")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def build_args(text: str) -> dict[str, str]:
    return dict(rest.partition("=")[::2] for keyword, rest in instructions(text) if keyword == "ARG")


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    all_stages, args = stages(text), build_args(text)
    if len(all_stages) < 2:
        problems.append("not multi-stage")
        return problems
    final = all_stages[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage runs as root")
    runs = " ".join(rest for keyword, rest in instructions(text) if keyword == "RUN")
    if not re.search(r"pip install [^;&]*--index-url \"?\$\{?TORCH_INDEX_URL\}?\"? [^;&]*torch==2\.13\.0", runs):
        problems.append("torch==2.13.0 is not installed from ${TORCH_INDEX_URL}")
    if args.get("TORCH_INDEX_URL") != "https://download.pytorch.org/whl/cpu":
        problems.append("TORCH_INDEX_URL is not a build argument defaulting to the CPU index")
    if args.get("PIP_INDEX_URL") != "https://pypi.org/simple":
        problems.append("PIP_INDEX_URL is not a build argument defaulting to PyPI")
    for index, host in (("TORCH_INDEX_URL", "TORCH_TRUSTED_HOST"), ("PIP_INDEX_URL", "PIP_TRUSTED_HOST")):
        if host not in args or not re.search(r"\$\{%s:\+--trusted-host \"?\$\{%s\}\"?\}" % (host, host), runs):
            problems.append(f"{host} is not a build argument passed to the install from {index}")
    if not re.search(r"pip install --index-url \"?\$\{?PIP_INDEX_URL\}?\"? [^;&]*-c \S*requirements\.lock", runs):
        problems.append("requirements.lock does not constrain the install from ${PIP_INDEX_URL}")
    if re.search(r"pip install [^;&]*-r \S*requirements\.lock", " ".join(r for k, r in final if k == "RUN")):
        problems.append("the runtime stage installs the whole lock, test tools included")
    if not re.search(r"check_lock\.py \S*requirements\.lock", runs):
        problems.append("the installed packages are not checked against requirements.lock")
    leaked = [name for name in ("PIP_INDEX_URL", "PIP_TRUSTED_HOST", "TORCH_INDEX_URL", "TORCH_TRUSTED_HOST")
              if any(name in rest for keyword, rest in final if keyword in ("ARG", "ENV"))]
    if leaked:
        problems.append(f"the runtime stage keeps index settings: {leaked}")
    base = args.get("PYTHON_IMAGE", "")
    if not re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base) or final[0][1].split()[0] != "${PYTHON_IMAGE}":
        problems.append("the runtime stage is not a pinned python:3.11.x-slim")
    if not any(keyword == "HEALTHCHECK" and "CMD" in rest for keyword, rest in final):
        problems.append("no HEALTHCHECK")
    if ("ENTRYPOINT", '["score"]') not in final:
        problems.append('ENTRYPOINT is not ["score"]')
    if ("EXPOSE", "8000-8003") not in final:
        problems.append("ports 8000-8003 not exposed")
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    if "SCORE_HOME=/data" not in env or not re.search(r"chown \S+ /data", " ".join(r for k, r in final if k == "RUN")):
        problems.append("SCORE_HOME=/data is not owned by the service user")
    return problems


def ignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or a folder above it decides; `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.removeprefix("!").removeprefix("**/")
        if any(fnmatch.fnmatch(prefix, bare) for prefix in prefixes) or fnmatch.fnmatch(parts[-1], bare):
            result = not negated
    return result


def test_dockerfile_has_what_the_deployment_needs():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


BROKEN = {
    "single stage": (lambda t: re.sub(r"FROM \$\{PYTHON_IMAGE\} AS runtime.*", "", t, flags=re.S), "not multi-stage"),
    "root": (lambda t: t.replace("USER score", "USER root"), "runs as root"),
    "unpinned torch": (lambda t: t.replace("torch==2.13.0", "torch"), "torch==2.13.0"),
    "fixed index": (lambda t: t.replace('"${TORCH_INDEX_URL}"', "https://download.pytorch.org/whl/cpu"), "torch==2.13.0"),
    "no lock": (lambda t: t.replace("-c /tmp/requirements.lock", ""), "requirements.lock does not constrain"),
    "whole lock in the image": (lambda t: t.replace("-c /tmp/requirements.lock -e .", "-r /tmp/requirements.lock"),
                                "requirements.lock does not constrain"),
    "no lock check": (lambda t: t.replace("RUN python /tmp/check_lock.py /tmp/requirements.lock", ""), "checked"),
    "fixed pypi": (lambda t: t.replace('--index-url "${PIP_INDEX_URL}"', "--index-url https://pypi.org/simple"),
                   "does not constrain"),
    "trusted host ignored": (lambda t: t.replace('${PIP_TRUSTED_HOST:+--trusted-host "${PIP_TRUSTED_HOST}"}', ""),
                             "PIP_TRUSTED_HOST"),
    "index kept in the image": (lambda t: t.replace("ENV PATH=/opt/venv/bin:$PATH \\\n    SCORE_HOME",
                                                    "ENV PIP_INDEX_URL=${PIP_INDEX_URL} PATH=/opt/venv/bin:$PATH \\\n    SCORE_HOME"),
                                "keeps index settings"),
    "no healthcheck": (lambda t: re.sub(r"HEALTHCHECK .*?\n(?=ENTRYPOINT)", "", t, flags=re.S), "HEALTHCHECK"),
    "latest python": (lambda t: t.replace("python:3.11.13-slim-bookworm", "python:latest"), "pinned"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_dockerfiles_are_caught(case):
    mutate, expected = BROKEN[case]
    broken = mutate(DOCKERFILE.read_text())
    assert broken != DOCKERFILE.read_text()
    assert any(expected in problem for problem in dockerfile_problems(broken))


def test_dockerignore_keeps_environments_and_history_out_but_the_build_inputs_in():
    patterns = ignore_patterns()
    for path in (".venv/bin/python", ".git/HEAD", "bench/results/x.json", "shared/__pycache__/a.pyc",
                 ".pytest_cache/v", "score_distill.egg-info/PKG-INFO", "tests/conftest.py", "scripts/quickstart.sh",
                 ".build/offline/wheels/torch.whl"):
        assert ignored(path, patterns), path
    for path in BUILD_INPUTS:
        assert (ROOT / path).exists() and not ignored(path, patterns), path


# --- the image's HEALTHCHECK, run -----------------------------------------------------------------------


def healthcheck_command(cmdline_path: Path) -> list[str]:
    rest = next(rest for keyword, rest in instructions(DOCKERFILE.read_text()) if keyword == "HEALTHCHECK")
    command = shlex.split(rest[rest.index("CMD") + 3:])
    assert command[:2] == ["python", "-c"]
    return [sys.executable, "-c", command[2].replace("/proc/1/cmdline", str(cmdline_path))]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_image_healthcheck_finds_the_port_in_pid1s_command_line(tmp_path, health_server):
    cmdline = tmp_path / "cmdline"
    # docker-init (compose `init: true`) keeps the service's arguments in its own command line
    cmdline.write_text("\0".join(["/sbin/docker-init", "--", "score", "serve", "student", "--host", "0.0.0.0",
                                  "--port", str(health_server)]) + "\0")
    ok = subprocess.run(healthcheck_command(cmdline), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    cmdline.write_text("\0".join(["score", "serve", "trainer", "--port", "1"]) + "\0")
    down = subprocess.run(healthcheck_command(cmdline), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert down.returncode != 0
