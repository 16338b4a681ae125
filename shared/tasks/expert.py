"""The scripted expert: the gold Code-as-Action trajectory of a built-in task, read from the task's `meta`.

Each act step's thought states what the previous observation showed and what comes next, so models trained
on these trajectories learn to read observations rather than guess. Observations are left empty: the caller
runs the code in the sandbox, which is what makes them trustworthy.
"""

from __future__ import annotations

import json
import re

from shared.schemas.agent import Step, Task
from shared.tasks.arith import ArithChain, phrase_op

_VARIABLES = "abcdefgh"  # one per intermediate arithmetic result; chains have at most 4 operations

# kb relations: why the expert looks an entity up, and how it states what the lookup showed.
_PURPOSE = {
    "founded_by": "to find out who founded it",
    "born_in": "to find out where {entity} was born",
    "located_in": "to find out which country it is in",
    "founded": "to find out which company {entity} founded",
    "headquartered_in": "to find out where it is headquartered",
}
# The fact refers back to the searched entity ("it") instead of naming it again: the value follows the words it
# follows in the search result ("founded by Y"), so a model copies it, while naming the entity would mean
# recalling which of the episode's names was searched last.
_FACT = {
    "founded_by": "it was founded by {value}",
    "born_in": "this person was born in {value}",
    "located_in": "it is located in {value}",
    "founded": "this person founded {value}",
    "headquartered_in": "it is headquartered in {value}",
}
_PLAN = {
    "founder_birth_country": "I need the founder of {anchor}, the city where that person was born, and the country "
    "that city is in. I will search for each one in turn.",
    "founder_birth_city": "I need the founder of {anchor} and the city where that person was born. "
    "I will search for {anchor} first, then for its founder.",
    "birth_country": "I need the city where {anchor} was born and the country that city is in. "
    "I will search for {anchor} first, then for the city.",
    "hq_country": "I need the company {anchor} founded, the city where it is headquartered, and the country that "
    "city is in. I will search for each one in turn.",
}


def _name_literal(name: str) -> str:
    """A kb name as a string literal, written with a space before it: `" Sturkrar Holdings"`.

    The byte-level BPE splits `"Sturkrar` (no space) into other tokens than ` Sturkrar`, which is how the name
    appears in the question, the thoughts and the search results. With the space a model copies the name's
    tokens from its context instead of learning a spelling map per name (search ignores the space). For the
    same reason no kb thought, and no question, starts with a name."""
    return json.dumps(" " + name)


def search_code(name: str) -> str:
    """The expert's kb lookup of `name`."""
    return f"print(search({_name_literal(name)}))"


def kb_answer_code(answer: str) -> str:
    """The expert's kb final answer: `.strip()` keeps the tokenizer-friendly space out of the answer."""
    return f"final_answer_print({_name_literal(answer)}.strip())"


def _family_and_meta(task: Task) -> tuple[str, dict]:
    family, meta = getattr(task, "family", None), getattr(task, "meta", None)
    if family not in ("arith", "kb") or not isinstance(meta, dict):
        raise ValueError(f"task {task.id!r} is not a built-in task: the expert needs its 'family' and 'meta' fields")
    return family, meta


def _arith_steps(meta: dict) -> list[Step]:
    chain = ArithChain.from_meta(meta)
    values = chain.values()
    phrases = ", ".join(phrase_op(s, n) for s, n in chain.ops)
    steps = [Step(kind="plan", thought=f"There are {len(chain.ops)} operations to apply to {chain.start}: {phrases}. "
                  "I will apply them one at a time in Python and print each intermediate result.")]
    source = str(chain.start)
    for i, (symbol, operand) in enumerate(chain.ops):
        var = _VARIABLES[i]
        before = f"Start from {chain.start}" if i == 0 else f"That gives {values[i - 1]}. Next"
        thought = f"{before}: {phrase_op(symbol, operand)}."
        steps.append(Step(kind="act", thought=thought, code=f"{var} = {source} {symbol} {operand}\nprint({var})"))
        source = var
    steps.append(Step(kind="act", thought=f"That gives {values[-1]}, which is the final result.",
                      code=f"final_answer_print({source})"))
    return steps


def _kb_steps(meta: dict) -> list[Step]:
    """The plan, then from each hop's progress (-1: nothing searched yet) the step that follows it."""
    plan = Step(kind="plan", thought=_PLAN[meta["kind"]].format(anchor=meta["hops"][0]["entity"]))
    return [plan, *(_kb_step_from(meta, progress) for progress in range(-1, len(meta["hops"])))]


