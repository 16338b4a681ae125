"""What any request can make a service do is bounded: every number in every request schema has both limits,
bodies are size-limited before parsing, and the bearer token is checked before a byte of the body is read."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient

from tests.service_apps import SERVICES, build_app
from tests.service_process import ServiceProcess

TOKEN = "bounds-test-token"
# The coordinator refuses to be built without a Redis URL; no lifespan runs here, so this one is never dialled.
UNDIALLED_REDIS = "redis://127.0.0.1:1"


# --- every number bounded -----------------------------------------------------------------------------


def _unbounded_numbers(spec: dict, node: dict, where: str, found: set[str], seen: set) -> None:
    while "$ref" in node:
        node = spec["components"]["schemas"][node["$ref"].split("/")[-1]]
    for key in ("anyOf", "oneOf", "allOf"):
        for option in node.get(key, []):
            _unbounded_numbers(spec, option, where, found, seen)
    kind = node.get("type")
    if kind in ("integer", "number"):
        has_min = "minimum" in node or "exclusiveMinimum" in node
        has_max = "maximum" in node or "exclusiveMaximum" in node
        if not (has_min and has_max) and "enum" not in node and "const" not in node:  # a listed value is bounded
            found.add(where)
    if kind == "array" and "items" in node:
        _unbounded_numbers(spec, node["items"], f"{where}[]", found, seen)
    if "properties" in node or isinstance(node.get("additionalProperties"), dict):
        if (id(node), where) in seen:
            return
        seen.add((id(node), where))
        for name, sub in node.get("properties", {}).items():
            _unbounded_numbers(spec, sub, f"{where}.{name}", found, seen)
        if isinstance(node.get("additionalProperties"), dict):
            _unbounded_numbers(spec, node["additionalProperties"], f"{where}{{}}", found, seen)


@pytest.mark.parametrize("service", SERVICES)
def test_every_number_a_request_carries_has_a_lower_and_an_upper_bound(service, tmp_path):
    spec = build_app(service, tmp_path, UNDIALLED_REDIS).openapi()
    found: set[str] = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                _unbounded_numbers(spec, body, f"{method.upper()} {path} body", found, set())
            for parameter in operation.get("parameters", []):
                _unbounded_numbers(spec, parameter.get("schema", {}),
                                   f"{method.upper()} {path} {parameter['in']}.{parameter['name']}", found, set())
    assert sorted(found) == []


# --- bodies: size and auth before reading, in the apps ---------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_an_unauthenticated_body_is_401_and_an_oversized_one_413_in_the_envelope(service, tmp_path):
    app = build_app(service, tmp_path, UNDIALLED_REDIS, api_token=TOKEN, max_body_bytes=4096)
    client = TestClient(app)  # no lifespan: these requests must be answered before any route runs
    path = {"coordinator": "/v1/runs", "student": "/v1/rollouts", "teacher": "/v1/judgements",
            "trainer": "/v1/jobs"}[service]
    big = b"{" + b" " * 10_000 + b"}"

    refused = client.post(path, content=big, headers={"content-type": "application/json"})
    assert refused.status_code == 401
    assert refused.json()["error"]["param"] == "header.authorization"

    auth = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    too_large = client.post(path, content=big, headers=auth)
    assert too_large.status_code == 413
    error = too_large.json()["error"]
    assert error["param"] == "body" and "4096" in error["message"] and error["code"] == 413

    def chunks():  # no Content-Length: the bytes are counted as they arrive
        for _ in range(10):
            yield b" " * 1000

    streamed = client.post(path, content=chunks(), headers=auth)
    assert streamed.status_code == 413 and streamed.json()["error"]["param"] == "body"
    # /health stays open, and a GET needs the token but reads no body.
    assert client.get("/health").status_code == 200


# --- bodies, against a real process: refused before the body is sent -------------------------------------


def _exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send the request head (and a little of the body), then read what the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(head + body)
        except OSError:  # the server answered and closed while we were still sending: read its answer
            pass
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received


@pytest.fixture(scope="module")
def trainer_process(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds-trainer")
    service = ServiceProcess("trainer", home=root / "home", log_dir=root,
                             env={"SCORE_API_TOKEN": TOKEN, "SCORE_MAX_BODY_BYTES": str(1 << 20)})
    try:
        yield service.wait_ready(headers={"authorization": f"Bearer {TOKEN}"})
    finally:
        service.stop()


def test_a_service_refuses_a_19_mib_body_before_it_is_sent(trainer_process):
    size = 19 * 2**20
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    # Only 64 KiB of the announced 19 MiB are ever sent: the answers come without the rest.
    unauthenticated = _exchange(trainer_process.port, head, b" " * 65536)
    assert unauthenticated.startswith(b"HTTP/1.1 401") and b'"header.authorization"' in unauthenticated

    authenticated = head.replace(b"Host: x\r\n", f"Host: x\r\nAuthorization: Bearer {TOKEN}\r\n".encode())
    too_large = _exchange(trainer_process.port, authenticated, b" " * 65536)
    assert too_large.startswith(b"HTTP/1.1 413") and b'"param":"body"' in too_large

    chunked = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    piece = b" " * 65536
    frames = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(17))  # 1.06 MiB > the 1 MiB limit
    streamed = _exchange(trainer_process.port, chunked, frames)
    assert streamed.startswith(b"HTTP/1.1 413")
    assert trainer_process.process.poll() is None
