"""Checks for every service's OpenAPI document: each operation and each field it reaches is described and exemplified.

The rules (one place, so every service is held to the same ones):

- An operation has a `summary` or a `description`.
- Each of its path, query and header parameters has a `description` and an example (`examples`/`example` on the
  parameter or on its schema).
- An operation with a JSON request body has an example of the whole body: `examples`/`example` on the media type
  (FastAPI's `Body(openapi_examples=...)`) or on the body's schema (a model's
  `model_config = ConfigDict(json_schema_extra={"examples": [...]})`).
- The schemas reached from request bodies and 2xx responses are followed through every `$ref`; each of their
  fields has a `description` and an example (`Field(examples=[...])`). A field that points at another schema
  (`$ref` directly, as array items, as a map's values, or as every non-null option of an `anyOf`/`oneOf`) needs only its
  description: that schema is reached in turn and checked itself, so its own example stands for the field. A
  constant (`Literal["list"]`) is its own example.

`undescribed` reports what lacks a description, `unexemplified` what lacks an example; both name operations
`METHOD path`, parameters `METHOD path ?name` and fields `Schema.field`.
"""

from __future__ import annotations

JSON = "application/json"


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


def operations(spec: dict):
    """(`METHOD path`, operation) for every operation of the document."""
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def parameters(operation: dict) -> list[dict]:
    return [p for p in operation.get("parameters", []) if p.get("in") in {"path", "query", "header"}]


def reached_schemas(spec: dict) -> set[str]:
    """Names of the component schemas reached from request bodies and 2xx responses, through every `$ref`."""
    schemas = spec.get("components", {}).get("schemas", {})
    todo: list[str] = []
    for _, operation in operations(spec):
        todo.extend(_refs(operation.get("requestBody", {})))
        for status, response in operation.get("responses", {}).items():
            if str(status).startswith("2"):
                todo.extend(_refs(response))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_refs(schemas[name]))
    return seen


def _fields(spec: dict, seen: set[str]):
    schemas = spec["components"]["schemas"]
    for name in sorted(seen):
        for field, prop in schemas[name].get("properties", {}).items():
            yield f"{name}.{field}", prop


def undescribed(spec: dict) -> tuple[set[str], list[str]]:
    """(schemas reached from the operations' request and 2xx response bodies, what has no description)."""
    missing = []
    for label, operation in operations(spec):
        if not (operation.get("description") or operation.get("summary")):
            missing.append(label)
        missing.extend(f"{label} ?{p['name']}" for p in parameters(operation) if not p.get("description"))
    seen = reached_schemas(spec)
    missing.extend(label for label, prop in _fields(spec, seen) if not prop.get("description"))
    return seen, missing


def _has_example(node: dict) -> bool:
    return bool(node.get("examples") or "example" in node)


def _points_elsewhere(prop: dict) -> bool:
    """True when the field's value is another schema (which is checked on its own), possibly in a list or map."""
    if "$ref" in prop:
        return True
    if "allOf" in prop and len(prop["allOf"]) == 1:
        return _points_elsewhere(prop["allOf"][0])
    for key in ("items", "additionalProperties"):
        if isinstance(prop.get(key), dict) and _points_elsewhere(prop[key]):
            return True
    options = [o for o in prop.get("anyOf", prop.get("oneOf", [])) if o.get("type") != "null"]
    return bool(options) and all(_points_elsewhere(o) for o in options)


def _body_exemplified(spec: dict, body: dict) -> bool:
    media = body.get("content", {}).get(JSON)
    if media is None:
        return True  # no JSON body: nothing to exemplify
    if _has_example(media):
        return True
    schema = media.get("schema", {})
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return _has_example(schema)


def unexemplified(spec: dict) -> list[str]:
    """What has no example: JSON request bodies (`METHOD path`), parameters and fields, by the module's rules."""
    missing = []
    for label, operation in operations(spec):
        if "requestBody" in operation and not _body_exemplified(spec, operation["requestBody"]):
            missing.append(label)
        missing.extend(f"{label} ?{p['name']}" for p in parameters(operation)
                       if not (_has_example(p) or _has_example(p.get("schema", {}))))
    for label, prop in _fields(spec, reached_schemas(spec)):
        if not (_has_example(prop) or "const" in prop or _points_elsewhere(prop)):
            missing.append(label)
    return missing
