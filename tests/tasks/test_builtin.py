"""The built-in suite: splits that never overlap, determinism, sizes, the fixed world and its search corpus."""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
import subprocess
import sys

import pytest

from shared.tasks import kb
from shared.tasks.builtin import (
    FAMILIES,
    builtin_search_backend,
    builtin_tasks,
    knowledge_base,
    split_of,
    tokenizer_corpus,
)

SEEDS = (0, 1, 7)


def _questions(tasks) -> set[str]:
    return {t.question for t in tasks}


def test_train_and_eval_never_share_a_question_across_seeds():
    train = set().union(*(_questions(builtin_tasks(split="train", n=2000, seed=s)) for s in SEEDS))
    held_out = set().union(*(_questions(builtin_tasks(split="eval", n=500, seed=s)) for s in SEEDS))
    assert len(train) > 2000 and len(held_out) > 500  # the seeds really drew different tasks
    assert train.isdisjoint(held_out)


def test_each_task_is_labelled_with_the_split_its_question_hashes_to():
    for split in ("train", "eval"):
        tasks = builtin_tasks(split=split, n=300, seed=3)
        assert {t.split for t in tasks} == {split}
        assert all(split_of(t.question) == split for t in tasks)


def test_the_eval_share_is_about_a_fifth():
    questions = [q.question for q in kb.all_questions()]
    share = sum(split_of(q) == "eval" for q in questions) / len(questions)
    assert 0.17 < share < 0.23


def test_generation_is_deterministic_and_seeded():
    first = [t.model_dump() for t in builtin_tasks(n=300, seed=5)]
    again = [t.model_dump() for t in builtin_tasks(n=300, seed=5)]
    other = [t.model_dump() for t in builtin_tasks(n=300, seed=6)]
    assert first == again
    assert first != other


def test_generation_does_not_depend_on_the_process_hash_seed():
    # str hashes differ between processes; a split or an id that leaned on hash() would differ here.
    code = "from shared.tasks.builtin import builtin_tasks; print([t.id for t in builtin_tasks(n=40, seed=2)])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert output.strip() == str([t.id for t in builtin_tasks(n=40, seed=2)])


@pytest.mark.parametrize("family", [None, *FAMILIES])
@pytest.mark.parametrize("n", [0, 1, 7, 150])
def test_n_is_respected_and_tasks_are_distinct(family, n):
    tasks = builtin_tasks(family=family, split="eval", n=n, seed=1)
    assert len(tasks) == n
    assert len({t.id for t in tasks}) == n
    assert all(t.family == (family or t.family) for t in tasks)


def test_no_family_interleaves_both_families():
    tasks = builtin_tasks(n=9, seed=0)
    assert [t.family for t in tasks] == ["arith", "kb"] * 4 + ["arith"]
    # Each family's part is that family's own list, so mixed and single-family runs agree.
    assert [t.id for t in tasks if t.family == "kb"] == [t.id for t in builtin_tasks(family="kb", n=4, seed=0)]


def test_ids_hash_the_question():
    for task in builtin_tasks(n=50, seed=4):
        assert task.id == f"{task.family}-{hashlib.sha1(task.question.encode()).hexdigest()[:10]}"


def test_unknown_family_names_the_allowed_ones():
    with pytest.raises(ValueError, match="arith, kb"):
        builtin_tasks(family="geometry")


def test_asking_for_more_kb_tasks_than_the_world_holds_is_an_error():
    with pytest.raises(ValueError, match="only .* eval tasks"):
        builtin_tasks(family="kb", split="eval", n=len(kb.all_questions()))


def test_tasks_survive_a_json_round_trip():
    for task in builtin_tasks(n=20, seed=0):
        assert json.loads(task.model_dump_json()) == task.model_dump()


def _apply(start: int, ops) -> int:
    functions = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    value = start
    for symbol, operand in ops:
        value = functions[symbol](value, operand)
    return value


def test_arith_tasks_are_chains_of_two_to_four_operations_on_two_or_three_digit_numbers():
    for task in builtin_tasks(family="arith", n=500, seed=2):
        start, ops = task.meta["start"], task.meta["ops"]
        assert 2 <= len(ops) <= 4
        assert all(10 <= n <= 999 for n in [start] + [operand for _, operand in ops])
        assert task.true_answer == _apply(start, ops)
        numbers = [int(x) for x in re.findall(r"\d+", task.question)]
        assert numbers == [start] + [operand for _, operand in ops]


