"""The scripted expert: the gold Code-as-Action trajectory of a built-in task, read from the task's `meta`.

Each act step's thought states what the previous observation showed and what comes next, so models trained
on these trajectories learn to read observations rather than guess. Observations are left empty: the caller
runs the code in the sandbox, which is what makes them trustworthy.
"""

from __future__ import annotations

import json

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
_FACT = {
    "founded_by": "{entity} was founded by {value}",
    "born_in": "{entity} was born in {value}",
    "located_in": "{entity} is located in {value}",
    "founded": "{entity} founded {value}",
    "headquartered_in": "{entity} is headquartered in {value}",
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
    hops = meta["hops"]
    anchor = hops[0]["entity"]
    steps = [Step(kind="plan", thought=_PLAN[meta["kind"]].format(anchor=anchor))]
    for i, hop in enumerate(hops):
        purpose = _PURPOSE[hop["relation"]].format(entity=hop["entity"])
        if i == 0:
            thought = f"First, I search for {hop['entity']} {purpose}."
        else:
            learnt = _FACT[hops[i - 1]["relation"]].format(**hops[i - 1])
            thought = f"{learnt}. Next, I search for {hop['entity']} {purpose}."
        steps.append(Step(kind="act", thought=thought, code=f"print(search({json.dumps(hop['entity'])}))"))
    answer = hops[-1]["value"]
    last_fact = _FACT[hops[-1]["relation"]].format(**hops[-1])
    steps.append(Step(kind="act", thought=f"{last_fact}, so the answer is {answer}.",
                      code=f"final_answer_print({json.dumps(answer)})"))
    return steps


def expert_steps(task: Task) -> list[Step]:
    """The full gold trajectory: a plan step, then act steps ending in `final_answer_print`."""
    family, meta = _family_and_meta(task)
    return _arith_steps(meta) if family == "arith" else _kb_steps(meta)


def expert_next_step(task: Task, prefix: list[Step]) -> Step:
    """The expert's step after `prefix`, taken to be the first len(prefix) steps of its own trajectory."""
    steps = expert_steps(task)
    if len(prefix) >= len(steps):
        raise ValueError(f"the expert's trajectory for task {task.id!r} has {len(steps)} steps; "
                         f"a prefix of {len(prefix)} leaves nothing to add")
    return steps[len(prefix)]
