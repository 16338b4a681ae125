"""The hostile-code suite through the student service: a real process, real HTTP, real sandboxes.

Every snippet goes in as a trusted prefix step (replayed with `max_turns: 0`), which is the path
model-written code takes through the service; each must be contained with a clear observation, the
service's secret must never show, nothing may change outside the sandbox, and the service must keep
serving afterwards.
"""

import os

import httpx
import pytest

from tests.service_process import ServiceProcess
from tests.tools.hostile_snippets import CANARY_PATH, ESCAPE_PATHS, HOSTILE_CASES, SECRET_ENV

pytestmark = pytest.mark.slow
SECRET = "hostile-suite-secret-4f1c9a"


def _item(name, code):
    return {"task": {"id": name, "question": "Run the code."},
            "prefix_steps": [{"kind": "plan", "thought": "run it"}, {"kind": "act", "thought": "", "code": code}]}


def test_hostile_suite_is_contained_by_the_service(score_home, tmp_path):
    open(CANARY_PATH, "w").write("canary")
    for path in ESCAPE_PATHS:
        if os.path.exists(path):
            os.remove(path)
    service = ServiceProcess("student", home=score_home, log_dir=tmp_path, env={SECRET_ENV: SECRET})
    headers = {"Authorization": f"Bearer {SECRET}"}
    try:
        service.wait_ready(headers=headers)
        body = {"items": [_item(case.name, case.code) for case in HOSTILE_CASES], "max_turns": 0}
        response = httpx.post(f"{service.url}/v1/rollouts", json=body, headers=headers, timeout=600)
        assert response.status_code == 200, response.text
        episodes = response.json()["episodes"]
        assert len(episodes) == len(HOSTILE_CASES)
        failures = []
        for case, episode in zip(HOSTILE_CASES, episodes):
            observation = episode["steps"][1]["observation"] or ""
            if not any(phrase in observation.lower() for phrase in case.expect):
                failures.append(f"{case.name}: expected one of {case.expect}, got {observation[:300]!r}")
            if SECRET in observation:
                failures.append(f"{case.name}: the service's secret leaked")
        assert not failures, "\n".join(failures)

        assert os.path.exists(CANARY_PATH), "a snippet deleted a file outside the sandbox"
        assert not [p for p in ESCAPE_PATHS if os.path.exists(p)], "a snippet wrote outside the sandbox"
        assert service.process.poll() is None, "the service died"
        assert httpx.get(f"{service.url}/health").status_code == 200
        benign = {"items": [_item("benign", "x = 6 * 7\nfinal_answer_print(x)")], "max_turns": 0}
        after = httpx.post(f"{service.url}/v1/rollouts", json=benign, headers=headers, timeout=60).json()
        assert after["episodes"][0]["final_answer"] == "42"
    finally:
        service.stop()
        if os.path.exists(CANARY_PATH):
            os.remove(CANARY_PATH)
