"""Waiting for a trainer job by following its event stream (`GET /v1/jobs/{id}/events?stream=true`).

The coordinator's training stages wait this way. A dropped connection (the
trainer restarting, a proxy cutting a long stream) is resumed after the last event seen (`after`). The stream
ends when the job does; the job itself (`GET /v1/jobs/{id}`) then says how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from shared.schemas.training import TERMINAL_STATES, JobEvent, JobInfo, JobState
from shared.http_errors import TRANSIENT_STATUSES, error_message
from shared.sse import KEEP_ALIVE_S, EventParser

RECONNECTS = 10  # failed connections in a row (no event in between) before giving up, about 30 s of backoff
# A followed stream carries at least a keep-alive comment every KEEP_ALIVE_S; this much silence is a dead link.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=4 * KEEP_ALIVE_S)


class JobError(RuntimeError):
    """The job could not be followed: the trainer refused to answer for it or stayed unreachable."""


class JobFailed(JobError):
    """The job ended without a checkpoint (failed or cancelled); `job` is its final record."""

    def __init__(self, job: JobInfo) -> None:
        super().__init__(f"SFT job {job.id} {job.state.value}: {job.error or 'no checkpoint'}")
        self.job = job


class _Dropped(Exception):
    """The trainer answered with a status worth retrying (restarting, overloaded)."""


async def await_job(http: httpx.AsyncClient, job_id: str, *,
                    on_event: Callable[[JobEvent], Awaitable[None]] | None = None) -> JobInfo:
    """The succeeded job `job_id` of the trainer `http` points at (base URL and auth set), once it has ended;
    `on_event` sees each of the job's events once, in order. JobFailed if it failed or was cancelled."""
    after, failures = -1, 0
    while True:
        try:
            async with contextlib.aclosing(_events(http, job_id, after)) as events:
                async for event in events:
                    after, failures = event.seq, 0
                    if on_event is not None:
                        await on_event(event)
            response = await _checked(await http.get(f"/v1/jobs/{job_id}"), job_id)
            job = JobInfo.model_validate(response.json())
            if job.state in TERMINAL_STATES:
                break
            reason = f"the stream ended while the job was {job.state.value}"
        except (httpx.TransportError, _Dropped) as exc:
            reason = str(exc) or type(exc).__name__
        failures += 1
        if failures > RECONNECTS:
            raise JobError(f"lost the event stream of SFT job {job_id}: {reason}")
        await asyncio.sleep(min(5.0, 0.5 * failures))
    if job.state != JobState.succeeded or job.checkpoint is None:
        raise JobFailed(job)
    return job


def describe_progress(event: JobEvent) -> str:
    """A `progress` event in words, as run logs and the CLI show it: `SFT step 12/200, loss 0.734, ETA 48s`."""
    loss = (event.metrics or {}).get("loss")
    return (f"SFT step {event.step}/{event.total_steps or '?'}"
            + (f", loss {loss:.3f}" if loss is not None else "")
            + (f", ETA {event.eta_s:.0f}s" if event.eta_s is not None else ""))


async def _events(http: httpx.AsyncClient, job_id: str, after: int) -> AsyncIterator[JobEvent]:
    parser = EventParser()
    async with http.stream("GET", f"/v1/jobs/{job_id}/events", params={"stream": "true", "after": after},
                           timeout=STREAM_TIMEOUT) as response:
        await _checked(response, job_id)
        async for text in response.aiter_text():
            for event in parser.feed(text):
                yield JobEvent.model_validate_json(event.data)


async def _checked(response: httpx.Response, job_id: str) -> httpx.Response:
    if response.status_code < 400:
        return response
    await response.aread()
    if response.status_code in TRANSIENT_STATUSES:
        raise _Dropped(f"trainer answered {response.status_code}")
    raise JobError(f"the trainer refused to answer for SFT job {job_id}: {response.status_code} "
                   f"{error_message(response)[:1000]}")
