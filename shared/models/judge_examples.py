"""Build-time examples that teach the built-in teacher the `judge` strategy's two prompts.

A `judge` teacher reads a failed trajectory (task, gold answer, numbered steps) and names its first faulty step
as a JSON verdict, then, in a second prompt that sees only the verified prefix and the faulty step, writes the
corrected step. A model learns neither from agent episodes, so the build makes both from the suite: a gold
trajectory with one act step broken (`broken_trajectory`: a wrong operand, operator, searched entity or final
answer; its position is the known first error), rendered with exactly the prompts the teacher service sends
(`shared.agent.teacher_prompts`), and answered with the verdict / the expert's step at that position.

Observations are what the sandbox would print, computed without running anything: the expert's code is a
handful of statement shapes (`v = x op n`, `print(v)`, `print(search("..."))`, `final_answer_print(...)`), which
`observe` evaluates over an AST whitelist and refuses otherwise (`tests/models/test_judge_examples.py` checks it
against the real sandbox).
"""

from __future__ import annotations

import ast
import re
import json
import operator

from shared.agent import teacher_prompts as prompts
from shared.agent.format import render_step
from shared.agent.tokens import chat_token_ids
from shared.schemas.agent import Step, Task
from shared.tasks.expert import broken_trajectory, expert_steps

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

SUGGESTION = "Do what the thought of step {n} says, using only what the steps before it showed."
_CLAIM = re.compile(r"gives (-?\d+)")


def analysis_text(steps: list[Step], position: int, what: str) -> str:
    """The verdict's reasoning, written before the step number so a small model reaches the number by steps.

    arith: each act step's printed value against the value the next step's thought says it got ("That gives
    X"), in order, up to the broken step (a wrong final answer: the value its thought gives against what it
    printed). kb: a search for another name than the thought's, or the final answer, which is not the gold one.
    Every comparison is of two numbers or names that stand a few tokens apart in the prompt. The gold answer is
    never written: the analysis goes on to the correction prompt, which must not see it."""
    n, printed = position + 1, steps[position].observation
    if what == "wrong entity searched":
        return f"Step {n} searches for another name than its thought says. So step {n} is wrong."
    if what == "wrong final answer" and not _CLAIM.search(steps[position].thought):  # kb: no value to compare
        return f"Step {n} answers {printed}, which is not the gold answer. So step {n} is wrong."
    # The expert's act steps follow each other from index 1 (after the plan).
    checks = [f"Step {i + 1} printed {steps[i].observation}, step {i + 2} says {_claim(steps[i + 1])}."
              for i in range(1, position)]
    if what == "wrong final answer":
        checks.append(f"Step {n} says {_claim(steps[position])} but answers {printed}.")
    else:
        after = _claim(steps[position + 1]) if position + 1 < len(steps) else "nothing"
        checks.append(f"Step {n} printed {printed}, step {n + 1} says {after}.")
    return " ".join(checks) + f" So step {n} is wrong."


def _claim(step: Step) -> str:
    found = _CLAIM.search(step.thought)
    return found.group(1) if found else "nothing"


class Unsupported(ValueError):
    """Code outside the expert's statement shapes: `observe` computes nothing for it."""


def observe(steps: list[Step], search) -> list[Step]:
    """`steps` with the observation each act step's code prints (`search(query)` -> the formatted hits)."""
    names: dict[str, object] = {}
    observed = []
    for step in steps:
        if step.kind != "act":
            observed.append(step)
            continue
        printed = [str(value) for value in _run(step.code or "", names, search)]
        observed.append(step.model_copy(update={"observation": "\n".join(printed) or "Execution finished with no output."}))
    return observed


def _run(code: str, names: dict, search) -> list:
    printed = []
    for statement in ast.parse(code).body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0], ast.Name):
            names[statement.targets[0].id] = _value(statement.value, names, search)
        elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
            call = statement.value
            if not (isinstance(call.func, ast.Name) and call.func.id in ("print", "final_answer_print")
                    and len(call.args) == 1 and not call.keywords):
                raise Unsupported(ast.unparse(statement))
            printed.append(_value(call.args[0], names, search))
        else:
            raise Unsupported(ast.unparse(statement))
    return printed


def _value(node: ast.expr, names: dict, search):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, str)):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _value(node.left, names, search), _value(node.right, names, search)
        if type(left) is not int or type(right) is not int:  # `"x" * 10**9` is code too
            raise Unsupported(ast.unparse(node))
        return _OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, names, search)
    if isinstance(node, ast.Call) and not node.keywords:
        if isinstance(node.func, ast.Name) and node.func.id == "search" and len(node.args) == 1:
            return search(_value(node.args[0], names, search))
        if isinstance(node.func, ast.Attribute) and node.func.attr == "strip" and not node.args:
            return str(_value(node.func.value, names, search)).strip()
    raise Unsupported(ast.unparse(node))


def verdict_text(steps: list[Step], position: int, what: str) -> str:
    """The verdict for a first error at step index `position` (0-based; the prompt numbers steps from 1)."""
    n = position + 1
    return json.dumps({"answer_correct": False,
                       "analysis": analysis_text(steps, position, what),
                       "first_error_step": n, "suggestion": SUGGESTION.format(n=n)})


def judge_example(tokenizer, task: Task, broken: list[Step], position: int, what: str) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of prompt 1 on an observed broken trajectory, answered with its verdict."""
    return _answered(tokenizer, prompts.judge_messages(task, broken), verdict_text(broken, position, what))


def correction_example(tokenizer, task: Task, broken: list[Step], position: int, what: str,
                       gold: list[Step]) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of prompt 2 for the verdict's step, answered with the expert's step there (`gold`: the
    expert's steps)."""
    n = position + 1
    messages = prompts.correction_messages(task, broken[:position], broken[position],
                                           analysis_text(broken, position, what),
                                           SUGGESTION.format(n=n))
    return _answered(tokenizer, messages, render_step(gold[position]))


def _answered(tokenizer, messages: list[dict], reply: str) -> tuple[list[int], list[int]]:
    ids = chat_token_ids(tokenizer, messages, add_generation_prompt=True)
    answer = list(tokenizer(reply, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return ids + answer, [0] * len(ids) + [1] * len(answer)


def training_examples(tokenizer, tasks: list[Task], break_seed: int, *, corrections: bool = True,
                      rename_kb: float = 0.0) -> list[tuple[list[int], list[int]]]:
    """Per task one broken trajectory (seeded by `break_seed`, in task order): its verdict example and, with
    `corrections`, the corrected-step example. A `rename_kb` share of the kb tasks have the world's names swapped
    for others (`shared.models.kb_renaming`, its own seeded draw, so the breaks are the same either way)."""
    import random

    from shared.models.kb_renaming import renamed
    from shared.tasks.gold import builtin_tools

    search, rng = builtin_tools()["search"], random.Random(break_seed)
    names_rng = random.Random(f"rename/{break_seed}")
    examples = []
    for task in tasks:
        steps, position, what = broken_trajectory(task, rng)
        broken, gold = observe(steps, search), expert_steps(task)
        if task.family == "kb" and rename_kb and names_rng.random() < rename_kb:
            task, (broken, gold) = renamed(task, [broken, gold], names_rng)
        examples.append(judge_example(tokenizer, task, broken, position, what))
        if corrections:  # the expert's step is rendered without its observation
            examples.append(correction_example(tokenizer, task, broken, position, what, gold))
    return examples
