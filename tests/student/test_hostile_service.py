"""The hostile-code suite through the student service: a real process, real HTTP, real sandboxes.

`scripts/hostile_probe.py` sends every snippet as a trusted prefix step (replayed with `max_turns: 0`, the path
model-written code takes through the service), each followed by a step that must still work; each must be
contained with a clear observation, the service's secret must never show, and afterwards the service must answer
`/health` and a normal rollout within 2 s. This test also checks what the probe cannot see from outside: nothing
changed on the host, and the service process survived and cannot be dumped.
"""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service_process import ServiceProcess
from tests.sandbox.hostile_snippets import CANARY_PATH, ESCAPE_PATHS, SCORE_HOMES, SECRET_ENV

pytestmark = pytest.mark.slow
SECRET = "hostile-suite-secret-4f1c9a"
PROBE = Path(__file__).resolve().parents[2] / "scripts" / "hostile_probe.py"


def test_hostile_suite_is_contained_by_the_service(score_home, tmp_path):
    open(CANARY_PATH, "w").write("canary")
    for path in ESCAPE_PATHS:
        if os.path.exists(path):
            os.remove(path)
    home_before = sorted(os.listdir(score_home))
    service = ServiceProcess("student", home=score_home, log_dir=tmp_path, env={SECRET_ENV: SECRET})
    try:
        service.wait_ready(headers={"Authorization": f"Bearer {SECRET}"})
        probe = subprocess.run([sys.executable, str(PROBE), "--student-url", service.url, "--token", SECRET,
                                "--secret", SECRET], capture_output=True, text=True, timeout=900,
                               env={**os.environ, "SCORE_HOSTILE_ID": str(os.getpid())})   # the same paths as here
        assert probe.returncode == 0, probe.stdout[-6000:] + probe.stderr[-2000:]
        assert '"not_contained": []' in probe.stdout
        assert os.path.exists(CANARY_PATH), "a snippet deleted a file outside the sandbox"
        assert not [p for p in ESCAPE_PATHS if os.path.exists(p)], "a snippet wrote outside the sandbox"
        assert sorted(os.listdir(score_home)) == home_before, "a snippet changed SCORE_HOME"
        assert not any(os.path.exists(f"{home}/poisoned-{os.getpid()}") for home in SCORE_HOMES)
        assert service.process.poll() is None, "the service died"
        # The service process is not dumpable: same-uid processes cannot ptrace it or read its memory.
        ready = httpx.get(f"{service.url}/ready", headers={"Authorization": f"Bearer {SECRET}"}).json()
        assert ready["sandbox"]["service_undumpable"] is True
    finally:
        service.stop()
        if os.path.exists(CANARY_PATH):
            os.remove(CANARY_PATH)
