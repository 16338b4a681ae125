"""Renamed kb episodes: only the world's names change, consistently, to other names of the world."""

from __future__ import annotations

import random
import re

from transformers import AutoTokenizer

from shared.agent.format import render_step
from shared.models import builtin, teacher_build
from shared.models.kb_renaming import _CAPITALISED_RUN, _names, renamed_episode
from shared.tasks.builtin import builtin_tasks


def _texts(task, steps) -> list[str]:
    return [task.question, str(task.true_answer)] + [render_step(s) for s in steps] + [s.observation or "" for s in steps]


def test_only_the_names_change_and_each_the_same_way_everywhere():
    rng = random.Random(3)
    for task in builtin_tasks(family="kb", split="train", n=40, seed=11):
        steps = teacher_build.expert_trajectory(task)
        new_task, new_steps = renamed_episode(task, steps, rng)
        old_texts, new_texts = _texts(task, steps), _texts(new_task, new_steps)
        # Masking every capitalised run leaves the same text: nothing but names was touched.
        assert [_CAPITALISED_RUN.sub("N", t) for t in old_texts] == [_CAPITALISED_RUN.sub("N", t) for t in new_texts]
        joined = "\n".join(new_texts)
        # Every hop's name is another one, so what the world says about the old names cannot answer it.
        assert all(new["entity"] != old["entity"] and new["value"] != old["value"]
                   for old, new in zip(task.meta["hops"], new_task.meta["hops"]))
        # The renamed hops are what the renamed episode searches and answers.
        searched = re.findall(r'search\(" ([^"]+)"\)', joined)
        assert searched == [hop["entity"] for hop in new_task.meta["hops"]]
        assert new_task.true_answer == new_task.meta["hops"][-1]["value"] == new_steps[-1].code.split('"')[1].strip()
        # Each hop's value is in the search results of its entity, as in the world.
        observations = [s.observation for s in new_steps if s.code and "search(" in s.code]
        assert all(hop["value"] in seen for hop, seen in zip(new_task.meta["hops"], observations))


def test_people_who_share_a_first_name_still_share_it():
    from shared.tasks.kb import world

    people = list(world().people)
    by_first: dict[str, list[str]] = {}
    for name in people:
        by_first.setdefault(name.split(" ")[0], []).append(name)
    first, (a, b, *_) = next((f, names) for f, names in by_first.items() if len(names) > 1)
    from shared.models.kb_renaming import _Renamer

    renamer = _Renamer(random.Random(0))
    new_a, new_b = renamer.name(a), renamer.name(b)
    assert new_a.split(" ")[0] == new_b.split(" ")[0] != first and new_a != new_b
    assert new_a in _names() or new_a.split(" ")[0] in {n.split(" ")[0] for n in people}
    assert _names()[a] == _names()[b] == "person"


def test_renamed_names_copy_token_for_token(score_home):
    """The new names are written as the old ones were (after a space), so each is one token sequence wherever the
    renamed episode writes it, as `test_kb_names_are_the_same_tokens_wherever_an_episode_writes_them` checks."""
    tokenizer = AutoTokenizer.from_pretrained(builtin.builtin_model_dir("student", score_home), local_files_only=True)
    tasks = builtin_tasks(family="kb", split="train", n=30, seed=12)
    examples = teacher_build.agent_examples(tokenizer, tasks, rename_kb=1.0, seed=4)
    rng = random.Random(4)
    for task, (ids, _) in zip(tasks, examples):
        rng.random()
        new_task, _ = renamed_episode(task, teacher_build.expert_trajectory(task), rng)
        text = tokenizer.decode(ids)
        assert new_task.question in text
        for name in {hop["entity"] for hop in new_task.meta["hops"]} | {hop["value"] for hop in new_task.meta["hops"]}:
            spaced = list(tokenizer(" " + name, add_special_tokens=False)["input_ids"])
            found = sum(ids[i:i + len(spaced)] == spaced for i in range(len(ids)))
            assert found == text.count(name) > 0, (new_task.question, name)


def test_judge_examples_rename_kb_tasks_and_keep_the_same_breaks(score_home):
    import json

    from shared.models.judge_examples import training_examples

    tokenizer = AutoTokenizer.from_pretrained(builtin.builtin_model_dir("student", score_home), local_files_only=True)
    tasks = builtin_tasks(family="kb", split="train", n=8, seed=13) + builtin_tasks(family="arith", n=4, seed=13)
    plain = training_examples(tokenizer, tasks, 5, corrections=False)
    renamed_ = training_examples(tokenizer, tasks, 5, corrections=False, rename_kb=1.0)

    def verdict(example) -> dict:
        ids, mask = example
        return json.loads(tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True))

    for index, (a, b) in enumerate(zip(plain, renamed_)):
        assert verdict(a)["first_error_step"] == verdict(b)["first_error_step"]
        assert (a == b) == (index >= 8)  # kb examples renamed, arith untouched
