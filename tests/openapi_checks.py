"""One check for every service's OpenAPI document: each operation and each field it reaches is described."""

from __future__ import annotations


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


def undescribed(spec: dict) -> tuple[set[str], list[str]]:
    """(schemas reached from the operations' request and response bodies, `Schema.field`s with no description).

    Operations without a summary or description are reported as `METHOD path`.
    """
    schemas = spec["components"]["schemas"]
    todo, missing = [], []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if not (operation.get("description") or operation.get("summary")):
                missing.append(f"{method.upper()} {path}")
            todo.extend(_refs(operation.get("requestBody", {})))
            todo.extend(_refs(operation.get("responses", {}).get("200", {})))
            todo.extend(_refs(operation.get("responses", {}).get("201", {})))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for field, prop in schemas[name].get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{name}.{field}")
            todo.extend(_refs(prop))
    return seen, missing
