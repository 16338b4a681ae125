"""The CLI's REST client of the coordinator: connection, errors that name the field and line of a config, run
submission and the run's event stream."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from shared.http_errors import error_message


class CLIError(Exception):
    """A message for the user and the exit code that goes with it."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def auth_headers() -> dict[str, str]:
    from shared.settings import Settings

    token = Settings().api_token
    return {"Authorization": f"Bearer {token}"} if token else {}


def coordinator_url() -> str:
    from shared.settings import Settings

    return Settings().coordinator_url.rstrip("/")


def coordinator_client(base_url: str | None = None, timeout: float = 30.0):
    import httpx

    return httpx.Client(base_url=base_url or coordinator_url(), headers=auth_headers(), timeout=timeout)


def api_request(client, method: str, path: str, **kwargs):
    import httpx

    try:
        response = client.request(method, path, **kwargs)
    except httpx.ConnectError:
        raise CLIError(f"cannot reach the coordinator at {client.base_url} (is `score up` running? "
                       "SCORE_COORDINATOR_URL sets where it is)") from None
    except httpx.HTTPError as exc:
        raise CLIError(f"{method} {client.base_url}{path} failed: {exc}") from None
    if response.status_code >= 400:
        raise CLIError(f"{response.status_code}: {error_message(response)}", 2 if response.status_code == 422 else 1)
    return response


def load_config(path: Path) -> tuple[dict, object | None]:
    """The config as a dict, and its YAML node tree (to point at the line of a field the server refuses)."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}", 2) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise CLIError(f"{path}: JSON syntax error at {where}: {exc.msg}", 2) from None
        node = None
    else:
        try:
            data = yaml.safe_load(text)
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            context, opened = getattr(exc, "context", None), getattr(exc, "context_mark", None)
            if context and opened is not None and (mark is None or opened.line != mark.line):
                problem += f" ({context} at line {opened.line + 1})"
            raise CLIError(f"{path}: YAML syntax error{where}: {problem}", 2) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CLIError(f"{path}: a run config is a mapping of fields (got {type(data).__name__})", 2)
    return data, node


def line_of(node, param: str | None) -> int | None:
    """The 1-based line of `body.a.b` in a composed YAML document, as deep as the path goes."""
    import yaml

    if node is None or not param:
        return None
    parts = param.split(".")
    if parts and parts[0] == "body":
        parts = parts[1:]
    line = None
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line


def submit(client, config: dict, node=None, source: str = "config") -> dict:
    import httpx

    try:
        response = client.post("/v1/runs", json=config)
    except httpx.ConnectError:
        raise CLIError(f"cannot reach the coordinator at {client.base_url} (is `score up` running? "
                       "SCORE_COORDINATOR_URL sets where it is)") from None
    if response.status_code == 422:
        message = error_message(response)
        param = None
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            param = response.json()["error"]["param"]
        line = line_of(node, param)
        where = f" (line {line})" if line is not None else ""
        raise CLIError(f"{source}{where}: the coordinator refused the config: {message}", 2)
    if response.status_code >= 400:
        raise CLIError(f"{response.status_code}: {error_message(response)}")
    return response.json()


def sse_events(client, run_id: str):
    """RunEvents of a run as dicts, resuming after a dropped connection, until the server ends the stream."""
    import httpx

    from shared.sse import EventParser

    last_id, failures = "0", 0
    while True:
        try:
            with client.stream("GET", f"/v1/runs/{run_id}/events", params={"after": last_id},
                               timeout=httpx.Timeout(30.0, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise CLIError(f"{response.status_code}: {error_message(response)}")
                parser = EventParser()
                for text in response.iter_text():
                    for event in parser.feed(text):
                        last_id, failures = event.id or last_id, 0
                        yield json.loads(event.data)
            return
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError) as exc:
            failures += 1
            if failures > 10:
                raise CLIError(f"lost the event stream of run {run_id}: {exc}") from None
            time.sleep(min(5.0, 0.5 * failures))
