"""The student's OpenAPI document explains every request field."""

from services.student.app import create_app
from tests.openapi_checks import undescribed
from tests.student.conftest import student_config


def test_every_request_field_is_described(score_home):
    spec = create_app(student_config(score_home)).openapi()  # no lifespan needed: the schema is static
    seen, missing = undescribed(spec)
    assert {"RolloutRequest", "ChatCompletionRequest", "LoadWeightsRequest"} <= seen
    assert not missing, missing