def expert_steps(task: Task) -> list[Step]:
    """The full gold trajectory: a plan step, then act steps ending in `final_answer_print`."""
    family, meta = _family_and_meta(task)
    return _arith_steps(meta) if family == "arith" else _kb_steps(meta)


def expert_next_step(task: Task, prefix: list[Step]) -> Step:
    """The expert's step after `prefix`, read from what the prefix's observations established.

    A prefix that is the beginning of the expert's own trajectory (same code, step for step) continues that
    trajectory. Any other prefix — steps named differently, failed, repeated or wrong — continues from the
    state its observations show: for arith the furthest correct intermediate value printed, for kb the
    furthest hop a search resolved; the step then carries literal values, so it never relies on the
    prefix's variable names.
    """
    family, meta = _family_and_meta(task)
    gold = expert_steps(task)
    if not prefix:
        return gold[0]
    if _follows(prefix, gold):
        if len(prefix) >= len(gold):
            raise ValueError(f"the expert's trajectory for task {task.id!r} has {len(gold)} steps; "
                             f"a prefix of {len(prefix)} leaves nothing to add")
        return gold[len(prefix)]
    progress = expert_progress(task, prefix)
    return _arith_step_from(meta, progress) if family == "arith" else _kb_step_from(meta, progress)


def expert_progress(task: Task, prefix: list[Step]) -> int:
    """How far the prefix's observations got: the index of the furthest arith value printed / kb hop resolved.

    -1 when nothing is established yet. Only observations count (code is not read), so a step that printed a
    correct value however it computed it advances the chain, and a step whose code raised does not.
    """
    family, meta = _family_and_meta(task)
    observations = [s.observation for s in prefix if s.kind == "act" and s.observation and not _failed(s.observation)]
    if family == "arith":
        values = ArithChain.from_meta(meta).values()
        printed = {int(n) for obs in observations for n in _INTEGER.findall(obs)}
        return max((i for i, v in enumerate(values) if v in printed), default=-1)
    hops = meta["hops"]
    return max((i for i, hop in enumerate(hops) if any(_resolves(hop, obs) for obs in observations)), default=-1)


def _follows(prefix: list[Step], gold: list[Step]) -> bool:
    """True when every prefix step is the gold step at its position (same kind and code)."""
    if len(prefix) > len(gold):
        return False
    return all(p.kind == g.kind and (p.code or "").strip() == (g.code or "").strip() for p, g in zip(prefix, gold))


_INTEGER = re.compile(r"(?<![\w.])-?\d+(?![\w.])")
_ERROR_PREFIXES = ("Error:", "Traceback")
# How a kb document states each relation ("X was born in Y", "Y is a city located in Z", ...).
_DOC_FACT = {
    "founded_by": "founded by {value}",
    "born_in": "born in {value}",
    "located_in": "located in {value}",
    "founded": "founded {value}",
    "headquartered_in": "headquartered in {value}",
}


def _failed(observation: str) -> bool:
    return observation.lstrip().startswith(_ERROR_PREFIXES)


def _resolves(hop: dict, observation: str) -> bool:
    """The top search hit is the hop's entity (a line "[1] <entity>: ...") and states the hop's fact.

    Only the top hit counts: a search shows neighbouring documents too (a company's founder, say), and a
    hop is resolved by searching for its entity, not by a neighbour's document turning up.
    """
    head = re.compile(rf"^\[1\] {re.escape(hop['entity'])}: ")
    fact = _DOC_FACT[hop["relation"]].format(value=hop["value"])
    return any(head.match(line) and fact in line for line in observation.splitlines())


def _arith_step_from(meta: dict, progress: int) -> Step:
    chain = ArithChain.from_meta(meta)
    values = chain.values()
    if progress == len(values) - 1:
        return Step(kind="act", thought=f"The result so far is {values[-1]}, which is the final result.",
                    code=f"final_answer_print({values[-1]})")
    symbol, operand = chain.ops[progress + 1]
    source = chain.start if progress < 0 else values[progress]
    before = f"Start from {chain.start}" if progress < 0 else f"The last correct value is {source}. Next"
    var = _VARIABLES[progress + 1]
    return Step(kind="act", thought=f"{before}: {phrase_op(symbol, operand)}.",
                code=f"{var} = {source} {symbol} {operand}\nprint({var})")


