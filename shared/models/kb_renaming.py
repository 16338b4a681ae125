"""kb episodes with the world's names swapped for other names of the world, consistently within each episode.

The kb family's world is fixed, and train and eval questions ask about the same entities, so an episode's names
can be predicted two ways: copied from the search results in context, or recalled from the facts that training
episodes showed. Only copying generalises, but a tiny model fine-tuned on real episodes learns a mix of both,
and which one wins depended on the batch order and the CPU (docs/models.md). An episode whose every person,
company, city and country is renamed (the same other name wherever the old one appears: question, thoughts,
code, search results, answer) can only be written by copying, so fine-tuning on renamed episodes teaches copying
alone. The new names are the world's own (a person gets another first name and surname, a company another
name with its suffix, a city or country another one), so the tokens to copy are the ones real episodes use: a
first try with newly made names taught the model to copy those and never to write the world's name tokens.
"""

from __future__ import annotations

import random
import re
from functools import cache

from shared.schemas.agent import Task

# A run of capitalised words: a name is one word (city, country) or two (person, company) inside such a run.
_CAPITALISED_RUN = re.compile(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)*\b")


@cache
def _names() -> dict[str, str]:
    """Every name of the world and its kind: person, company, city or country."""
    from shared.tasks.kb import world

    w = world()
    kinds = {name: "country" for name in w.countries}
    kinds.update({name: "city" for name in w.cities})
    kinds.update({name: "person" for name in w.people})
    kinds.update({name: "company" for name in w.companies})
    return kinds


@cache
def _parts() -> dict[str, tuple[str, ...]]:
    """The world's name parts by kind, to draw replacements from: first names, surnames, company words, cities,
    countries."""
    kinds = _names()
    people = [name.split(" ", 1) for name, kind in kinds.items() if kind == "person"]
    return {"first": tuple(sorted({first for first, _ in people})),
            "surname": tuple(sorted({surname for _, surname in people})),
            "company": tuple(sorted({name.split(" ", 1)[0] for name, kind in kinds.items() if kind == "company"})),
            "city": tuple(sorted(name for name, kind in kinds.items() if kind == "city")),
            "country": tuple(sorted(name for name, kind in kinds.items() if kind == "country"))}


class _Renamer:
    """One episode's mapping from world names to other world names of the same kind, made on first sight and
    one-to-one within the episode."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._fresh: dict[str, str] = {}
        self._taken: set[str] = set()

    def _draw(self, part: str, old: str) -> str:
        key = f"{part}:{old}"
        if key not in self._fresh:
            while True:
                new = self._rng.choice(_parts()[part])
                if new != old and f"{part}:{new}" not in self._taken:
                    break
            self._taken.add(f"{part}:{new}")
            self._fresh[key] = new
        return self._fresh[key]

    def name(self, name: str) -> str:
        kind = _names()[name]
        if kind == "person":
            # First names are shared in the world (several people are called Masha); drawn separately from
            # surnames, they stay shared, so copying still has to tell "Masha Reses" from "Masha Zarkral".
            first, surname = name.split(" ", 1)
            return f"{self._draw('first', first)} {self._draw('surname', surname)}"
        if kind == "company":
            word, suffix = name.split(" ", 1)
            return f"{self._draw('company', word)} {suffix}"
        return self._draw(kind, name)

    def text(self, text: str | None) -> str | None:
        if text is None:
            return None
        return _CAPITALISED_RUN.sub(lambda match: self._run(match.group(0)), text)

    def _run(self, run: str) -> str:
        words, out, i = run.split(" "), [], 0
        names = _names()
        while i < len(words):
            pair = " ".join(words[i:i + 2])
            if i + 1 < len(words) and pair in names:
                out.append(self.name(pair))
                i += 2
            elif words[i] in names:
                out.append(self.name(words[i]))
                i += 1
            else:
                out.append(words[i])
                i += 1
        return " ".join(out)


def renamed_episode(task: Task, steps: list, rng: random.Random) -> tuple[Task, list]:
    """`task` and its `steps` (with observations) with every world name swapped for another, consistently."""
    task, (steps,) = renamed(task, [steps], rng)
    return task, steps


def renamed(task: Task, step_lists: list[list], rng: random.Random) -> tuple[Task, list[list]]:
    """`task` and several step lists of it (a broken trajectory and the gold one, say), renamed with one mapping."""
    renamer = _Renamer(rng)
    question = renamer.text(task.question)
    new_lists = [[step.model_copy(update={field: renamer.text(getattr(step, field))
                                          for field in ("thought", "code", "observation")})
                  for step in steps] for steps in step_lists]
    answer = renamer.text(str(task.true_answer)) if task.true_answer is not None else None
    meta = dict(task.meta or {})
    if "hops" in meta:
        meta["hops"] = [{key: renamer.text(value) if key in ("entity", "value") else value
                         for key, value in hop.items()} for hop in meta["hops"]]
    return task.model_copy(update={"question": question, "true_answer": answer, "meta": meta}), new_lists
