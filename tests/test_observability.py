"""Prometheus metrics of the four services after real work, and log lines that carry request, run and item ids."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.coordinator import keys
from services.coordinator.app import create_app as coordinator_app
from services.coordinator.clients import TeacherClient
from services.coordinator.config import CoordinatorConfig
from services.coordinator.queue import WorkItem
from services.coordinator.worker import Worker
from services.student.app import create_app as student_app
from services.teacher.app import create_app as teacher_app
from shared.observability import JsonFormatter, KeyValueFormatter, log_context
from shared.schemas.teacher import CorrectionItem
from shared.settings import Settings
from tests.service_process import ServiceProcess
from tests.student.conftest import student_config
from tests.teacher.conftest import broken_items, teacher_config


def scrape(client) -> dict:
    """{family name: family} of a /metrics answer, parsed as Prometheus reads it."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def value(families: dict, sample_name: str, **labels) -> float:
    family = families[sample_name.removesuffix("_total")] if sample_name not in families else families[sample_name]
    matches = [s.value for s in family.samples if s.name == sample_name and labels.items() <= s.labels.items()]
    assert len(matches) == 1, (sample_name, labels, family.samples)
    return matches[0]


def requests_served(families: dict, route: str, status: str = "200") -> float:
    return value(families, "score_http_requests_total", route=route, status=status)


def access_records(caplog, path: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "score.access" and f"path={path} " in r.getMessage()]


# --- model services -------------------------------------------------------------------------------------


def test_student_counts_tokens_and_requests_and_logs_the_request_id(score_home, caplog):
    caplog.set_level(logging.INFO)
    with TestClient(student_app(student_config(score_home))) as client:
        body = {"messages": [{"role": "user", "content": "Compute 3 + 4."}], "max_tokens": 6, "n": 2}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        completion_tokens = response.json()["usage"]["completion_tokens"]
        made_up = response.headers["x-request-id"]
        sent = client.post("/v1/chat/completions", json=body, headers={"x-request-id": "trace-42"})
        families = scrape(client)

    assert sent.headers["x-request-id"] == "trace-42"
    assert [r.request_id for r in access_records(caplog, "/v1/chat/completions")] == [made_up, "trace-42"]
    assert requests_served(families, "/v1/chat/completions") == 2
    assert families["score_http_request_seconds"].type == "histogram"
    generated = value(families, "score_generated_tokens_total", service="student")
    assert families["score_generated_tokens"].type == "counter"
    assert generated >= completion_tokens > 0
    assert value(families, "score_engine_total", counter="generated_tokens") == generated
    assert value(families, "score_policy_version", service="student") == 0
    assert families["score_rollout_episodes"].type == "counter"


def test_teacher_counts_corrections_and_its_lines_carry_the_callers_ids(score_home, caplog):
    caplog.set_level(logging.INFO)
    items, _ = broken_items(3, seed=7)
    with TestClient(teacher_app(teacher_config(score_home))) as client:
        response = client.post("/v1/corrections", json={"items": items, "strategy": "verify"},
                               headers={"x-request-id": "req-teach-1", "x-score-run-id": "run-abc"})
        assert response.status_code == 200, response.text
        bad_id = client.post("/v1/judgements", headers={"x-request-id": "bad id\nforged=1"}, json={"items": [
            {"kind": "answer", "prediction": "12", "true_answer": 12}]})
        families = scrape(client)

    assert value(families, "score_teacher_total", counter="corrections") == 3
    assert families["score_teacher"].type == "counter"
    assert value(families, "score_generated_tokens_total", service="teacher") == 0  # the expert runs no model
    # Each correction replays its trajectory in a sandbox of its own, on an interpreter started ahead or on demand.
    starts = {kind: value(families, "score_sandbox_starts_total", kind=kind) for kind in ("warm", "cold", "discarded")}
    assert starts["warm"] + starts["cold"] >= 3 and starts["discarded"] == 0
    assert requests_served(families, "/v1/corrections") == 1
    served = [r for r in caplog.records if r.name == "score.teacher" and "corrections strategy" in r.getMessage()]
    assert [(r.request_id, r.run_id) for r in served] == [("req-teach-1", "run-abc")]
    # An id that could forge log fields is replaced by a fresh one.
    assert bad_id.status_code == 200 and "\n" not in bad_id.headers["x-request-id"]
    assert len(bad_id.headers["x-request-id"]) == 16


# --- coordinator ----------------------------------------------------------------------------------------


def test_coordinator_exports_queue_depth_runs_and_policy_versions(redis_url, tmp_path):
    app = coordinator_app(CoordinatorConfig(workers=0, settings=Settings(home=tmp_path / "home", redis_url=redis_url)))
    with TestClient(app) as client:
        created = client.post("/v1/runs", json={"tasks": {"n_bc_init": 2, "n_train": 2, "n_rl": 1, "n_eval": 2}})
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        store = redis.Redis.from_url(redis_url)
        store.hset(keys.run(run_id), "policy_version", 3)  # as a stage sets it when the student loads weights
        store.close()
        families = scrape(client)

    assert value(families, "score_queue_items", queue="control", kind="waiting") == 1  # the first stage's entry
    assert value(families, "score_queue_items", queue="control", kind="pending") == 0
    assert value(families, "score_queue_items", queue="mps", kind="dead") == 0
    assert value(families, "score_runs", state="queued") == 1
    assert value(families, "score_run_policy_version", run=run_id) == 3
    assert value(families, "score_workers_alive") == 0
    assert requests_served(families, "/v1/runs", status="201") == 1