def test_arith_uses_several_phrasings():
    openings = {task.question.split()[0] for task in builtin_tasks(family="arith", n=100)}
    assert len(openings) >= 3


def _answer_from_world(kind: str, anchor: str) -> str:
    w = kb.world()
    if kind == "founder_birth_country":
        return w.cities[w.people[w.companies[anchor].founder].birth_city].country
    if kind == "founder_birth_city":
        return w.people[w.companies[anchor].founder].birth_city
    if kind == "birth_country":
        return w.cities[w.people[anchor].birth_city].country
    return w.cities[w.companies[w.people[anchor].company].hq_city].country


def test_kb_answers_follow_the_world_and_never_appear_in_the_question():
    tasks = builtin_tasks(family="kb", n=1000, seed=3)
    assert {t.meta["kind"] for t in tasks} == set(kb.KINDS)
    for task in tasks:
        anchor = task.meta["hops"][0]["entity"]
        assert anchor in task.question
        assert task.true_answer == _answer_from_world(task.meta["kind"], anchor)
        assert 2 <= len(task.meta["hops"]) <= 3
        for hop in task.meta["hops"]:
            assert hop["value"] not in task.question


def _entity_names() -> list[str]:
    w = kb.world()
    return [*w.countries, *w.cities, *w.people, *w.companies]


def test_world_names_are_unique_and_none_hides_inside_another():
    names = [name.lower() for name in _entity_names()]
    assert len(names) == len(set(names)) == len(knowledge_base())
    joined = "\n".join(names)  # names hold no newline, so a match cannot span two names
    assert [name for name in names if joined.count(name) != 1] == []


def test_world_relations_are_consistent():
    w = kb.world()
    assert all(c.country in w.countries for c in w.cities.values())
    assert all(w.cities[c.capital].country == c.name for c in w.countries.values())
    assert all(p.birth_city in w.cities and p.home_city != p.birth_city for p in w.people.values())
    assert all(w.people[c.founder].company == c.name for c in w.companies.values())


def test_knowledge_base_is_fixed_and_each_doc_names_its_title():
    docs = knowledge_base()
    assert docs == knowledge_base()
    assert len({d["id"] for d in docs}) == len(docs)
    assert all(d["title"] in d["text"] for d in docs)
    docs[0]["text"] = "changed"  # callers get copies: the shared corpus cannot be corrupted
    assert knowledge_base()[0]["text"] != "changed"


def test_each_hop_is_found_by_searching_its_entity():
    backend = builtin_search_backend()
    top1 = total = 0
    for task in builtin_tasks(family="kb", n=300, seed=11):
        for hop in task.meta["hops"]:
            hits = backend.search(hop["entity"], k=3)
            found = [h.title == hop["entity"] and hop["value"] in h.text for h in hits]
            assert any(found), f"{hop} not in the top 3 for {hop['entity']!r}"
            top1 += found[0]
            total += 1
    assert top1 / total > 0.95


def test_search_backend_is_cached_per_process():
    assert builtin_search_backend() is builtin_search_backend()


def test_tokenizer_corpus_covers_questions_steps_observations_and_docs():
    corpus = tokenizer_corpus()
    texts = set(corpus)
    for family in FAMILIES:
        for split in ("train", "eval"):
            assert builtin_tasks(family=family, split=split, n=1)[0].question in texts
    assert {f"{d['title']}: {d['text']}" for d in knowledge_base()} <= texts
    assert any(t.startswith("print(search(") for t in corpus)
    assert any(t.startswith("final_answer_print(") for t in corpus)
    assert any(t.startswith("[1] ") and "\n[2] " in t for t in corpus)  # formatted search results
    assert any(re.fullmatch(r"-?\d+", t) for t in corpus)  # printed numbers
    for family in FAMILIES:  # a few thousand questions in all
        for split, n in (("train", 1000), ("eval", 250)):
            assert all(t.question in texts for t in builtin_tasks(family=family, split=split, n=n))
