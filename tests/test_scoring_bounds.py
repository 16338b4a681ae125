"""Scoring any answer string is bounded in time and memory, and never stops a service's event loop.

Pathological answers (power towers, huge factorials, deep nesting, megabyte strings) go through the
teacher's `POST /v1/judgements` and through the coordinator's scoring path (`score_answer_async`, which its
stage handlers await); each is "not correct", a second request for it is answered from the cache, and the
service keeps answering `/health` while a scorer process works on one.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from fastapi.testclient import TestClient

from services.teacher.app import create_app
from shared import scoring_pool
from shared.scoring import score_answer, score_answer_async
from shared.scoring_pool import ScorerPool
from shared.settings import Settings
from tests.teacher.conftest import teacher_config

TIMEOUT_S = 2.0
POWER_TOWER = "9^9^9^9^9"
PATHOLOGICAL = [
    POWER_TOWER,
    "2**2**2**2**2**2**2",
    "100000000!",
    "(" * 5000 + "1" + ")" * 5000,
    "9" * 2**20,  # 1 MiB
    "\\frac{" * 200 + "1" + "}{2}" * 200,
]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    # The scripted teacher needs no model: a fresh home keeps these tests off the built-in model build.
    return Settings(home=tmp_path_factory.mktemp("scoring-home"), scoring_timeout_s=TIMEOUT_S, scoring_workers=2)


@pytest.fixture(scope="module")
def teacher(settings):
    with TestClient(create_app(teacher_config(settings.home, settings=settings))) as client:
        yield client


def test_the_scorer_pool_gives_up_on_a_power_tower_kills_its_scorer_and_still_scores(settings):
    pool = ScorerPool(workers=1, timeout_s=TIMEOUT_S, memory_bytes=settings.scoring_memory_bytes)
    try:
        assert pool.equal("$\\frac{1}{2}$", "0.5") is True
        scorer = pool._idle.queue[0]
        first_pid = scorer.proc.pid
        assert pool.equal(POWER_TOWER, "1") is False
        assert pool.timeouts == 1 and scorer.proc is None  # killed, not left computing
        assert pool.equal(POWER_TOWER, "1") is False and pool.timeouts == 1  # remembered: no second wait
        assert pool.equal("\\boxed{464}", "464") is True  # a fresh scorer takes over
        assert scorer.proc.pid != first_pid
    finally:
        pool.close()


def test_a_scorer_runs_under_the_memory_limit(settings):
    pool = ScorerPool(workers=1, timeout_s=TIMEOUT_S, memory_bytes=768 * 2**20)
    try:
        assert pool.equal("1/2", "0.5") is True
        pid = pool._idle.queue[0].proc.pid
        limits = open(f"/proc/{pid}/limits").read().splitlines()
        address_space = next(line for line in limits if line.startswith("Max address space")).split()
        assert address_space[3:5] == [str(768 * 2**20), str(768 * 2**20)]
    finally:
        pool.close()


def test_judgements_of_pathological_answers_come_back_not_equivalent_and_health_answers_meanwhile(teacher):
    items = [{"kind": "answer", "prediction": answer, "true_answer": "1/2"} for answer in PATHOLOGICAL]
    items.append({"kind": "answer", "prediction": "0.5", "true_answer": "1/2"})
    results: dict = {}

    def judge():
        results["response"] = teacher.post("/v1/judgements", json={"items": items})

    health: dict = {}
    worker = threading.Thread(target=judge)
    worker.start()
    while worker.is_alive() and not health.get("while_judging"):
        if teacher.get("/health").status_code == 200 and worker.is_alive():
            health["while_judging"] = True
        worker.join(0.05)
    worker.join()
    assert health.get("while_judging"), "the teacher did not answer /health while it scored the answers"
    response = results["response"]
    assert response.status_code == 200, response.text
    verdicts = [j["equivalent"] for j in response.json()["judgements"]]
    assert verdicts == [False] * len(PATHOLOGICAL) + [True]
    again = teacher.post("/v1/judgements", json={"items": items[:1]}).json()["judgements"][0]
    assert again["cached"] and not again["equivalent"]


def test_the_coordinators_scoring_path_leaves_the_event_loop_free(settings):
    scoring_pool.configure(settings)
    order: list[str] = []

    async def score(answer):
        result = await score_answer_async(answer, "3")
        order.append(f"scored {answer}")
        return result

    async def meanwhile():
        await asyncio.sleep(0.05)
        order.append("loop ran")

    async def main():
        return await asyncio.gather(score("3^3^3^3^3^3"), score("3.0"), meanwhile())

    tower, plain, _ = asyncio.run(main())
    assert not tower.correct and plain.correct
    assert order.index("loop ran") < order.index("scored 3^3^3^3^3^3")


def test_normal_answers_stay_exact():
    assert score_answer("989", 989).correct and not score_answer("988", 989).correct
    assert score_answer("989.0", "989").correct and score_answer("-742", -742).correct
    assert not score_answer("989.5", 989).correct and score_answer("0.50", "1/2").correct
