"""Server-Sent Events, both ends of the wire: the stream a route answers with, and the parser its clients read.

A frame is `id:`, `event:` and `data:` lines and a blank line; a line starting with `:` is a comment, which
clients skip and which keeps proxies from closing a quiet stream (WHATWG HTML, "Server-sent events").
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import StreamingResponse

KEEP_ALIVE_S = 15.0  # the longest a followed stream stays silent; clients may take longer silence as a dead link
KEEP_ALIVE = ": keep-alive\n\n"
# Proxies must neither cache the stream nor buffer it (`X-Accel-Buffering` is nginx's switch).
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Only these end a line in an event stream; str.splitlines would also split data at U+2028 and friends.
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    data: str
    event: str | None = None  # None: no `event:` line (a browser's EventSource calls it "message")
    id: str | None = None


def format_event(event: ServerSentEvent) -> str:
    """One frame; data with line breaks becomes one `data:` line per line, as the standard joins them back."""
    lines = [] if event.id is None else [f"id: {event.id}"]
    if event.event is not None:
        lines.append(f"event: {event.event}")
    lines += [f"data: {line}" for line in _LINE_END.split(event.data)]
    return "\n".join(lines) + "\n\n"


async def _frames(source: AsyncIterator[ServerSentEvent | None], request: Request, keep_alive_s: float):
    async with contextlib.aclosing(source):
        last_sent = time.monotonic()
        async for event in source:
            if event is not None:
                yield format_event(event)
                last_sent = time.monotonic()
                continue
            # Servers on ASGI spec 2.4 leave a gone client to the app (on 2.3, Starlette cancels the stream itself).
            if await request.is_disconnected():
                return
            if time.monotonic() - last_sent >= keep_alive_s:
                yield KEEP_ALIVE
                last_sent = time.monotonic()


def event_stream(source: AsyncIterator[ServerSentEvent | None], request: Request, *,
                 keep_alive_s: float = KEEP_ALIVE_S) -> StreamingResponse:
    """A `text/event-stream` response of `source`'s events. `source` yields `None` when it has nothing new (it
    should do so about once a second while it waits): then the stream ends if the client has gone, and sends a
    keep-alive comment after `keep_alive_s` of silence. The stream ends when `source` does."""
    return StreamingResponse(_frames(source, request, keep_alive_s), media_type="text/event-stream", headers=HEADERS)


class EventParser:
    """Turns the text of an event stream, in chunks as they arrive, into events (comments are skipped)."""

    def __init__(self) -> None:
        self._pending = ""  # text after the last complete line
        self._data: list[str] = []
        self._event: str | None = None
        self._last_id: str | None = None  # carried on to later events, as the standard says

    def feed(self, text: str) -> list[ServerSentEvent]:
        self._pending += text
        events, start = [], 0
        for match in _LINE_END.finditer(self._pending):
            if match.group() == "\r" and match.end() == len(self._pending):
                break  # its "\n" may come in the next chunk
            event = self._line(self._pending[start:match.start()])
            if event is not None:
                events.append(event)
            start = match.end()
        self._pending = self._pending[start:]
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            if not self._data:
                self._event = None
                return None
            event = ServerSentEvent(data="\n".join(self._data), event=self._event, id=self._last_id)
            self._data, self._event = [], None
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._last_id = value
        return None  # `retry` and unknown fields: nothing we use
