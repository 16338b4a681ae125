"""With SCORE_API_TOKEN set, every endpoint of every service but /health answers 401 without the bearer token.

The routes come from each service's own OpenAPI document, so a route added later is covered without editing
this file.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from shared.settings import Settings
from tests.service_apps import SERVICES, build_app

TOKEN = "auth-test-token-8f3a"
# One real call per service that succeeds with the token: the token opens the door, not just /ready.
AUTHORIZED_CALL = {
    "coordinator": ("GET", "/v1/runs", None),
    "student": ("GET", "/v1/models", None),
    "teacher": ("POST", "/v1/judgements", {"items": [{"kind": "answer", "prediction": "989.0", "true_answer": 989}]}),
    "trainer": ("GET", "/v1/jobs", None),
}


def operations(spec: dict) -> list[tuple[str, str]]:
    """(METHOD, concrete path) for every operation but /health; path parameters get a placeholder value."""
    return [(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
            for path, item in spec["paths"].items() for method in item if path != "/health"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_endpoint_but_health_needs_the_token(service, score_home, redis_url):
    with TestClient(build_app(service, score_home, redis_url, api_token=TOKEN)) as client:
        assert client.get("/health").status_code == 200
        spec = client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        routes = operations(spec)
        assert len(routes) >= 5, routes
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong-token-0000"}, {"Authorization": TOKEN}):
                response = client.request(method, path, json={}, headers=headers)
                assert response.status_code == 401, (service, method, path, headers, response.status_code)
                assert response.json()["error"]["type"] == "unauthorized"
        assert client.get("/ready", headers={"Authorization": f"Bearer {TOKEN}"}).status_code in (200, 503)
        assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        method, path, body = AUTHORIZED_CALL[service]
        authorized = client.request(method, path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert authorized.status_code == 200, authorized.text


def test_services_refuse_a_placeholder_token():
    from pydantic import ValidationError

    for placeholder in ("changeme", "secret", "short"):
        with pytest.raises(ValidationError, match="SCORE_API_TOKEN"):
            Settings(api_token=placeholder)
    assert Settings(api_token="").api_token is None  # compose passes an empty value when no token is set
