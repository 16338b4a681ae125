"""The built-in teacher's build-time SFT: token-exact examples, true observations, the recipe, and the loop."""

from __future__ import annotations

import json

import torch
from transformers import AutoTokenizer

from shared.agent.format import episode_messages, render_step
from shared.agent.tokens import chat_token_ids
from shared.models import builtin, teacher_build
from shared.models.tiny import build_tiny_model
from shared.tasks.builtin import builtin_tasks


def _tokenizer(score_home):
    return AutoTokenizer.from_pretrained(builtin.builtin_model_dir("student", score_home), local_files_only=True)


def test_examples_are_the_tokens_a_rollout_assembles(score_home):
    """Prompt, then each turn + <|im_end|>, then the tool turn: the chat template's rendering of the episode,
    with the loss on the model's turns only."""
    tokenizer = _tokenizer(score_home)
    for task in builtin_tasks(n=4, seed=3):
        steps = teacher_build.expert_trajectory(task)
        ids, mask = teacher_build.episode_example(tokenizer, task, steps)
        whole = chat_token_ids(tokenizer, episode_messages(task, steps), add_generation_prompt=False)
        assert ids == whole[:len(ids)] and tokenizer.decode(whole[len(ids):]) == "\n"  # the template's last newline
        trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
        assert trained == "".join(render_step(step) + tokenizer.eos_token for step in steps)


def test_kb_names_are_the_same_tokens_wherever_an_episode_writes_them(score_home):
    """A name in the code, the thoughts, the question and the search results is one token sequence (the one after
    a space), so the model can copy it; `"Sturkrar` and ` Sturkrar` are different tokens."""
    tokenizer = _tokenizer(score_home)
    for task in builtin_tasks(family="kb", split="train", n=60, seed=7):
        ids, _ = teacher_build.episode_example(tokenizer, task, teacher_build.expert_trajectory(task))
        text = tokenizer.decode(ids)
        for name in {hop["entity"] for hop in task.meta["hops"]} | {hop["value"] for hop in task.meta["hops"]}:
            spaced = list(tokenizer(" " + name, add_special_tokens=False)["input_ids"])
            found = sum(ids[i:i + len(spaced)] == spaced for i in range(len(ids)))
            assert found == text.count(name) > 0, (task.question, name)


def test_observations_are_what_the_sandbox_prints():
    from shared.tasks.gold import gold_episodes

    tasks = builtin_tasks(n=6, seed=5)
    for task, gold in zip(tasks, gold_episodes(tasks, workers=2)):
        expected = [s.observation for s in teacher_build.expert_trajectory(task)[:-1] if s.kind == "act"]
        assert [s.observation for s in gold.steps[:-1] if s.kind == "act"] == expected
        assert gold.final_answer is not None


def test_the_teacher_recipe_records_its_sft_and_rehashes_when_it_changes(monkeypatch):
    base = builtin._model_recipe("teacher-sft", "tok")
    assert base["size"] == "nano-wide3" and base["induction"]["steps"] > 0
    assert base["sft"]["tasks"] == builtin.SFT["teacher-sft"]["tasks"] and "sft" not in builtin._model_recipe("student", "tok")
    monkeypatch.setitem(builtin.SFT, "teacher-sft", {**builtin.SFT["teacher-sft"], "epochs": base["sft"]["epochs"] + 1})
    assert builtin._digest(builtin._model_recipe("teacher-sft", "tok")) != builtin._digest(base)
    monkeypatch.setitem(builtin.SFT, "teacher-sft", {**builtin.SFT["teacher-sft"], "epochs": base["sft"]["epochs"]})
    assert builtin._digest(builtin._model_recipe("teacher-sft", "tok")) == builtin._digest(base)
    monkeypatch.setattr(teacher_build, "DATA_VERSION", teacher_build.DATA_VERSION + 1)
    assert builtin._digest(builtin._model_recipe("teacher-sft", "tok")) != builtin._digest(base)


