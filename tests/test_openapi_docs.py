"""Every service's OpenAPI document describes and exemplifies each operation, parameter and field, and its
examples are valid input: each against its own JSON schema, request bodies also against their pydantic models."""

from __future__ import annotations

import copy
import typing

import jsonschema_rs
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, TypeAdapter

from tests.openapi_checks import operations, parameters, reached_schemas, undescribed, unexemplified
from tests.service_apps import SERVICES, build_app

# The apps from their factories only; no lifespan runs, so nothing is loaded or connected.
@pytest.fixture(params=SERVICES)
def app(request, tmp_path):
    redis_url = request.getfixturevalue("redis_url") if request.param == "coordinator" else None
    return build_app(request.param, tmp_path, redis_url)


def _schema_errors(spec: dict, schema: dict, value) -> list[str]:
    # `$ref`s point into the document's components, so the schema is checked inside a copy of them.
    document = {**schema, "components": spec.get("components", {})}
    return [error.message for error in jsonschema_rs.validator_for(document).iter_errors(value)]


def _examples(node: dict) -> list:
    examples = node.get("examples", [])
    if isinstance(examples, dict):  # OpenAPI media-type examples: {name: {"value": ...}}
        examples = [entry["value"] for entry in examples.values()]
    return list(examples) + ([node["example"]] if "example" in node else [])


def _routes(routes):
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # an included router keeps its own routes
            yield from _routes(route.original_router.routes)


def _body_models(app) -> list[type[BaseModel]]:
    return [param.field_info.annotation for route in _routes(app.routes)
            for param in route.dependant.body_params if isinstance(param.field_info.annotation, type)]


def _nested_models(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _nested_models(arg)]


def _field_example_errors(model: type[BaseModel], seen: set) -> list[str]:
    """Each field example of `model` and of the models its fields hold, validated by pydantic as that field."""
    if model in seen:
        return []
    seen.add(model)
    errors = []
    for name, field in model.model_fields.items():
        adapter = TypeAdapter(typing.Annotated[field.annotation, *field.metadata] if field.metadata
                              else field.annotation)
        for example in field.examples or []:
            try:
                adapter.validate_python(example)
            except ValueError as error:
                errors.append(f"{model.__name__}.{name} example {example!r}: {error}")
        for nested in _nested_models(field.annotation):
            errors.extend(_field_example_errors(nested, seen))
    return errors


def test_every_operation_parameter_and_field_is_described_and_exemplified(app):
    spec = app.openapi()
    seen, missing = undescribed(spec)
    assert seen and not missing, missing
    assert unexemplified(spec) == []


def test_every_example_is_valid_against_its_own_schema(app):
    spec = app.openapi()
    schemas = spec["components"]["schemas"]
    errors = []
    for name in reached_schemas(spec):
        for example in _examples(schemas[name]):
            errors += [f"{name}: {e}" for e in _schema_errors(spec, schemas[name], example)]
        for field, prop in schemas[name].get("properties", {}).items():
            for example in _examples(prop):
                errors += [f"{name}.{field}: {e}" for e in _schema_errors(spec, prop, example)]
    for label, operation in operations(spec):
        for param in parameters(operation):
            for example in _examples(param) + _examples(param.get("schema", {})):
                errors += [f"{label} ?{param['name']}: {e}" for e in _schema_errors(spec, param["schema"], example)]
    assert errors == []


def test_request_body_examples_are_accepted_by_their_models(app):
    models = _body_models(app)
    assert models
    errors, seen = [], set()
    for model in models:
        examples = model.model_json_schema().get("examples", [])
        assert examples, f"{model.__name__} has no example"
        for example in examples:
            model.model_validate(copy.deepcopy(example))  # raises, naming the field, when an example is wrong
        errors.extend(_field_example_errors(model, seen))
    assert errors == []


def _error_statuses(operation: dict) -> set[int]:
    error = "#/components/schemas/ErrorResponse"
    return {int(status) for status, response in operation["responses"].items() if not status.startswith("2")
            and response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref") == error}


def test_errors_are_declared_with_the_shared_envelope(app):
    spec = app.openapi()
    for label, operation in operations(spec):
        if " /v1/" not in label:
            continue
        statuses = _error_statuses(operation)
        assert {401, 422} <= statuses, label  # bearer auth and input validation apply to every API route
        if any(p["in"] == "path" and p["name"].endswith("_id") for p in parameters(operation)):
            assert 404 in statuses, label
        if label.endswith("/cancel") or label.endswith("/steps"):
            assert 409 in statuses, label


def test_the_checks_fail_on_a_missing_description_or_example():
    spec = {
        "paths": {"/v1/things/{thing_id}": {"post": {
            "parameters": [{"name": "thing_id", "in": "path", "schema": {"type": "string"}}],
            "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
            "responses": {"200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}}},
        }}},
        "components": {"schemas": {
            "Thing": {"type": "object", "properties": {
                "name": {"type": "string", "description": "Its name."},
                "size": {"type": "integer", "examples": [3]},
                "part": {"$ref": "#/components/schemas/Part", "description": "Its part."},
                "kind": {"const": "thing", "description": "Always `thing`."},
            }},
            "Part": {"type": "object", "properties": {"weight": {"type": "number", "description": "In grams."}}},
        }},
    }
    seen, missing = undescribed(spec)
    assert seen == {"Thing", "Part"}
    assert missing == ["POST /v1/things/{thing_id}", "POST /v1/things/{thing_id} ?thing_id", "Thing.size"]
    assert unexemplified(spec) == ["POST /v1/things/{thing_id}", "POST /v1/things/{thing_id} ?thing_id",
                                   "Part.weight", "Thing.name"]

    fixed = copy.deepcopy(spec)
    operation = fixed["paths"]["/v1/things/{thing_id}"]["post"]
    operation["summary"] = "Replace a thing."
    operation["parameters"][0].update(description="Its id.", examples=["thing-0001"])
    things = fixed["components"]["schemas"]
    things["Thing"]["examples"] = [{"name": "bolt", "size": 3, "part": {"weight": 1.5}, "kind": "thing"}]
    things["Thing"]["properties"]["name"]["examples"] = ["bolt"]
    things["Thing"]["properties"]["size"]["description"] = "How many."
    things["Part"]["properties"]["weight"]["examples"] = [1.5]
    assert undescribed(fixed)[1] == [] and unexemplified(fixed) == []
    assert _schema_errors(fixed, things["Thing"]["properties"]["size"], "three")  # the validation can fail too


def test_a_wrong_field_example_is_caught():
    class Sampling(BaseModel):
        temperature: float = Field(ge=0.0, description="Sampling temperature.", examples=[-0.5])

    assert _field_example_errors(Sampling, set())
