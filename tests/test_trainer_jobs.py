"""Awaiting a trainer job through its event stream (shared/trainer_jobs.py), against a real trainer process: the
succeeded job comes back with its checkpoint though the connection drops mid-event, a cancelled job is a clear
error, and so is a job the trainer does not know."""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from shared.schemas.training import JobState
from shared.trainer_jobs import JobError, JobFailed, await_job
from tests.service_process import ServiceProcess, fresh_home
from tests.trainer.sft_jobs import gold_conversations

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HYPERPARAMETERS = {"cpu_threads": 1, "micro_batch_tokens": 1024, "max_seq_length": 1024}


@pytest.fixture(scope="module")
def trainer(score_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer-jobs")
    trainer = ServiceProcess("trainer", home=fresh_home(score_home, root), log_dir=root,
                             env={"SCORE_TRAINER_POLL_INTERVAL_S": "0.2"})
    try:
        yield trainer.wait_ready()
    finally:
        trainer.stop()


class CuttingProxy:
    """A TCP proxy in front of the trainer that cuts the first event stream a few bytes into its second event,
    as a failing network or proxy would. It records each request's target (one connection per request)."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream = urlsplit(upstream_url)
        self.targets: list[str] = []
        self.connections: set[asyncio.Task] = set()

    async def __aenter__(self) -> "CuttingProxy":
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        if self.connections:  # each ends once its client has closed it
            await asyncio.wait(self.connections, timeout=10)

    def stream_afters(self) -> list[str]:
        return [parse_qs(urlsplit(t).query)["after"][0] for t in self.targets if "stream=true" in t]

    async def _connection(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        self.connections.add(asyncio.current_task())
        upstream_in, upstream_out = await asyncio.open_connection(self.upstream.hostname, self.upstream.port)
        request_line = await client_in.readline()
        self.targets.append(request_line.decode().split()[1])
        cut = len(self.stream_afters()) == 1 and "stream=true" in self.targets[-1]
        upstream_out.write(request_line)

        async def upwards() -> None:
            while data := await client_in.read(65536):
                upstream_out.write(data)
                await upstream_out.drain()

        async def downwards() -> None:
            received = b""
            while data := await upstream_in.read(65536):
                received += data
                frames = [match.start() for match in re.finditer(rb"\nid: ", received)]
                if cut and len(frames) >= 2:  # stop a line into the second event: "id: 1" and its line break
                    client_out.write(data[:frames[1] + len(b"\nid: 1\n") - (len(received) - len(data))])
                    return
                client_out.write(data)
                await client_out.drain()

        pumps = [asyncio.ensure_future(upwards()), asyncio.ensure_future(downwards())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_out, upstream_out):
                writer.close()


def _client(url: str) -> httpx.AsyncClient:
    # No kept-alive connections: the proxy sees every request on a connection of its own.
    return httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0))


def _rows(n: int) -> list[dict]:
    return [json.loads(line) for line in gold_conversations(n)]


def test_a_job_is_followed_to_its_checkpoint_across_a_dropped_connection(trainer):
    async def follow():
        async with CuttingProxy(trainer.url) as proxy, _client(proxy.url) as http:
            body = {"dataset": {"rows": _rows(4)}, "job_id": "followed",
                    "hyperparameters": {**HYPERPARAMETERS, "max_steps": 3}}
            assert (await http.post("/v1/jobs", json=body)).status_code == 201
            seen = []

            async def record(event):
                seen.append(event)

            return await await_job(http, "followed", on_event=record), seen, proxy.stream_afters()

    job, seen, afters = asyncio.run(follow())
    assert job.state == JobState.succeeded and job.checkpoint.name == job.output_name and job.step == 3
    assert afters[:2] == ["-1", "0"], afters  # cut inside event 1: resumed after event 0, the last one complete
    assert [event.seq for event in seen] == list(range(len(seen)))  # every event once, in order
    assert [event.step for event in seen if event.type == "progress"] == [1, 2, 3]
    progress = next(event for event in seen if event.type == "progress")
    assert progress.total_steps == 3 and progress.eta_s is not None and progress.metrics["loss"] > 0
    assert seen[-1].type == "state" and seen[-1].state == JobState.succeeded


def test_a_cancelled_job_is_a_clear_error(trainer):
    async def follow():
        async with _client(trainer.url) as http:
            body = {"dataset": {"rows": _rows(4)}, "job_id": "cancelled",
                    "hyperparameters": {**HYPERPARAMETERS, "max_steps": 10_000}}
            assert (await http.post("/v1/jobs", json=body)).status_code == 201

            async def cancel_once_training(event):
                if event.type == "progress" and event.step == 1:
                    assert (await http.post("/v1/jobs/cancelled/cancel")).status_code == 200

            await await_job(http, "cancelled", on_event=cancel_once_training)

    with pytest.raises(JobFailed, match="SFT job cancelled cancelled") as failed:
        asyncio.run(follow())
    assert failed.value.job.state == JobState.cancelled and failed.value.job.checkpoint is None


def test_a_job_the_trainer_does_not_know_is_an_error_at_once(trainer):
    async def follow():
        async with _client(trainer.url) as http:
            await await_job(http, "no-such-job")

    with pytest.raises(JobError, match="404") as error:
        asyncio.run(follow())
    assert not isinstance(error.value, JobFailed)