def test_validation_tasks_are_train_split_and_unseen():
    settings = builtin.SFT["teacher-sft"]
    trained = builtin.builtin_training_questions("teacher-sft")
    agent = {t.question for t in teacher_build.training_tasks(settings["tasks"], settings["task_seed"])}
    judged = {t.question for t in teacher_build.training_tasks(settings["judge"]["tasks"], settings["judge"]["task_seed"])}
    assert trained == agent | judged and len(agent) == sum(settings["tasks"].values()) and judged - agent
    chosen = builtin._validation_tasks(settings, trained)
    for family, tasks in chosen.items():
        assert len(tasks) == builtin.SFT_VALIDATION["tasks_per_family"]
        assert all(t.split == "train" and t.family == family and t.question not in trained for t in tasks)
    assert builtin.builtin_training_questions("student") == set()


def test_sft_learns_an_episode_and_the_check_sees_it(score_home):
    """A few dozen steps on one episode: greedy reproduces it under teacher forcing; a fresh model does not."""
    tokenizer = _tokenizer(score_home)
    task = builtin_tasks(family="arith", n=1, seed=9)[0]
    example = teacher_build.episode_example(tokenizer, task, teacher_build.expert_trajectory(task))
    model = build_tiny_model("nano", tokenizer, seed=0)
    assert teacher_build.episodes_reproduced(model, [example], pad_id=tokenizer.pad_token_id) == [False]
    result = teacher_build.sft(model, [example] * 4, epochs=60, lr=1e-2, seed=0, batch_tokens=1024, warmup=5,
                               pad_id=tokenizer.pad_token_id)
    assert result["steps"] == result["planned_steps"] == 240 and result["final_loss"] < 0.05
    assert teacher_build.episodes_reproduced(model, [example], pad_id=tokenizer.pad_token_id) == [True]
    assert not model.training and torch.get_num_threads() >= 1


def test_a_teacher_sft_build_records_its_sft_and_checks_in_the_manifest(score_home, tmp_path, monkeypatch):
    """The on-demand `teacher-sft` build end to end, on a few tasks (the real recipe takes minutes; the figures it
    reaches are in docs/teacher.md and bench/teacher_model.py measures them)."""
    judge = {**builtin.SFT["teacher-sft"]["judge"], "tasks": {"arith": 4, "kb": 2}, "replay": {"arith": 2, "kb": 1}}
    small = {**builtin.SFT["teacher-sft"], "tasks": {"arith": 6, "kb": 3}, "judge": judge}
    monkeypatch.setitem(builtin.SFT, "teacher-sft", small)
    monkeypatch.setitem(builtin.INDUCTION, "teacher-sft", {**builtin.INDUCTION["teacher-sft"], "steps": 10})
    monkeypatch.setitem(builtin.SFT_VALIDATION, "tasks_per_family", 3)
    builtin.copy_current_builtins(score_home, tmp_path)  # the tokenizer and the prebuilt roles, not teacher-sft
    directory = builtin.ensure_builtin_model("teacher-sft", tmp_path)
    manifest = builtin._read_manifest(directory)
    assert manifest["role"] == "teacher-sft" and manifest["size"] == "nano-wide3"
    sft = manifest["sft"]
    assert sft["settings"] == small and sft["examples"] == 9
    assert sft["judge"]["examples"] == 2 * 6 + 3  # a verdict and a corrected step per broken trajectory, + replay
    for check in ("validation", "held_out", "judge_validation", "judge_held_out"):
        assert set(sft[check]) == {"arith", "kb"}
        for row in sft[check].values():
            assert row["n"] == 3 and 0 <= row["rate"] <= 1
            assert row["ci95"][0] <= row["rate"] <= row["ci95"][1]
    assert builtin._read_manifest(builtin.builtin_model_dir("teacher", tmp_path))["size"] == "micro"


def test_the_teacher_bench_validates_on_tasks_no_stage_trained_on(tmp_path):
    """`bench/teacher_model.py --split train` leaves out the judge stage's tasks too, as the manifest records them."""
    import bench.teacher_model as bench

    settings = builtin.SFT["teacher-sft"]
    (tmp_path / "builtin.json").write_text(json.dumps({"sft": {"settings": settings}}))
    recorded = bench.recorded_training_questions(str(tmp_path))
    assert recorded == builtin.builtin_training_questions("teacher-sft")
    chosen = teacher_build.unused_train_tasks("kb", 20, exclude=recorded, seed=101)
    assert len(chosen) == 20 and not {t.question for t in chosen} & recorded
    # Growing the draw keeps the first choices (what a smaller n chose stays chosen).
    assert teacher_build.unused_train_tasks("kb", 5, exclude=recorded, seed=101) == chosen[:5]
