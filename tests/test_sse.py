"""Server-Sent Events (shared/sse.py): frames, the client-side parser, and the stream a route answers with, read
through a real uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from shared.sse import KEEP_ALIVE, EventParser, ServerSentEvent, event_stream, format_event
from tests.service_process import free_port

EVENTS = [
    ServerSentEvent(data='{"type": "state", "state": "queued"}', event="state", id="0"),
    ServerSentEvent(data="two\nlines", event="log", id="1"),
    ServerSentEvent(data='{"message": "a\u2028b"}', event="log", id="2"),  # U+2028 is not a line break in SSE
    ServerSentEvent(data="", id="3"),
    ServerSentEvent(data="no id, no type"),
]


def test_a_frame_has_its_id_type_and_one_data_line_per_line():
    assert format_event(EVENTS[0]) == 'id: 0\nevent: state\ndata: {"type": "state", "state": "queued"}\n\n'
    assert format_event(EVENTS[1]) == "id: 1\nevent: log\ndata: two\ndata: lines\n\n"
    assert format_event(ServerSentEvent(data="a\r\nb\rc")) == "data: a\ndata: b\ndata: c\n\n"
    assert format_event(EVENTS[4]) == "data: no id, no type\n\n"


def test_the_parser_reads_back_what_was_formatted_however_the_text_is_cut():
    text = KEEP_ALIVE + "".join(format_event(event) for event in EVENTS).replace("\n", "\r\n", 3)
    expected = [*EVENTS[:4], ServerSentEvent(data="no id, no type", id="3")]  # the last id carries on
    for size in (1, 2, 3, 7, len(text)):
        parser = EventParser()
        parsed = [event for start in range(0, len(text), size) for event in parser.feed(text[start:start + size])]
        assert parsed == expected, size


def test_the_parser_follows_the_standard_on_comments_fields_and_incomplete_frames():
    parser = EventParser()
    assert parser.feed(": comment\nretry: 10\nevent: x\n\n") == []  # no data: nothing is dispatched
    assert parser.feed("data:tight\ndata:  spaced\nunknown: y\nid: 7") == []
    assert parser.feed("\n\r") == []  # the frame is not complete until its blank line
    assert parser.feed("\n") == [ServerSentEvent(data="tight\n spaced", id="7")]
    assert parser.feed("data: half a frame") == []  # a connection dropped here yields nothing for it


@contextlib.contextmanager
def serving(app: FastAPI):
    """`app` on a real uvicorn server in a thread; its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def server():
    app = FastAPI()
    app.state.closed = threading.Event()

    async def quiet_then_two_events():
        yield EVENTS[0]
        for _ in range(6):  # 0.3 s with nothing new: keep-alive comments
            yield None
            await asyncio.sleep(0.05)
        yield EVENTS[1]

    async def endless():
        try:
            yield EVENTS[0]
            while True:
                yield None
                await asyncio.sleep(0.05)
        finally:
            app.state.closed.set()

    @app.get("/finite")
    async def finite(request: Request):
        return event_stream(quiet_then_two_events(), request, keep_alive_s=0.1)

    @app.get("/endless")
    async def forever(request: Request):
        return event_stream(endless(), request)

    with serving(app) as url:
        yield app, url


def test_a_stream_has_the_sse_headers_keep_alive_comments_and_ends_with_its_source(server):
    _, url = server
    response = httpx.get(f"{url}/finite", timeout=30)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
    assert response.text.count(KEEP_ALIVE) >= 2
    assert EventParser().feed(response.text) == EVENTS[:2]


def test_a_stream_stops_when_its_client_goes_away(server):
    app, url = server
    with httpx.stream("GET", f"{url}/endless", timeout=30) as response:
        first = next(response.iter_text())
        assert EventParser().feed(first) == EVENTS[:1]
    assert app.state.closed.wait(10), "the source kept running after the client left"
