"""Announces each generation request to the engine as soon as its body is in (`shared/models/arrivals.py`).

Outermost in the app, so the arrival is bound before any handler runs and reaches the engine through every
task the request starts. Only a complete body is announced: a client that trickles its body, or one the
token check refuses before reading it, never makes the engine wait.
"""

from __future__ import annotations

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


class AnnounceGenerations:
    def __init__(self, app, *, state) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        serving = getattr(self.state, "serving", None)
        generation = scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in GENERATION_PATHS
        if serving is None or not generation:
            await self.app(scope, receive, send)
            return
        arrival = serving.engine.arrival()
        if arrival is None:
            await self.app(scope, receive, send)
            return

        async def receive_announcing():
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                arrival.expect()
            return message

        token = arrival.bind()
        try:
            await self.app(scope, receive_announcing, send)
        finally:
            arrival.settle()  # whatever became of it (refused, failed, answered), nothing is on its way any more
            arrival.unbind(token)