def test_worker_lines_carry_run_stage_and_item_and_dead_letters_are_counted(redis_url, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    settings = Settings(home=tmp_path / "home", redis_url=redis_url)

    async def work() -> None:
        worker = Worker(settings, redis_url=redis_url, block_ms=100)
        await worker.queue.ensure_groups()
        await worker.queue.put("mps", [WorkItem("run-gone", "mps", "task-7:0")])
        await worker.redis.xadd(keys.queue("mps"), {"junk": "1"})  # not a work item: dead-lettered on read
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("dropping" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.05)
        worker.stopping.set()
        await running

    asyncio.run(work())
    dropped = [r for r in caplog.records if "dropping mps/task-7:0" in r.getMessage()]
    assert [(r.run_id, r.stage, r.item) for r in dropped] == [("run-gone", "mps", "task-7:0")]
    assert dropped[0].request_id and len(dropped[0].request_id) == 16
    assert all(r.run_id is None for r in caplog.records if "consuming" in r.getMessage())

    with TestClient(coordinator_app(CoordinatorConfig(workers=0, settings=settings))) as client:
        families = scrape(client)
    assert value(families, "score_queue_items", queue="mps", kind="dead") == 1
    assert value(families, "score_queue_items", queue="mps", kind="waiting") == 0


# --- trainer --------------------------------------------------------------------------------------------


def test_trainer_exports_the_sft_jobs_progress_and_rl_sessions(score_home, tmp_path):
    from services.trainer.app import create_app
    from services.trainer.config import TrainerConfig
    from tests.trainer.sft_jobs import gold_lines
    from tests.trainer.rl_sessions import batch, create

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "builtin").symlink_to(score_home / "models" / "builtin")
    config = TrainerConfig(device="cpu", settings=Settings(home=home), poll_interval_s=0.1)
    rows = [json.loads(line) for line in gold_lines(4)]
    hyperparameters = {"max_steps": 2, "log_every_steps": 1, "cpu_threads": 1, "save_every_steps": 10}
    with TestClient(create_app(config)) as client:
        job = client.post("/v1/jobs", json={"dataset": {"rows": rows}, "hyperparameters": hyperparameters})
        assert job.status_code == 201, job.text
        session = create(client)
        stepped = client.post(f"/v1/rl/sessions/{session['id']}/steps", json=batch())
        assert stepped.status_code == 200, stepped.text
        job_id = job.json()["id"]
        deadline = time.monotonic() + 240
        while (info := client.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        assert info["state"] == "succeeded", info
        families = scrape(client)

    assert value(families, "score_trainer_jobs", state="succeeded") == 1
    assert value(families, "score_sft_job_step", job=job_id) == 2
    assert value(families, "score_sft_job_total_steps", job=job_id) == 2
    assert value(families, "score_sft_job_loss", job=job_id) == pytest.approx(info["metrics"]["loss"])
    assert value(families, "score_sft_job_tokens_per_second", job=job_id) > 0
    assert value(families, "score_rl_session", session=session["id"], value="policy_version") == 1
    assert value(families, "score_rl_session", session=session["id"], value="tokens_per_s") > 0
    assert requests_served(families, "/v1/jobs", status="201") == 1


# --- formats and propagation across processes -----------------------------------------------------------


def _format(formatter: logging.Formatter, **ids) -> str:
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("score.test.format")
    logger.addHandler(handler)
    try:
        with log_context(**ids):
            logger.warning("item %s failed", "k 1")
    finally:
        logger.removeHandler(handler)
    return formatter.format(records[0])


def test_text_lines_are_key_value_and_leave_out_empty_ids():
    line = _format(KeyValueFormatter("coordinator"), request_id="r1", run_id="run-1", item="task 3:0")
    assert line.split(" ", 3)[2:] == ["WARNING", 'service=coordinator request_id=r1 run_id=run-1 item="task 3:0" '
                                      "logger=score.test.format item k 1 failed"]
    bare = _format(KeyValueFormatter("student"))
    assert "request_id" not in bare and "run_id" not in bare and "service=student logger=score.test.format" in bare


def test_json_lines_parse_with_the_same_keys():
    entry = json.loads(_format(JsonFormatter("coordinator", pid=True), request_id="r1", run_id="run-1", stage="mps"))
    assert list(entry) == ["time", "level", "service", "pid", "request_id", "run_id", "stage", "logger", "message"]
    assert (entry["request_id"], entry["stage"], entry["message"]) == ("r1", "mps", "item k 1 failed")


@pytest.mark.slow
def test_ids_follow_a_call_from_the_coordinator_into_a_teacher_process_logging_json(score_home, tmp_path):
    teacher = ServiceProcess("teacher", "--engine", "expert", home=score_home, log_dir=tmp_path,
                             env={"SCORE_LOG_FORMAT": "json"})
    try:
        teacher.wait_ready()
        items, _ = broken_items(2, seed=3)

        async def call() -> None:
            client = TeacherClient("teacher", teacher.url, token=None)
            try:
                with log_context(request_id="req-e2e-1", run_id="run-e2e", stage="mps", item="task-1:0"):
                    await client.corrections([CorrectionItem.model_validate(item) for item in items], "verify")
            finally:
                await client.close()

        asyncio.run(call())
        assert httpx.get(f"{teacher.url}/health", timeout=5).status_code == 200
    finally:
        teacher.stop()
    entries = [json.loads(line) for line in teacher.log_path.read_text().splitlines() if line.strip()]
    assert {entry["service"] for entry in entries} == {"teacher"}
    served = [e for e in entries if e["message"].startswith("corrections strategy=verify")]
    assert [(e["request_id"], e["run_id"]) for e in served] == [("req-e2e-1", "run-e2e")]
    assert any(e["logger"] == "score.access" and e.get("request_id") == "req-e2e-1" for e in entries)
