"""The `score` CLI as a user runs it."""

import json
import subprocess

from shared.schemas.agent import Step, Task
from shared.scoring import score_answer
from tests.service_process import SCORE


def run_score(*args, home):
    return subprocess.run([SCORE, *args], capture_output=True, text=True, timeout=300,
                          env={"SCORE_HOME": str(home), "PATH": "/usr/bin:/bin"})


def test_tasks_writes_task_file_jsonl(tmp_path):
    result = run_score("tasks", "--suite", "builtin", "--family", "kb", "--split", "eval", "--n", "4", "--seed", "2",
                       home=tmp_path)
    assert result.returncode == 0, result.stderr
    tasks = [Task.model_validate_json(line) for line in result.stdout.splitlines()]
    assert len(tasks) == 4 and all(t.id.startswith("kb-") for t in tasks)
    assert all(t.model_extra.get("split") == "eval" for t in tasks)


def test_tasks_with_trajectories_carry_executed_gold_steps(tmp_path):
    result = run_score("tasks", "--n", "4", "--seed", "1", "--trajectories", home=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        row = json.loads(line)
        steps = [Step.model_validate(s) for s in row["trajectory"]["steps"]]
        assert steps[0].kind == "plan" and all(s.kind == "act" for s in steps[1:])
        assert all(s.observation for s in steps[1:])  # observations come from running the code
        assert row["trajectory"]["finished"]
        assert score_answer(row["trajectory"]["final_answer"], row["true_answer"]).correct


def test_unknown_suite_and_family_are_clear_errors(tmp_path):
    result = run_score("tasks", "--suite", "nope", home=tmp_path)
    assert result.returncode == 2 and "unknown suite 'nope'" in result.stderr
    result = run_score("tasks", "--family", "chess", home=tmp_path)
    assert result.returncode == 2 and "unknown family 'chess'" in result.stderr


def test_score_up_defaults_to_the_teacher_that_solves_the_suite():
    from services.cli import build_parser

    assert build_parser().parse_args(["up"]).teacher_engine == "expert"
    assert build_parser().parse_args(["up", "--teacher-engine", "transformers"]).teacher_engine == "transformers"


def test_a_run_s_built_in_cold_start_base_is_built_before_the_services_and_nothing_else_is(
        score_home, student_model_dir, capsys):
    from services.cli.builtins import cold_start_base, prepare_builtin

    assert cold_start_base({"bc_init": {"base": "builtin:student-wide"}}) == "builtin:student-wide"
    assert cold_start_base({"tasks": {}}) is None
    for reference in (None, "", "my-model/v2", "/some/dir", "builtin:student"):  # the student is current
        prepare_builtin(reference, score_home, "student")
    assert capsys.readouterr().out == ""
