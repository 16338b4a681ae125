"""Contract tests: schemathesis against every service's own OpenAPI document.

Each service app is built from its factory and reached in-process over ASGI (no sockets, no process start-up,
so the module stays within a few minutes on two cores); the first call starts the app's lifespan, so
requests meet the same engine, sandboxes, Redis client and job manager a served process has. Every operation
gets positive and negative inputs, and each response must not be a 5xx and must match what the document
declares for it: status code, content type and body schema.

Generation cost is bounded here, not in the services: a valid request may legitimately ask the CPU student for
64 samples of thousands of tokens, or 64 sandboxed episodes per item. Before each call, the few knobs that
multiply model work are clamped to small values (only when they are valid integers or lists, so negative
cases stay negative); everything else goes to the service as generated.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.contract.conftest import openapi_schema

EXAMPLES_PER_OPERATION = 15
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
BOUNDED = settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))

coordinator = openapi_schema("coordinator")
student = openapi_schema("student")
teacher = openapi_schema("teacher")
trainer = openapi_schema("trainer")


# Knobs that multiply model or sandbox work, wherever they appear in a body, and the most the test lets through.
WORK_CAPS = {"n": 2, "max_tokens": 16, "max_completion_tokens": 16, "max_turns": 2, "max_judge_tokens": 16}
LIST_CAPS = {"items": 2, "prefix_steps": 3}


def _bounded(value):
    if isinstance(value, list):
        return [_bounded(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        # Floats too: the models coerce 28.0 to 28.
        if key in WORK_CAPS and isinstance(item, (int, float)) and not isinstance(item, bool) and item > WORK_CAPS[key]:
            item = WORK_CAPS[key]
        elif key in LIST_CAPS and isinstance(item, list) and len(item) > LIST_CAPS[key]:
            item = item[:LIST_CAPS[key]]
        out[key] = _bounded(item)
    return out


def _checks(case) -> list:
    if case.path == "/ready":
        # A 503 is /ready's documented answer until the app's first health check has run (the coordinator's
        # watcher needs a Redis round trip after start-up); its body is still checked against the envelope.
        return [check for check in CHECKS if check is not not_a_server_error]
    return CHECKS


def _call(case, app):
    if isinstance(case.body, dict):
        case.body = _bounded(case.body)
    case.call_and_validate(app=app, checks=_checks(case), timeout=60)


def _student_defaults(case) -> None:
    """A rollout that leaves its knobs out gets the defaults (8 turns of 256 tokens): more than the time budget
    on two busy cores. Only the defaults are lowered; what the case sends goes as generated (and capped)."""
    if case.path == "/v1/rollouts" and isinstance(case.body, dict) and isinstance(case.body.get("items"), list):
        case.body.setdefault("max_turns", WORK_CAPS["max_turns"])
        if "sampling" not in case.body:
            case.body["sampling"] = {"max_tokens": WORK_CAPS["max_tokens"]}
        elif isinstance(case.body["sampling"], dict):
            case.body["sampling"].setdefault("max_tokens", WORK_CAPS["max_tokens"])


@coordinator.parametrize()
@BOUNDED
def test_coordinator(case, coordinator_app):
    _call(case, coordinator_app)


@student.parametrize()
@BOUNDED
def test_student(case, student_app):
    _student_defaults(case)
    _call(case, student_app)


@teacher.parametrize()
@BOUNDED
def test_teacher(case, teacher_app):
    _call(case, teacher_app)


@trainer.parametrize()
@BOUNDED
def test_trainer(case, trainer_app):
    _call(case, trainer_app)


def test_a_body_that_is_not_text_is_422_naming_the_body(trainer_app):
    # FastAPI's own answer to a body that is not UTF-8 is a bare 400 outside the envelope.
    with TestClient(trainer_app) as client:
        response = client.post("/v1/jobs", content=b'{"dataset": "\xff\xfe"}',
                               headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "body"
