"""The built-in fine-tuned teacher (`builtin:teacher-sft`) solves held-out tasks and finds broken steps, through
the teacher service, above a floor well under what it measures (docs/teacher.md has the figures).

Its build takes about 35 minutes on 2 cores, more than the whole suite may, so these tests use the build that
`SCORE_HOME` already holds (`.ci/run` builds it first) and skip, saying so, where there is none."""

from __future__ import annotations

import random

import pytest
from fastapi.testclient import TestClient

from services.teacher.app import create_app
from shared.models.builtin import builtin_model_dir, is_current_builtin
from shared.schemas.teacher import TeacherRolloutResponse
from shared.scoring import score_answer
from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import broken_trajectory
from tests.teacher.conftest import teacher_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher_sft_client(score_home):
    if not is_current_builtin("teacher-sft", score_home):
        pytest.skip("builtin:teacher-sft is not built for its current recipe in SCORE_HOME; build it with "
                    "`make teacher-model` (.ci/run does)")
    config = teacher_config(score_home, engine="transformers", model=str(builtin_model_dir("teacher-sft", score_home)),
                            max_step_tokens=256, max_judge_tokens=384)
    with TestClient(create_app(config)) as client:
        yield client


@pytest.mark.parametrize("family, floor", [("arith", 0.75), ("kb", 0.5)])
def test_it_solves_held_out_tasks_through_rollouts(teacher_sft_client, family, floor):
    tasks = builtin_tasks(family=family, split="eval", n=30, seed=31)
    response = teacher_sft_client.post("/v1/rollouts", json={"items": [{"task": t.model_dump(mode="json")} for t in tasks],
                                                             "max_turns": 8})
    assert response.status_code == 200, response.text
    episodes = TeacherRolloutResponse.model_validate(response.json()).episodes
    solved = sum(e.final_answer is not None and score_answer(e.final_answer, t.true_answer).correct
                 for t, e in zip(tasks, episodes))
    assert solved >= floor * len(tasks), f"{family}: {solved}/{len(tasks)} solved, floor {floor:.0%}"
    assert all(e.cost.teacher_tokens > 0 and e.cost.teacher_prompt_tokens > 0 for e in episodes)


@pytest.mark.parametrize("strategy, floor", [("verify", 0.75), ("judge", 0.55)])
def test_it_finds_the_broken_step_of_held_out_trajectories(teacher_sft_client, strategy, floor):
    rng = random.Random(41)
    items, positions = [], []
    for task in builtin_tasks(split="eval", n=20, seed=41):
        steps, position, _ = broken_trajectory(task, rng)
        items.append({"task": task.model_dump(mode="json"), "steps": [s.model_dump(mode="json") for s in steps]})
        positions.append(position)
    response = teacher_sft_client.post("/v1/corrections", json={"items": items, "strategy": strategy})
    assert response.status_code == 200, response.text
    corrections = response.json()["corrections"]
    found = sum(c["first_error_step"] == p and c["corrected_step"] is not None for c, p in zip(corrections, positions))
    assert found >= floor * len(items), f"{strategy}: {found}/{len(items)} broken steps found, floor {floor:.0%}"
