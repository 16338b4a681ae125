"""The student's OpenAPI document explains every request field."""

from services.student.app import create_app
from tests.student.conftest import student_config


def _request_schemas(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation.get("description") or operation.get("summary"), (method, path)
            ref = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if "$ref" in ref:
                yield ref["$ref"].rsplit("/", 1)[-1]


def test_every_request_field_is_described(score_home):
    spec = create_app(student_config(score_home)).openapi()  # no lifespan needed: the schema is static
    schemas = spec["components"]["schemas"]
    seen, todo, missing = set(), list(_request_schemas(spec)), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for field, prop in schemas[name].get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{name}.{field}")
            for ref in _refs(prop):
                todo.append(ref)
    assert {"RolloutRequest", "ChatCompletionRequest", "LoadWeightsRequest"} <= seen
    assert not missing, missing


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value.rsplit("/", 1)[-1]
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)