def _kb_step_from(meta: dict, progress: int) -> Step:
    hops = meta["hops"]
    if progress == len(hops) - 1:
        answer = hops[-1]["value"]
        fact = _FACT[hops[-1]["relation"]].format(**hops[-1])
        return Step(kind="act", thought=f"The search shows that {fact}, so the answer is {answer}.",
                    code=kb_answer_code(answer))
    hop = hops[progress + 1]
    purpose = _PURPOSE[hop["relation"]].format(entity=hop["entity"])
    if progress < 0:
        thought = f"First, I search for {hop['entity']} {purpose}."
    else:
        learnt = _FACT[hops[progress]["relation"]].format(**hops[progress])
        thought = f"The search shows that {learnt}. Next, I search for {hop['entity']} {purpose}."
    return Step(kind="act", thought=thought, code=search_code(hop["entity"]))


def broken_trajectory(task: Task, rng, *, restyle: bool = False) -> tuple[list[Step], int, str]:
    """The gold trajectory with one act step deliberately wrong: (steps, index of the broken step, what broke).

    arith: a wrong operand or operator (later steps keep the gold code, so the error propagates) or a wrong
    final answer; kb: a search for the wrong entity (then a wrong final answer) or a wrong final answer.
    Every broken trajectory ends in a wrong final answer. `rng` is a `random.Random`.
    `restyle=True` writes every step's code differently from the expert (other variable names, search
    results stored before printing) without changing what it prints, as another agent would.
    """
    family, meta = _family_and_meta(task)
    gold = expert_steps(task)
    position = rng.randrange(1, len(gold))
    if family == "arith":
        steps, position, what = _broken_arith(gold, meta, position, rng)
    else:
        steps, position, what = _broken_kb(gold, meta, position, rng)
    if restyle:
        steps = [s.model_copy(update={"code": _restyled(s.code)}) if s.code else s for s in steps]
    return steps, position, what


_EXPERT_VARIABLE = re.compile(rf"\b([{_VARIABLES}])\b")
_PRINTED_SEARCH = re.compile(r"^print\((search\(.*\))\)$")


def _restyled(code: str) -> str:
    """The same effect in other words: `a` -> `value_1`, `print(search(q))` -> `hits = search(q)` + `print(hits)`."""
    search = _PRINTED_SEARCH.match(code)
    if search:
        return f"hits = {search.group(1)}\nprint(hits)"
    return _EXPERT_VARIABLE.sub(lambda m: f"value_{_VARIABLES.index(m.group(1)) + 1}", code)


def _broken_arith(gold: list[Step], meta: dict, position: int, rng) -> tuple[list[Step], int, str]:
    chain = ArithChain.from_meta(meta)
    values = chain.values()
    steps = list(gold)
    if position == len(gold) - 1:
        wrong = values[-1] + rng.choice([-1, 1]) * rng.randint(1, 9)
        steps[position] = gold[position].model_copy(update={"code": f"final_answer_print({wrong})"})
        return steps, position, "wrong final answer"
    op_index = position - 1
    symbol, operand = chain.ops[op_index]
    source = str(chain.start) if op_index == 0 else _VARIABLES[op_index - 1]
    if rng.random() < 0.5:
        operand += rng.choice([-1, 1]) * rng.randint(1, 9)
        what = "wrong operand"
    else:
        symbol = rng.choice([s for s in ("+", "-", "*") if s != symbol])
        what = "wrong operator"
    var = _VARIABLES[op_index]
    steps[position] = gold[position].model_copy(update={"code": f"{var} = {source} {symbol} {operand}\nprint({var})"})
    return steps, position, what


def _broken_kb(gold: list[Step], meta: dict, position: int, rng) -> tuple[list[Step], int, str]:
    from shared.tasks.kb import documents  # the world is built on first use; only kb corruption needs it

    hops = meta["hops"]
    named = {hop["entity"] for hop in hops} | {hop["value"] for hop in hops}
    titles = [doc["title"] for doc in documents()]
    other = rng.choice([t for t in rng.sample(titles, 8) if t not in named])
    wrong_answer = Step(kind="act", thought=f"So the answer is {other}.", code=kb_answer_code(other))
    if position == len(gold) - 1:
        return [*gold[:-1], wrong_answer], position, "wrong final answer"
    wrong_search = gold[position].model_copy(update={"code": search_code(other)})
    return [*gold[:position], wrong_search, wrong_answer], position, "wrong entity searched"


def remaining_gold_turns(task: Task, prefix: list[Step]) -> int | None:
    """Act turns the expert still needs after `prefix` (its remaining gold horizon); None for non-built-in tasks.

    From the furthest value or hop the prefix's observations established, the expert needs one turn per
    remaining operation or hop and one for `final_answer_print`.
    """
    try:
        family, meta = _family_and_meta(task)
    except ValueError:
        return None
    todo = len(meta["ops"]) if family == "arith" else len(meta["hops"])
    return todo - expert_progress(task, prefix)
