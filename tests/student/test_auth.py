"""With SCORE_API_TOKEN set, everything but /health needs the bearer token."""

from fastapi.testclient import TestClient

from shared.settings import Settings
from services.student.app import create_app
from tests.student.conftest import student_config

TOKEN = "unit-test-token-123"


def test_every_non_health_endpoint_requires_the_token(score_home):
    config = student_config(score_home, settings=Settings(home=score_home, api_token=TOKEN))
    with TestClient(create_app(config)) as client:
        assert client.get("/health").status_code == 200
        paths = [(m, p) for p, item in client.app.openapi()["paths"].items() for m in item if p != "/health"]
        assert len(paths) >= 7
        for method, path in paths:
            response = client.request(method.upper(), path, json={})
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.json()["error"]["type"] == "unauthorized"
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer wrong-token-0000"})
        assert wrong.status_code == 401
        right = client.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200
