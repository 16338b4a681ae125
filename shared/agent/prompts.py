"""The agent's fixed texts: system prompt, tags and the turn that follows a plan.

Kept in one module because the tokenizer is trained on them and the renderer,
the parser and the tiny models must all agree on every character.
"""

PLAN_OPEN, PLAN_CLOSE = "<first_thought>", "</first_thought>"
THOUGHT_OPEN, THOUGHT_CLOSE = "<thought>", "</thought>"
CODE_OPEN, CODE_CLOSE = "<code>", "</code>"
TAGS = (PLAN_OPEN, PLAN_CLOSE, THOUGHT_OPEN, THOUGHT_CLOSE, CODE_OPEN, CODE_CLOSE)

OBSERVATION_PREFIX = "Observation: "
# A plan has no observation; this user turn keeps roles alternating for chat templates that insist on it.
AFTER_PLAN = "Proceed with the first step."

SYSTEM_PROMPT = (
    "You solve tasks step by step with a Python interpreter. "
    "First write a plan as <first_thought>...</first_thought>. "
    "Then, in each turn, write <thought>...</thought> followed by <code>...</code>. "
    "The code runs in a persistent interpreter and what it prints comes back as an Observation. "
    "Tools: search(query) returns documents; final_answer_print(answer) gives the final answer and ends the task."
)
